"""An in-process lm-eval model on llama-cpp-python: exact log-likelihoods from the logits, scored in batches.

lm-eval's ``gguf``/``local-completions`` models score correctly against ``llama_cpp.server`` but pay
6-8 s per request on a large vocabulary (the server sorts the whole vocabulary in Python for every echoed
token). This model computes the same numbers in-process, on the one decoding loop
(:func:`loglik` on :class:`llamatune.decode.Decoder`: one unified KV cache with many sequence slots):

* each request ``context + continuation`` is tokenized like the server does (BOS + text, special tokens
  parsed); llama.cpp is asked for logits only at the positions that predict the continuation tokens, and
  a numpy log-softmax of those rows scores them;
* requests are scored in sorted token order, so the choices of one question form a group: the question is
  evaluated once (its longest prefix already in the cache reused), its KV cells are shared with one sequence per
  choice, and the choices of up to ``pack`` questions are evaluated in one batch (a CPU reads the weights once
  per batch, however many tokens it holds);
* ``generate_until`` decodes greedily (for the generative ``arc_challenge_llama`` task), several requests
  together, rendering chats with the project template (``apply_chat_template``).

It is registered with lm-eval as ``llamacpp``::

    import llamatune.evals.llamacpp_lm  # registers the model
    lm_eval.simple_evaluate(model="llamacpp", model_args="model_path=X.gguf", tasks=[...])
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from llamatune.chat import DEFAULT_DATE
from llamatune.decode import Request, common_prefix
from llamatune.runtime import open_decoder

common_prefix_len = common_prefix
PACK = 12  # questions whose choices are scored in one batch (bench/arc_loglik.py)
SLOTS = 64  # sequence slots: a context and its choices per question of a pack
GEN_BATCH = 4  # generate_until requests decoded together


def loglik(dec, requests: list[tuple[list[int], list[int]]], pack: int = PACK) -> list[tuple[float, bool]]:
    """``(sum of log p(continuation | context), continuation is the greedy decode)`` of each ``(context ids,
    continuation ids)`` on an idle :class:`llamatune.decode.Decoder`. Consecutive requests with the same context
    form a group: the context is evaluated once into a slot (reusing the longest prefix the cache holds), its
    cells are shared with one slot per continuation, and the continuations of up to ``pack`` groups are evaluated
    in one batch. Sort the requests by context so that the groups form."""
    # what one pack may hold: in a unified cache half of it (the previous pack's contexts stay until replaced)
    cells = dec.n_ctx // 2 if dec.unified else 1 << 30
    groups: list[tuple[list[int], list[int]]] = []  # (context, request indexes)
    for i, (ctx, cont) in enumerate(requests):
        if not ctx:
            raise ValueError(f"request {i}: empty context (nothing to condition on)")
        if len(ctx) + len(cont) > min(dec.n_ctx, cells):
            raise ValueError(f"request {i}: {len(ctx) + len(cont)} tokens do not fit the context of "
                             f"{min(dec.n_ctx, cells)}")
        if groups and groups[-1][0] == list(ctx) and len(groups[-1][1]) < dec.n_seq - 1 and \
                _cells(groups[-1], requests) + len(cont) <= cells:
            groups[-1][1].append(i)
        else:
            groups.append((list(ctx), [i]))
    out: list[tuple[float, bool] | None] = [None] * len(requests)
    g = 0
    while g < len(groups):  # a pack: contexts in slots 0..k-1, their continuations in the slots after them
        take, seqs, ctx_tokens, cont_tokens, held = 0, 0, 0, 0, 0
        while g + take < len(groups) and take < pack:
            ctx, idx = groups[g + take]
            cached = max((common_prefix(s.tokens, ctx) for s in dec.slots), default=0)
            need_ctx = len(ctx) - min(cached, len(ctx) - 1)
            need_cont = sum(len(requests[i][1]) - 1 for i in idx)
            if take and (seqs + 1 + len(idx) > dec.n_seq or ctx_tokens + need_ctx > dec.n_batch
                         or cont_tokens + need_cont > dec.n_batch or held + _cells((ctx, idx), requests) > cells):
                break
            held += _cells((ctx, idx), requests)
            take, seqs = take + 1, seqs + 1 + len(idx)
            ctx_tokens, cont_tokens = ctx_tokens + need_ctx, cont_tokens + need_cont
        _score_pack(dec, groups[g:g + take], requests, out)
        g += take
    return out


def log_softmax(rows: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64 (rows: (n, vocab) logits)."""
    x = np.asarray(rows, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _evaluate(dec, items: list[tuple[int, list[int], bool]]) -> list[list[np.ndarray]]:
    """Evaluate ``(slot, tokens, all logits?)`` items (each slot's tokens continue its cache) in batches of
    ``n_batch``; returns per item the logits rows of all its tokens, or of its last only (float32 copies)."""
    if any(s.seq is not None for s in dec.slots):
        raise RuntimeError("evaluate needs an idle decoder (sequences are running)")
    b, rows = dec.batch, [[] for _ in items]
    flat = [(k, t, all_ or j == len(tokens) - 1) for k, (_, tokens, all_) in enumerate(items)
            for j, t in enumerate(tokens)]
    for start in range(0, len(flat), dec.n_batch):
        chunk = flat[start:start + dec.n_batch]
        for n, (k, t, want) in enumerate(chunk):
            slot = dec.slots[items[k][0]]
            dec.put(n, t, len(slot.tokens), slot.seq_id, want)
            slot.tokens.append(t)
        b.n_tokens = len(chunk)
        rc = dec._lib.llama_decode(dec.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} (KV cache of {dec.n_ctx} cells)")
        dec.n_steps += 1
        dec.n_evaluated += len(chunk)
        for n, (k, _, want) in enumerate(chunk):
            if want:
                ptr = dec._lib.llama_get_logits_ith(dec.ctx, n)
                rows[k].append(np.ctypeslib.as_array(ptr, shape=(dec.n_vocab,)).copy())
    return rows


def _cells(group, requests) -> int:
    """KV cells a group occupies: its context once, each continuation but its last token."""
    ctx, idx = group
    return len(ctx) + sum(max(0, len(requests[i][1]) - 1) for i in idx)


def _score_pack(dec, groups, requests, out) -> None:
    n_ctx_slots = len(groups)
    for s in dec.slots[n_ctx_slots:]:  # the pack's cells must fit: only its context slots keep a cache
        if s.tokens:
            dec.release(s.seq_id)
    # 1. each context into its own slot (the longest cached prefix reused); the row of its last token kept
    first = [r[-1] for r in _evaluate(dec, [(k, ctx[dec.place(k, ctx):], False) for k, (ctx, _) in enumerate(groups)])]
    # 2. one slot per continuation, sharing its context's cells; all continuations in one batch
    items, whose, nxt = [], [], n_ctx_slots
    for k, (ctx, idx) in enumerate(groups):
        for i in idx:
            cont = requests[i][1]
            if len(cont) > 1:
                dec.share(k, nxt, len(ctx))
                items.append((nxt, list(cont[:-1]), True))
                nxt += 1
            whose.append((k, i, len(items) - 1 if len(cont) > 1 else None))
    rows = _evaluate(dec, items) if items else []
    for k, i, item in whose:
        cont = np.asarray(requests[i][1])
        if len(cont) == 0:
            out[i] = (0.0, True)
            continue
        x = np.vstack([first[k][None]] + ([np.stack(rows[item])] if item is not None else []))
        logp = log_softmax(x)
        out[i] = (float(logp[np.arange(len(cont)), cont].sum()), bool(np.all(x.argmax(axis=-1) == cont)))
    for s in range(n_ctx_slots, nxt):  # continuation slots are no useful cache
        dec.release(s)


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
                     date_string: str = DEFAULT_DATE, pack: int = PACK, **kwargs: Any):
            super().__init__()
            path = model_path or pretrained
            if not path:
                raise ValueError("llamacpp model needs model_path=FILE.gguf")
            self.model_path = str(path)
            # one unified KV cache: a question's cells shared by its choices; room for a full-length request and its
            # choices besides the rest of a pack
            self.decoder = open_decoder(self.model_path, n_seq=SLOTS, n_ctx=2 * int(n_ctx), unified=True,
                                        n_threads=n_threads and int(n_threads), n_batch=int(n_batch))
            self.llm = self.decoder.llm
            self.pack = int(pack)
            self.template = template
            self.date_string = date_string
            self._n_ctx = int(n_ctx)
            self._n_vocab = self.llm.n_vocab()
            self._bos = self.llm.token_bos()
            self._add_bos = bool(self.llm._model.add_bos_token()) and self._bos >= 0
            self._bos_text = (self.llm.detokenize([self._bos], special=True).decode("utf-8", "ignore")
                              if self._bos >= 0 else "")

        @property
        def n_evaluated(self) -> int:
            """Tokens actually run through the model (shows the KV sharing)."""
            return self.decoder.n_evaluated

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
        def _fit(self, context_enc: list[int], continuation_enc: list[int]) -> tuple[list[int], list[int]]:
            whole = list(context_enc) + list(continuation_enc)
            if len(whole) > self._n_ctx:  # keep the end, like lm-eval's HF model
                whole = whole[-self._n_ctx:]
            start = len(whole) - len(continuation_enc)
            if start < 1:
                raise ValueError("continuation fills the context window; nothing to condition on")
            return whole[:start], whole[start:]

        def score_many(self, pairs) -> list[tuple[float, bool]]:
            """``(sum of log p(continuation | context), continuation is the greedy decode)`` of each ``(context
            ids, continuation ids)`` (:func:`loglik`; sort them by context first)."""
            fitted = [self._fit(c, x) if x else (list(c) or [self.prefix_token_id], []) for c, x in pairs]
            return loglik(self.decoder, fitted, pack=self.pack)

        def score(self, context_enc: list[int], continuation_enc: list[int]) -> tuple[float, bool]:
            return self.score_many([(context_enc, continuation_enc)])[0]

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
            order = sorted(range(len(requests)), key=lambda i: requests[i][1] + requests[i][2])
            out: list[tuple[float, bool] | None] = [None] * len(requests)
            bar = tqdm(total=len(requests), desc="llama.cpp loglikelihood", disable=disable_tqdm)
            step = 16 * self.pack  # requests per call (each call's results reach lm-eval's cache at once)
            for s in range(0, len(order), step):
                chunk = order[s:s + step]
                for i, res in zip(chunk, self.score_many([(requests[i][1], requests[i][2]) for i in chunk])):
                    out[i] = res
                    if requests[i][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[i][0], res)
                bar.update(len(chunk))
            bar.close()
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
            reqs = []
            for n, req in enumerate(requests):
                context, gen_kwargs = req.args
                gen_kwargs = dict(gen_kwargs or {})
                until = gen_kwargs.pop("until", None) or []
                until = [until] if isinstance(until, str) else [s for s in until if s]
                max_toks = int(gen_kwargs.pop("max_gen_toks", 256))
                temperature = float(gen_kwargs.pop("temperature", 0.0) or 0.0)
                prompt = self.tok_encode(context)
                from llamatune.decode import sampler_factory

                reqs.append(Request(prompt, max_tokens=max(1, min(max_toks, self._n_ctx - len(prompt))),
                                    stop=tuple(until), special=False, tag=n,
                                    sampler=sampler_factory(temperature) if temperature else None))
            results: list[str] = [""] * len(reqs)
            bar = tqdm(total=len(reqs), desc="llama.cpp generate", disable=disable_tqdm)
            for ev in self.decoder.run(reqs, max_active=GEN_BATCH):
                if ev.done:
                    results[ev.seq.request.tag] = ev.seq.text
                    self.cache_hook.add_partial("generate_until", requests[ev.seq.request.tag].args, ev.seq.text)
                    bar.update(1)
            bar.close()
            return results

        def close(self) -> None:
            if getattr(self, "decoder", None) is not None:
                self.decoder.close()
                self.decoder = None
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
