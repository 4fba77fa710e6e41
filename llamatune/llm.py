"""The model interface the agent talks to: a prompt in, text out (streamed or whole), plus a token counter.

* :class:`LlamaCppModel` serves a GGUF on CPU with llama-cpp-python. One ``Llama`` object is kept per model,
  so llama.cpp reuses the KV cache of the longest common token prefix of the previous evaluation
  (``Llama.generate`` prefix matching): a second turn, or the second call of a tool turn, only evaluates the
  new tokens, never the system prompt and tool schemas again. Decoding runs on ``Llama.generate`` directly
  (greedy by default) with incremental UTF-8 detokenisation and stop strings, so streaming costs nothing
  over raw generation.
* :class:`ScriptedModel` returns scripted outputs (for tests and the browser test), and records its prompts.

Both render nothing themselves: the agent renders prompts with :func:`llamatune.chat.render`.
"""

from __future__ import annotations

import codecs
import os
import re
import time
from typing import Callable, Iterator, Protocol, runtime_checkable

from llamatune.chat import stop_strings


def physical_cores() -> int:
    """Physical CPU cores available to this process (hyper-threads do not speed up llama.cpp decoding)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    try:
        phys = core = None
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = value.strip()
                elif key == "core id":
                    core = value.strip()
                elif not line.strip():
                    if core is not None:
                        cores.add((phys or "0", core))
                    phys = core = None
            if core is not None:
                cores.add((phys or "0", core))
    except OSError:
        pass
    n = len(cores) or allowed
    return max(1, min(n, allowed))


@runtime_checkable
class ChatModel(Protocol):
    """What the agent needs from a model. ``template`` names the chat template (see ``llamatune.chat``)."""

    name: str
    template: str
    n_ctx: int

    def complete(self, prompt: str, *, max_tokens: int, stop: list[str], stream: bool) -> Iterator[str] | str:
        """Continue ``prompt`` (already rendered, BOS included); an iterator of text pieces when streaming."""

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens parsed, no BOS added)."""

    def count_tokens(self, text: str) -> int:
        """``len(tokenize(text))``."""


class LlamaCppModel:
    """A GGUF served by llama-cpp-python, with KV reuse of the shared prompt prefix between calls.

    ``stats`` describes the last call: prompt tokens, how many came from the KV cache, generated tokens,
    time to first token and decode time (the bench reads it).
    """

    def __init__(self, path: str, n_ctx: int = 4096, n_threads: int | None = None, chat_template: str = "llama-3.2",
                 *, name: str | None = None, temperature: float = 0.0, seed: int = 0, n_batch: int = 512,
                 verbose: bool = False):
        from llama_cpp import Llama

        self.path = str(path)
        self.name = name or os.path.basename(self.path)
        self.template = chat_template
        self.temperature = temperature
        self.n_threads = n_threads or physical_cores()
        from llamatune.device import n_gpu_layers

        self._llm = Llama(model_path=self.path, n_ctx=n_ctx, n_threads=self.n_threads, n_batch=n_batch,
                          seed=seed, verbose=verbose, n_gpu_layers=n_gpu_layers())
        self.n_ctx = self._llm.n_ctx()
        self.stats: dict = {}

    @property
    def llama(self):
        """The underlying ``llama_cpp.Llama`` (for benchmarks)."""
        return self._llm

    def tokenize(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def reset_cache(self) -> None:
        """Forget the KV cache (the next call evaluates its whole prompt)."""
        self._llm.reset()

    def complete(self, prompt: str, *, max_tokens: int = 512, stop: list[str] | None = None,
                 stream: bool = False) -> Iterator[str] | str:
        it = self._generate(prompt, max_tokens, stop_strings(self.template) if stop is None else stop)
        return it if stream else "".join(it)

    def _generate(self, prompt: str, max_tokens: int, stop: list[str]) -> Iterator[str]:
        import llama_cpp

        llm = self._llm
        t0 = time.perf_counter()
        tokens = self.tokenize(prompt)
        if len(tokens) >= self.n_ctx:
            raise ValueError(f"prompt of {len(tokens)} tokens does not fit the context of {self.n_ctx}")
        max_tokens = max(1, min(max_tokens, self.n_ctx - len(tokens)))
        cached = 0
        for a, b in zip(llm.input_ids[: llm.n_tokens].tolist(), tokens):
            if a != b:
                break
            cached += 1
        stats = self.stats = {"prompt_tokens": len(tokens), "cached_tokens": cached, "generated": 0,
                              "t_start": t0, "ttft": None, "decode_s": 0.0, "finish": "length"}
        vocab = llm._model.vocab
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        hold = max((len(s) for s in stop), default=1) - 1  # chars that might start a stop string
        text, emitted = "", 0
        t_first = None
        for token in llm.generate(tokens, temp=self.temperature, top_k=40, top_p=0.95, min_p=0.05,
                                  repeat_penalty=1.0):
            now = time.perf_counter()
            if t_first is None:
                t_first = now
                stats["ttft"] = now - t0
            stats["generated"] += 1
            stats["decode_s"] = now - t_first
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                stats["finish"] = "stop"
                break
            text += decoder.decode(llm.detokenize([token], special=True))
            cut = min((i for i in (text.find(s, max(0, emitted - hold)) for s in stop) if i >= 0), default=-1)
            if cut >= 0:
                if cut > emitted:
                    yield text[emitted:cut]
                stats["finish"] = "stop"
                return
            safe = len(text) - hold if hold else len(text)
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
            if stats["generated"] >= max_tokens:
                break
        text += decoder.decode(b"", final=True)
        if len(text) > emitted:
            yield text[emitted:]

    def close(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.close()


_WORD = re.compile(r"\s*\S+|\s+")


class ScriptedModel:
    """A fake model that answers with scripted outputs, in order. For tests and UI checks, never for results.

    ``outputs`` items are strings or callables ``prompt -> str``; with ``loop=True`` the last one repeats
    forever (a model stuck calling tools). Every prompt is recorded in ``prompts``; ``calls`` counts them.
    Tokens are approximated by words and punctuation, which is enough for budgets and truncation.
    """

    def __init__(self, outputs: list[str | Callable[[str], str]], *, name: str = "scripted", template: str = "llama-3.2",
                 n_ctx: int = 4096, loop: bool = False, delay: float = 0.0):
        self.outputs = list(outputs)
        self.name, self.template, self.n_ctx = name, template, n_ctx
        self.loop, self.delay = loop, delay
        self.prompts: list[str] = []

    @property
    def calls(self) -> int:
        return len(self.prompts)

    def tokenize(self, text: str) -> list[int]:
        return [hash(t) & 0xFFFF for t in re.findall(r"<\|[a-z_]+\|>|\w+|[^\w\s]", text)]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def complete(self, prompt: str, *, max_tokens: int = 512, stop: list[str] | None = None,
                 stream: bool = False) -> Iterator[str] | str:
        if not self.outputs:
            raise RuntimeError("ScriptedModel has no outputs left")
        self.prompts.append(prompt)
        out = self.outputs[0] if (self.loop and len(self.outputs) == 1) else self.outputs.pop(0)
        text = out(prompt) if callable(out) else out
        for s in stop or []:
            if s in text:
                text = text[: text.index(s)]
        if not stream:
            return text
        return self._stream(text)

    def _stream(self, text: str) -> Iterator[str]:
        for piece in _WORD.findall(text):
            if self.delay:
                time.sleep(self.delay)
            yield piece
