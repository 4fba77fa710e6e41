"""The one llama.cpp runtime: how a GGUF is opened, how many threads it gets, and how text is decoded from it.

* :func:`open_llama` is the only place that constructs ``llama_cpp.Llama``; the agent and the Space
  (:class:`LlamaCppModel`), eval generation (:class:`llamatune.generate.LlamaCppGenerator`), the lm-eval model
  (:mod:`llamatune.evals.llamacpp_lm`) and the export fidelity check all open models through it. ``n_seq`` > 1
  opens a context with that many sequence slots over one unified KV cache; :func:`open_decoder` puts the one
  decoding loop (:class:`llamatune.decode.Decoder`: batched, continuous, prefix-sharing, per-sequence samplers
  and stop rules) on it.
* :func:`threads` is the one thread rule: ``n_threads``, else ``$LLAMATUNE_THREADS``, else the physical cores
  (hyper-threads do not speed up decoding, and more threads than free cores make llama.cpp's spinning threads
  wait for each other). Results do not depend on it: each thread computes whole output rows.
* :class:`LlamaCppModel` serves a GGUF to the agent: one decoder slot whose KV cache keeps the previous call, so
  a second turn, or the second call of a tool turn, only evaluates the new tokens, never the system prompt and
  tool schemas again; incremental UTF-8 detokenisation and stop strings, so streaming costs nothing over raw
  generation.
* :func:`prompt_logits` evaluates a token sequence and returns the logits of every position (fidelity checks).
"""

from __future__ import annotations

import os
import time
from typing import Iterator

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


def threads(n_threads: int | None = None) -> int:
    """Threads for llama.cpp: ``n_threads``, else ``$LLAMATUNE_THREADS``, else :func:`physical_cores`."""
    return int(n_threads or 0) or int(os.environ.get("LLAMATUNE_THREADS") or 0) or physical_cores()


def open_llama(model_path: str, *, n_ctx: int = 2048, n_threads: int | None = None, n_batch: int = 512,
               logits_all: bool = False, seed: int = 0, n_seq: int = 1, kv_unified: bool = False, **kwargs):
    """The project's one way to open a GGUF: ``llama_cpp.Llama``, quiet, seeded, :func:`threads` threads (for
    single tokens and batches alike), every layer on the GPU when there is one (:func:`llamatune.device.n_gpu_layers`).
    ``kwargs`` go to ``Llama``.

    ``n_seq`` > 1 gives the context that many sequence slots: one KV stream of ``n_ctx / n_seq`` cells each, or
    with ``kv_unified`` one buffer of ``n_ctx`` cells they share (:class:`llamatune.decode.Decoder` decodes them
    together). ``Llama`` sets ``n_seq_max`` only in embedding mode, so its context is rebuilt here with the same
    parameters plus ``n_seq_max`` and ``kv_unified``."""
    from llama_cpp import Llama

    from llamatune.device import n_gpu_layers

    if not os.path.exists(model_path):
        raise FileNotFoundError(f"GGUF not found: {model_path}")
    n = threads(n_threads)
    llm = Llama(model_path=str(model_path), n_ctx=n_ctx, n_threads=n, n_threads_batch=n, n_batch=n_batch,
                logits_all=logits_all, seed=seed, verbose=False, n_gpu_layers=n_gpu_layers(), **kwargs)
    if n_seq > 1:
        import contextlib

        from llama_cpp import _internals

        if kwargs.get("lora_path"):
            raise ValueError("n_seq > 1 with lora_path: merge the adapter into the GGUF (llamatune export)")
        params = llm.context_params
        params.n_seq_max, params.kv_unified = n_seq, kv_unified
        llm._ctx.close()  # its KV cache is freed before the new one is allocated
        llm._ctx = llm._stack.enter_context(contextlib.closing(
            _internals.LlamaContext(model=llm._model, params=params, verbose=False)))
    return llm


def open_decoder(model_path: str, *, n_seq: int = 1, n_ctx: int = 2048, unified: bool = False,
                 n_threads: int | None = None, n_batch: int = 512, seed: int = 0, sampler=None):
    """A :class:`llamatune.decode.Decoder` over a GGUF opened by :func:`open_llama` with ``n_seq`` slots of
    ``n_ctx`` positions each: a KV stream per slot (``n_seq × n_ctx`` cells: attention reads only its own
    sequence), or with ``unified`` one shared buffer of ``n_ctx`` cells (prefixes shared cell by cell, but every
    token's attention spans all cells: for many short sequences, e.g. scoring)."""
    from llamatune.decode import Decoder

    cells = n_ctx if unified or n_seq == 1 else n_ctx * n_seq
    llm = open_llama(model_path, n_ctx=cells, n_threads=n_threads, n_batch=max(n_batch, n_seq), seed=seed,
                     n_seq=n_seq, kv_unified=unified)
    return Decoder(llm, sampler=sampler)


class LlamaCppModel:
    """A GGUF served by llama-cpp-python, with KV reuse of the shared prompt prefix between calls.

    Decoding runs on :class:`llamatune.decode.Decoder` with one slot, whose cache keeps the previous call's tokens:
    a second turn, or the second call of a tool turn, only evaluates the new tokens. ``stats`` describes the last
    call: prompt tokens, how many came from the KV cache, generated tokens, time to first token, decode time and
    how it finished (the bench reads it).
    """

    def __init__(self, path: str, n_ctx: int = 4096, n_threads: int | None = None, chat_template: str = "llama-3.2",
                 *, name: str | None = None, temperature: float = 0.0, seed: int = 0, n_batch: int = 512,
                 verbose: bool = False):
        from llamatune.decode import sampler_factory

        self.path = str(path)
        self.name = name or os.path.basename(self.path)
        self.template = chat_template
        self.temperature = temperature
        self.n_threads = threads(n_threads)
        self._decoder = open_decoder(self.path, n_ctx=n_ctx, n_threads=self.n_threads, n_batch=n_batch, seed=seed,
                                     sampler=sampler_factory(temperature, seed=seed))
        self._llm = self._decoder.llm
        self.n_ctx = self._llm.n_ctx()
        self.stats: dict = {}

    @property
    def llama(self):
        """The underlying ``llama_cpp.Llama`` (for benchmarks)."""
        return self._llm

    @property
    def decoder(self):
        """The :class:`llamatune.decode.Decoder` it decodes with."""
        return self._decoder

    def tokenize(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def reset_cache(self) -> None:
        """Forget the KV cache (the next call evaluates its whole prompt)."""
        self._decoder.clear()
        self._llm.reset()

    supports_grammar = True  # complete() takes a call grammar (the agent and the endpoint ask for one)

    def complete(self, prompt: str, *, max_tokens: int = 512, stop: list[str] | None = None,
                 stream: bool = False, sampler=None, grammar=None, lazy: bool = True) -> Iterator[str] | str:
        """The continuation of ``prompt`` (a stream of text pieces with ``stream``), cut at the template's stop
        strings (or ``stop``); ``sampler``: a factory for this call's sampler chain (see
        :class:`llamatune.decode.Request`), else the model's (greedy, or its temperature); ``grammar``: a call
        grammar (:class:`llamatune.grammar.CallGrammar`), ``lazy`` (free until the call opener) or active from the
        first token. ``stats["constrained"]``: the tokens the grammar changed."""
        it = self._generate(prompt, max_tokens, stop_strings(self.template) if stop is None else stop, sampler,
                            grammar, lazy)
        return it if stream else "".join(it)

    def _generate(self, prompt: str, max_tokens: int, stop: list[str], sampler=None, grammar=None,
                  lazy: bool = True) -> Iterator[str]:
        from llamatune.decode import Request

        t0 = time.perf_counter()
        tokens = self.tokenize(prompt)
        if len(tokens) >= self.n_ctx:
            raise ValueError(f"prompt of {len(tokens)} tokens does not fit the context of {self.n_ctx}")
        held = self._decoder.slots[0].tokens
        cached = next((i for i, (a, b) in enumerate(zip(held, tokens)) if a != b), min(len(held), len(tokens)))
        stats = self.stats = {"prompt_tokens": len(tokens), "cached_tokens": cached, "generated": 0,
                              "t_start": t0, "ttft": None, "decode_s": 0.0, "finish": "length", "constrained": 0}
        req = Request(tokens, max_tokens=max(1, max_tokens), stop=tuple(stop), sampler=sampler, grammar=grammar,
                      lazy=lazy)
        for ev in self._decoder.run([req]):
            seq = ev.seq
            stats.update(generated=seq.generated, decode_s=seq.decode_s, finish=seq.finish or "length",
                         constrained=seq.constrained,
                         ttft=None if seq.ttft is None else seq.ttft + seq.t_submit - t0)
            if ev.text:
                yield ev.text

    def close(self) -> None:
        dec, self._decoder = getattr(self, "_decoder", None), None
        llm, self._llm = getattr(self, "_llm", None), None
        if dec is not None:
            dec.close()
        if llm is not None:
            llm.close()


# llama.cpp's names of the instruction sets it was compiled for (llama_print_system_info) → Linux cpuinfo flags
_CPU_FLAGS = {"SSE3": "pni", "SSSE3": "ssse3", "AVX": "avx", "AVX_VNNI": "avx_vnni", "AVX2": "avx2", "F16C": "f16c",
              "FMA": "fma", "BMI2": "bmi2", "AVX512": "avx512f", "AVX512_VBMI": "avx512vbmi",
              "AVX512_VNNI": "avx512_vnni", "AVX512_BF16": "avx512_bf16", "AMX_INT8": "amx_int8"}


def missing_cpu_features(system_info: str | None = None, cpu_flags: set[str] | None = None) -> list[str]:
    """Instruction sets the loaded llama.cpp was built to use that this CPU lacks (``[]``: safe). A wheel built with
    ``GGML_NATIVE`` on another machine dies with SIGILL on the first such instruction; this names them first."""
    import re

    if system_info is None:
        import llama_cpp

        system_info = llama_cpp.llama_print_system_info().decode()
    if cpu_flags is None:
        with open("/proc/cpuinfo") as f:
            cpu_flags = set(next((line.split(":", 1)[1] for line in f if line.startswith("flags")), "").split())
    built = [name for name, on in re.findall(r"\b([A-Z0-9_]+) = (\d)", system_info) if on == "1"]
    return [n for n in built if n in _CPU_FLAGS and _CPU_FLAGS[n] not in cpu_flags]


def prompt_logits(llm, ids: list[int]):
    """Logits (float32, one row per position) of ``ids`` evaluated from an empty KV cache; the model must be
    opened with ``logits_all=True``."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return np.asarray(llm.scores[: len(ids)], dtype=np.float32)
