"""An in-process lm-eval model on llama-cpp-python: exact log-likelihoods from the logits, with KV reuse.

lm-eval's ``gguf``/``local-completions`` models score correctly against ``llama_cpp.server`` but pay
6-8 s per request on a large vocabulary (the server sorts the whole vocabulary in Python for every echoed
token). This model computes the same numbers in-process:

* each request ``context + continuation`` is tokenized like the server does (BOS + text, special tokens
  parsed); llama.cpp is asked for logits only at the positions that predict the continuation tokens, and
  a numpy log-softmax of those rows scores them;
* requests are processed in sorted token order and the KV cache is truncated to the longest common prefix
  with what was evaluated before, so the four choices of one ARC question evaluate the shared question once,
  and the logits row that predicts every choice's first token is computed once per question;
* ``generate_until`` decodes greedily (for the generative ``arc_challenge_llama`` task), rendering chats with
  the project template (``apply_chat_template``).

It is registered with lm-eval as ``llamacpp``::

    import llamatune.evals.llamacpp_lm  # registers the model
    lm_eval.simple_evaluate(model="llamacpp", model_args="model_path=X.gguf", tasks=[...])
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from llamatune.chat import DEFAULT_DATE
from llamatune.runtime import open_llama


def log_softmax(rows: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (rows: (n, vocab) logits)."""
    x = np.asarray(rows, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def common_prefix_len(a, b) -> int:
    """Length of the common prefix of two token sequences."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    a = np.asarray(a[:n])
    b = np.asarray(b[:n])
    diff = np.nonzero(a != b)[0]
    return int(diff[0]) if len(diff) else n


def _register(cls):
    from lm_eval.api.registry import register_model

    return register_model("llamacpp")(cls)


def _make_class():
    from lm_eval.api.model import TemplateLM
    from tqdm import tqdm

    class LlamaCppLM(TemplateLM):
        """lm-eval ``TemplateLM`` over an in-process ``llama_cpp.Llama`` (see module docstring)."""

        def __init__(self, model_path: str | None = None, pretrained: str | None = None, n_ctx: int = 2048,
                     n_threads: int | None = None, n_batch: int = 512, template: str = "llama-3.2",
                     date_string: str = DEFAULT_DATE, **kwargs: Any):
            super().__init__()
            path = model_path or pretrained
            if not path:
                raise ValueError("llamacpp model needs model_path=FILE.gguf")
            self.model_path = str(path)
            self.llm = open_llama(self.model_path, n_ctx=int(n_ctx), n_threads=n_threads and int(n_threads),
                                  n_batch=int(n_batch), logits_all=False)
            self.template = template
            self.date_string = date_string
            self._n_ctx = self.llm.n_ctx()
            self._n_vocab = self.llm.n_vocab()
            self._bos = self.llm.token_bos()
            self._add_bos = bool(self.llm._model.add_bos_token()) and self._bos >= 0
            self._bos_text = (self.llm.detokenize([self._bos], special=True).decode("utf-8", "ignore")
                              if self._bos >= 0 else "")
            self.n_evaluated = 0  # tokens actually run through the model (shows the KV reuse)
            self._last_ctx = None  # (context tokens, logits row of its last position)

        # --- tokenization -------------------------------------------------------------------------------
        @property
        def eot_token_id(self) -> int:
            return self.llm.token_eos()

        @property
        def prefix_token_id(self) -> int:
            return self._bos if self._bos >= 0 else self.eot_token_id

        @property
        def max_length(self) -> int:
            return self._n_ctx

        @property
        def tokenizer_name(self) -> str:
            return f"llamacpp:{os.path.basename(self.model_path)}:{self.template}"

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
            """Like the server: BOS (unless the text already starts with it) + tokens, special tokens parsed."""
            ids = self.llm.tokenize(string.encode("utf-8"), add_bos=False, special=True)
            add = self._add_bos if add_special_tokens is None else add_special_tokens
            if add and self._bos >= 0 and not (self._bos_text and string.startswith(self._bos_text)):
                ids = [self._bos] + ids
            return ids

        def tok_decode(self, tokens: list[int]) -> str:
            return self.llm.detokenize(list(tokens)).decode("utf-8", "ignore")

        def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
            """Render with the project template; a final assistant message is continued (lm-eval's gen_prefix)."""
            from llamatune.chat import render

            if add_generation_prompt or not chat_history or chat_history[-1]["role"] != "assistant":
                return render(chat_history, template=self.template, add_generation_prompt=add_generation_prompt,
                              date_string=self.date_string)
            sentinel = "\x00LLAMATUNE_CONTINUE\x00"
            prefix = chat_history[-1]["content"]
            head = chat_history[:-1] + [{"role": "assistant", "content": sentinel}]
            text = render(head, template=self.template, date_string=self.date_string)
            return text[: text.index(sentinel)] + prefix.strip()

        # --- scoring --------------------------------------------------------------------------------------
        def _eval_rows(self, tokens: list[int], need_from: int) -> np.ndarray:
            """Evaluate ``tokens`` (KV cache reused up to the longest common prefix, but never past
            ``need_from``) and return the logits rows of positions ``need_from .. len(tokens)-1``.

            Only those positions get logits from llama.cpp (``batch.logits`` flags), so the output projection
            over the vocabulary is not computed for the rest of the context.
            """
            llm = self.llm
            p = min(common_prefix_len(llm.input_ids[: llm.n_tokens], tokens), need_from)
            llm.n_tokens = p
            llm._ctx.kv_cache_seq_rm(-1, p, -1)
            rows = []
            for i in range(p, len(tokens), llm.n_batch):
                chunk = tokens[i: i + llm.n_batch]
                llm._batch.set_batch(chunk, n_past=i, logits_all=False)
                flags = [i + j >= need_from for j in range(len(chunk))]
                for j, f in enumerate(flags):
                    llm._batch.batch.logits[j] = f
                llm._ctx.decode(llm._batch)
                llm.input_ids[i: i + len(chunk)] = chunk
                llm.n_tokens = i + len(chunk)
                for j, f in enumerate(flags):
                    if f:
                        rows.append(np.ctypeslib.as_array(llm._ctx.get_logits_ith(j), shape=(self._n_vocab,)).copy())
            self.n_evaluated += len(tokens) - p
            return np.stack(rows)

        def score(self, context_enc: list[int], continuation_enc: list[int]) -> tuple[float, bool]:
            """``(sum of log p(continuation | context), continuation is the greedy decode)``."""
            if not continuation_enc:
                return 0.0, True
            whole = list(context_enc) + list(continuation_enc)
            if len(whole) > self._n_ctx:  # keep the end, like lm-eval's HF model
                whole = whole[-self._n_ctx:]
            n_cont = len(continuation_enc)
            start = len(whole) - n_cont  # first continuation position
            if start < 1:
                raise ValueError("continuation fills the context window; nothing to condition on")
            # row q predicts token q+1. The row of the last context token is the same for every choice of a
            # question: keep it, so that a one-token choice after the first costs no model evaluation at all.
            ctx_key = tuple(whole[:start])
            if self._last_ctx is not None and self._last_ctx[0] == ctx_key:
                first = self._last_ctx[1][None]
                rows = first if n_cont == 1 else np.vstack([first, self._eval_rows(whole[:-1], need_from=start)])
            else:
                rows = self._eval_rows(whole[:-1], need_from=start - 1)
                self._last_ctx = (ctx_key, rows[0])
            logp = log_softmax(rows)
            cont = np.asarray(whole[start:])
            picked = logp[np.arange(n_cont), cont]
            greedy = bool(np.all(rows.argmax(axis=-1) == cont))
            return float(picked.sum()), greedy

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
            order = sorted(range(len(requests)), key=lambda i: requests[i][1] + requests[i][2])
            out: list[tuple[float, bool] | None] = [None] * len(requests)
            for i in tqdm(order, desc="llama.cpp loglikelihood", disable=disable_tqdm):
                key, ctx_enc, cont_enc = requests[i]
                out[i] = self.score(ctx_enc, cont_enc)
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, out[i])
            return out

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            from lm_eval import utils

            results = []
            for req in tqdm(requests, desc="llama.cpp rolling", disable=disable_tqdm):
                (text,) = req.args
                windows = map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text, add_special_tokens=False), prefix_token=self.prefix_token_id,
                    max_seq_len=self._n_ctx, context_len=1))
                total = sum(self.score(ctx, cont)[0] for ctx, cont in windows)
                results.append(total)
                self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            return results

        # --- generation -----------------------------------------------------------------------------------
        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            results = []
            for req in tqdm(requests, desc="llama.cpp generate", disable=disable_tqdm):
                context, gen_kwargs = req.args
                gen_kwargs = dict(gen_kwargs or {})
                until = [s for s in (gen_kwargs.pop("until", None) or []) if s]
                if isinstance(until, str):
                    until = [until]
                max_toks = int(gen_kwargs.pop("max_gen_toks", 256))
                temperature = float(gen_kwargs.pop("temperature", 0.0) or 0.0)
                prompt = self.tok_encode(context)
                max_toks = max(1, min(max_toks, self._n_ctx - len(prompt)))
                out = self.llm.create_completion(prompt=prompt, max_tokens=max_toks, temperature=temperature,
                                                 top_k=1 if temperature == 0 else 40, stop=until or None)
                text = out["choices"][0]["text"]
                results.append(text)
                self.cache_hook.add_partial("generate_until", req.args, text)
            return results

        def close(self) -> None:
            if getattr(self, "llm", None) is not None:
                self.llm.close()
                self.llm = None

    return _register(LlamaCppLM)


_CLASS = None


def llamacpp_lm_class():
    """The ``LlamaCppLM`` class (built on first use, so that importing this module stays light)."""
    global _CLASS
    if _CLASS is None:
        _CLASS = _make_class()
    return _CLASS


def LlamaCppLM(*args, **kwargs):  # noqa: N802 - a factory that reads like the class
    """Construct the in-process llama.cpp lm-eval model (see ``llamacpp_lm_class``)."""
    return llamacpp_lm_class()(*args, **kwargs)
