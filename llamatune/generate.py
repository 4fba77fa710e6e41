"""Answer prompts with a model given by a spec string, through the project chat template, with a resumable cache.

A model spec (:mod:`llamatune.model_spec`) is

* ``path/to/model.gguf`` — llama-cpp-python, in process (the artifact that is actually deployed), ``batch`` prompts
  decoded together on the one decoding loop (:mod:`llamatune.decode`: continuous batching, shared prompt prefixes);
* ``DIR_OR_HF_ID`` — transformers; ``DIR+peft=ADAPTER_DIR`` (or ``peft=`` to ``load_generator``) adds a LoRA adapter.
  ``backend="vllm"`` (``pip install 'llamatune[vllm]'``, CUDA) serves it with vLLM instead; ``"auto"`` (the default)
  picks vLLM when it is installed and a GPU is present, else transformers (batched left-padded on a GPU).

Prompts are rendered with :func:`llamatune.chat.render` (the one template) at a fixed date, and decoded greedily
by default. ``Generator.generate`` answers a conversation (special tokens stripped); ``Generator.complete``
continues an already rendered prompt and keeps special tokens such as ``<|python_tag|>`` (the tool-call
evaluation scores that raw text); ``generate_each``/``complete_each`` yield each answer as soon as it is ready.
``generate_cached`` appends every answer to a JSONL cache keyed by (model fingerprint, prompt id,
prompt hash, settings) as it comes, so an interrupted run resumes where it stopped::

    from llamatune.generate import load_generator, generate_cached
    gen = load_generator("runs/ft/gguf/model-q4_k_m.gguf")
    answers = generate_cached(gen, [{"id": "p1", "messages": [...]}], "results/x/answers.jsonl")
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from llamatune.chat import ALL_STOPS, DEFAULT_DATE
from llamatune.jsonl import JsonlCache, read_json
from llamatune.model_spec import ModelSpec, fingerprint, parse_spec
from llamatune.sampling import CONSTRAINED_KEY


class Generator:
    """``generate(messages, max_tokens, temperature=0, tools=None) -> str`` and ``close()``."""

    spec: ModelSpec
    batch_size: int = 1  # conversations per generate_batch() / prompts per complete_batch() call the evals send
    backend: str = ""  # "llamacpp" | "hf" | "vllm": recorded in the caches' rows (not in their keys)

    def generate(self, messages: list[dict], max_tokens: int = 512, temperature: float = 0.0,
                 tools: list[dict] | None = None) -> str:
        raise NotImplementedError

    def generate_batch(self, conversations, max_tokens: int = 512, temperature: float = 0.0) -> list[str]:
        """Answers to ``[(messages, tools), ...]``; one :meth:`generate` each unless a backend batches them."""
        return [self.generate(m, max_tokens=max_tokens, temperature=temperature, tools=t) for m, t in conversations]

    def complete(self, prompt: str, max_tokens: int = 128) -> str:
        """Greedy raw continuation of a rendered ``prompt``, special tokens kept, cut at the end of the turn."""
        raise NotImplementedError

    def complete_batch(self, prompts: list[str], max_tokens: int = 128) -> list[str]:
        """:meth:`complete` of each rendered prompt, in order; one call each unless a backend batches them."""
        return [self.complete(p, max_tokens=max_tokens) for p in prompts]

    def generate_each(self, conversations, max_tokens: int = 512, temperature: float = 0.0):
        """``(index, answer)`` of each of ``[(messages, tools), ...]`` as soon as it is ready (a cache writes it
        then): :meth:`generate_batch` ``batch_size`` at a time, unless the backend decodes continuously."""
        step = max(1, self.batch_size)
        for i in range(0, len(conversations), step):
            outs = self.generate_batch(conversations[i:i + step], max_tokens=max_tokens, temperature=temperature)
            yield from enumerate(outs, start=i)

    def complete_each(self, prompts: list[str], max_tokens: int = 128):
        """``(index, continuation)`` of each rendered prompt as soon as it is ready (see :meth:`generate_each`)."""
        step = max(1, self.batch_size)
        for i in range(0, len(prompts), step):
            yield from enumerate(self.complete_batch(prompts[i:i + step], max_tokens=max_tokens), start=i)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# Sequences a llama.cpp generator decodes together (``--batch``): on the 2-core Xeon (AMX) the tool-call eval's items/s
# grow with the batch up to 8-16 and flatten beyond (bench/decode_batch.py); 8 keeps the KV cache small.
DECODE_BATCH = 8


class LlamaCppGenerator(Generator):
    """A GGUF on the one decoding loop (:class:`llamatune.decode.Decoder`): ``batch`` sequences decoded together,
    continuously, a new one starting from a copy of the prompt prefix another holds. ``n_ctx`` bounds one prompt and
    its answer; each sequence has a KV stream of ``n_ctx`` cells (memory: ``batch × n_ctx`` tokens of KV)."""

    backend = "llamacpp"

    def __init__(self, spec: ModelSpec, n_ctx: int = 4096, n_threads: int | None = None, template: str = "llama-3.2",
                 batch: int | None = None):
        from llamatune.runtime import open_decoder

        self.spec, self.template, self.n_ctx = spec, template, n_ctx
        self.batch_size = max(1, int(batch or DECODE_BATCH))
        self.decoder = open_decoder(spec.path, n_seq=self.batch_size, n_ctx=n_ctx, n_threads=n_threads)
        self.llm = self.decoder.llm
        self.constrained: dict[int, int] = {}  # the last run's tokens changed by a grammar, per request index
        self.stop_ids = {self.llm.token_eos()}
        for text in ALL_STOPS:
            ids = self.llm.tokenize(text.encode(), add_bos=False, special=True)
            if len(ids) == 1:
                self.stop_ids.add(ids[0])

    def _ids(self, text: str, max_tokens: int, strict: bool) -> tuple[list[int], int]:
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        room = self.n_ctx - len(ids)
        if room < 1 or (strict and max_tokens > room):
            raise ValueError(f"prompt of {len(ids)} tokens + {max_tokens} new does not fit n_ctx={self.n_ctx}"
                             " (pass --n-ctx)")
        return ids, min(max_tokens, room)

    def requests(self, texts, max_tokens: int, *, special: bool, strict: bool = False, temperature: float = 0.0,
                 stop_when=None, stop=(), sampler=None, grammar=None):
        """:class:`llamatune.decode.Request` s continuing the rendered ``texts`` (a generator: tokenised as the
        decoder pulls them), ending at the template's end-of-turn tokens. ``sampler``: a sampler factory for all, or
        a list of them (one per text); default greedy (or ``temperature``). ``grammar``: a lazy call grammar for
        all, or a list (one per text: :func:`llamatune.grammar.grammar_for` each item's tools; ``None`` = free)."""
        from llamatune.decode import Request, sampler_factory

        default = sampler_factory(temperature) if temperature else None
        for i, text in enumerate(texts):
            ids, n = self._ids(text, max_tokens, strict)
            own = sampler[i] if isinstance(sampler, (list, tuple)) else sampler
            g = grammar[i] if isinstance(grammar, (list, tuple)) else grammar
            yield Request(ids, max_tokens=n, stop_ids=frozenset(self.stop_ids), stop=tuple(stop), stop_when=stop_when,
                          sampler=own or default, grammar=g, special=special, tag=i)

    def _run(self, reqs, strip: bool):
        """``(tag, text)`` of each finished request; the tokens its grammar changed go to ``constrained[tag]``."""
        self.constrained = {}
        for ev in self.decoder.run(reqs):
            if ev.done:
                self.constrained[ev.seq.request.tag] = ev.seq.constrained
                yield ev.seq.request.tag, ev.seq.text.strip() if strip else ev.seq.text

    def generate_each(self, conversations, max_tokens=512, temperature=0.0, stop_when=None, sampler=None,
                      constrain: bool = False):
        """Answers (special tokens dropped, stripped) as they finish; ``stop_when(text so far)`` ends one early;
        ``sampler`` as in :meth:`requests`; ``constrain``: each call decoded under the lazy grammar of its
        conversation's tools (``self.constrained[index]``: the tokens it changed)."""
        from llamatune.chat import render
        from llamatune.grammar import grammar_for

        conversations = list(conversations)
        texts = (render(m, t, template=self.template, add_generation_prompt=True, date_string=DEFAULT_DATE)
                 for m, t in conversations)
        grammars = [grammar_for(t, self.template) for _, t in conversations] if constrain else None
        reqs = self.requests(texts, max_tokens, special=False, temperature=temperature, stop_when=stop_when,
                             stop=ALL_STOPS, sampler=sampler, grammar=grammars)
        yield from self._run(reqs, strip=True)

    def generate_batch(self, conversations, max_tokens=512, temperature=0.0) -> list[str]:
        out = dict(self.generate_each(list(conversations), max_tokens=max_tokens, temperature=temperature))
        return [out[i] for i in range(len(out))]

    def generate(self, messages, max_tokens=512, temperature=0.0, tools=None):
        return self.generate_batch([(messages, tools)], max_tokens=max_tokens, temperature=temperature)[0]

    def complete_each(self, prompts, max_tokens=128, sampler=None, grammar=None):
        """Greedy raw continuations (special tokens kept, cut at the end of the turn) as they finish; ``grammar`` as
        in :meth:`requests` (``self.constrained[index]``: the tokens it changed)."""
        yield from self._run(self.requests(prompts, max_tokens, special=True, strict=True, sampler=sampler,
                                           grammar=grammar), strip=False)

    def complete_batch(self, prompts, max_tokens=128) -> list[str]:
        out = dict(self.complete_each(list(prompts), max_tokens=max_tokens))
        return [out[i] for i in range(len(out))]

    def complete(self, prompt, max_tokens=128):
        return self.complete_batch([prompt], max_tokens)[0]

    def close(self):
        if getattr(self, "decoder", None) is not None:
            self.decoder.close()
            self.decoder = None
        if getattr(self, "llm", None) is not None:
            self.llm.close()
            self.llm = None


class HFGenerator(Generator):
    """transformers generation, loaded onto the device of :func:`llamatune.device.this_placement` (half precision
    on a GPU, float32 on a CPU); ``batch_size`` prompts per ``generate()`` call, left-padded (8-32 on a GPU, 1 on
    a CPU)."""

    backend = "hf"

    def __init__(self, spec: ModelSpec, dtype: str | None = None, template: str = "llama-3.2", placement=None,
                 batch_size: int | None = None):
        import dataclasses

        from llamatune.device import this_placement
        from llamatune.models import load_causal_lm

        self.spec, self.template = spec, template
        place = placement or this_placement()
        self.placement = dataclasses.replace(place, dtype=dtype) if dtype else place
        self.batch_size = batch_size or self.placement.gen_batch_size
        self.model, self.tok = load_causal_lm(spec.path, placement=self.placement)
        if spec.peft:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, spec.peft)
        self.model.eval()
        self.eos = [i for i in (self.tok.convert_tokens_to_ids(t) for t in ALL_STOPS) if isinstance(i, int) and i >= 0]
        self.tok.padding_side = "left"  # generation continues at the right edge of every row
        if self.tok.pad_token_id is None:  # Llama 3.2 has no pad token: pad with an end-of-turn id (masked anyway)
            self.tok.pad_token_id = self.eos[0]
        self.pad_id = self.tok.pad_token_id

    def generate(self, messages, max_tokens=512, temperature=0.0, tools=None):
        return self.generate_batch([(messages, tools)], max_tokens=max_tokens, temperature=temperature)[0]

    def generate_batch(self, conversations, max_tokens=512, temperature=0.0) -> list[str]:
        """Answers to ``[(messages, tools), ...]`` in one ``generate()`` call (greedy unless ``temperature``)."""
        import torch

        from llamatune.chat import render

        texts = [render(m, t, template=self.template, add_generation_prompt=True, date_string=DEFAULT_DATE)
                 for m, t in conversations]
        enc = self.tok(texts, return_tensors="pt", add_special_tokens=False, padding=True).to(self.model.device)
        kwargs = dict(max_new_tokens=max_tokens, eos_token_id=self.eos, pad_token_id=self.pad_id)
        kwargs.update(do_sample=True, temperature=temperature) if temperature > 0 else kwargs.update(do_sample=False)
        with torch.no_grad():
            out = self.model.generate(**enc, **kwargs)
        start = enc["input_ids"].shape[1]
        return [self.tok.decode(row[start:], skip_special_tokens=True).strip() for row in out]

    def complete(self, prompt, max_tokens=128):
        return self.complete_batch([prompt], max_tokens)[0]

    def complete_batch(self, prompts, max_tokens=128) -> list[str]:
        """Greedy raw continuations of rendered prompts in one left-padded ``generate()`` call, special tokens
        kept, each cut at its first stop token (rows that finish early are padded after it)."""
        import torch

        enc = self.tok(list(prompts), add_special_tokens=False, return_tensors="pt", padding=True).to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=max_tokens, do_sample=False, eos_token_id=self.eos,
                                      pad_token_id=self.pad_id)
        start = enc["input_ids"].shape[1]
        return [cut_at_stop(self.tok.decode(row[start:], skip_special_tokens=False)) for row in out]


def cut_at_stop(text: str) -> str:
    """``text`` up to its first end-of-turn marker (:data:`llamatune.chat.ALL_STOPS`)."""
    return text[:min([text.find(s) for s in ALL_STOPS if s in text], default=len(text))]


VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 512)  # the max_lora_rank values vLLM accepts


def vllm_lora_rank(adapter_dir) -> int:
    """vLLM's ``max_lora_rank`` for a PEFT adapter: the smallest slot that holds its rank ``r``."""
    r = int(read_json(Path(adapter_dir) / "adapter_config.json").get("r", 16))
    return next((x for x in VLLM_LORA_RANKS if x >= r), r)


class VLLMGenerator(Generator):
    """vLLM (the ``vllm`` extra, CUDA only): every prompt of a call goes to ``LLM.generate`` at once and vLLM
    schedules them (continuous batching). Prompts are rendered with the project template exactly as for the other
    backends and passed as token ids (no second BOS); greedy unless ``temperature``; a ``+peft=`` adapter is
    served as a LoRA request on the base model. Outputs come back in the order of the prompts."""

    backend = "vllm"

    def __init__(self, spec: ModelSpec, template: str = "llama-3.2", dtype: str | None = None,
                 batch_size: int | None = None, max_model_len: int = 4096, gpu_memory_utilization: float = 0.85,
                 tensor_parallel_size: int = 1, seed: int = 0):
        from vllm import LLM

        from llamatune.device import this_placement

        self.spec, self.template, self.seed = spec, template, seed
        self.batch_size = batch_size or 256  # prompts handed to vLLM per call (it batches them itself)
        kw = dict(model=spec.path, dtype=dtype or this_placement().dtype, seed=seed, max_model_len=max_model_len,
                  gpu_memory_utilization=gpu_memory_utilization, tensor_parallel_size=tensor_parallel_size)
        self.lora = None
        if spec.peft:
            kw.update(enable_lora=True, max_lora_rank=vllm_lora_rank(spec.peft))
        self.llm = LLM(**kw)
        if spec.peft:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("adapter", 1, str(spec.peft))
        self.tok = self.llm.get_tokenizer()
        ids = (self.tok.convert_tokens_to_ids(t) for t in ALL_STOPS)
        self.stop_ids = [i for i in ids if isinstance(i, int) and i >= 0]

    def _run(self, texts: list[str], max_tokens: int, temperature: float, keep_special: bool) -> list[str]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=self.seed,
                                stop_token_ids=self.stop_ids, skip_special_tokens=not keep_special)
        prompts = [{"prompt_token_ids": self.tok.encode(t, add_special_tokens=False)} for t in texts]
        outs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora)
        return [o.outputs[0].text for o in outs]

    def generate(self, messages, max_tokens=512, temperature=0.0, tools=None):
        return self.generate_batch([(messages, tools)], max_tokens=max_tokens, temperature=temperature)[0]

    def generate_batch(self, conversations, max_tokens=512, temperature=0.0) -> list[str]:
        from llamatune.chat import render

        texts = [render(m, t, template=self.template, add_generation_prompt=True, date_string=DEFAULT_DATE)
                 for m, t in conversations]
        return [o.strip() for o in self._run(texts, max_tokens, temperature, keep_special=False)]

    def complete(self, prompt, max_tokens=128):
        return self.complete_batch([prompt], max_tokens)[0]

    def complete_batch(self, prompts, max_tokens=128) -> list[str]:
        return [cut_at_stop(o) for o in self._run(list(prompts), max_tokens, 0.0, keep_special=True)]

    def close(self):
        self.llm = None


BACKENDS = ("auto", "hf", "vllm")


def has_vllm() -> bool:
    from llamatune.device import importable

    return importable("vllm")


def choose_backend(spec: ModelSpec, backend: str = "auto", on_gpu: bool | None = None) -> str:
    """``"llamacpp"`` for a GGUF; for an HF model ``"vllm"`` when asked, or on ``auto`` when vLLM is installed and a
    GPU is present (``on_gpu``, default: this machine's placement); else ``"hf"``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if spec.kind == "gguf":
        if backend == "vllm":
            raise ValueError(f"{spec.path}: a GGUF runs on llama.cpp here; give vLLM the HF model (+peft=ADAPTER)")
        return "llamacpp"
    if backend == "vllm" and not has_vllm():
        raise RuntimeError("backend vllm: vLLM is not installed (pip install 'llamatune[vllm]', CUDA only)")
    if backend == "auto":
        if on_gpu is None:
            from llamatune.device import this_placement

            on_gpu = this_placement().on_gpu
        return "vllm" if has_vllm() and on_gpu else "hf"
    return backend


def load_generator(spec: str | ModelSpec, peft: str | None = None, backend: str = "auto", **kwargs) -> Generator:
    """A generator for a model spec (see module docstring) on ``backend`` (:func:`choose_backend`)."""
    spec = parse_spec(spec, peft) if isinstance(spec, str) else spec
    cls = {"llamacpp": LlamaCppGenerator, "hf": HFGenerator, "vllm": VLLMGenerator}[choose_backend(spec, backend)]
    return cls(spec, **kwargs)


# --- resumable cache ------------------------------------------------------------------------------------------
def prompt_hash(messages: list[dict], tools: list[dict] | None = None) -> str:
    blob = json.dumps(messages if tools is None else [messages, tools], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def generate_cached(gen_or_spec, prompts: list[dict], cache_path: str | Path, max_tokens: int = 512,
                    temperature: float = 0.0, progress: bool = True, backend: str = "auto", constrain: bool = False,
                    records: dict | None = None) -> dict[str, str]:
    """``{prompt id: answer}`` for ``prompts`` (``{"id", "messages"[, "tools"]}``), reusing and appending to
    ``cache_path``.

    ``gen_or_spec`` is a ``Generator``, a ``ModelSpec`` or a spec string; a spec is loaded (on ``backend``, see
    :func:`load_generator`) only if something is missing. Missing answers go through ``generate_each`` (llama.cpp:
    decoded continuously, ``batch_size`` at a time; others: ``generate_batch`` per ``batch_size``) and each is
    appended as soon as it is ready; the backend is recorded in each row but is not part of the key. ``constrain``
    (llama.cpp only): calls decoded under each prompt's lazy call grammar, a setting of the key, each row recording
    ``constrained_tokens``. ``records``, if given, receives ``{prompt id: cache row}``.
    """
    from tqdm import tqdm

    if isinstance(gen_or_spec, Generator):
        spec = gen_or_spec.spec
    else:
        spec = gen_or_spec if isinstance(gen_or_spec, ModelSpec) else parse_spec(gen_or_spec)
    fp = fingerprint(spec)
    settings = {"max_tokens": max_tokens, "temperature": temperature, **({"constrained": True} if constrain else {})}

    # the template and the date change the rendered prompt, so they are part of the key
    template = getattr(gen_or_spec, "template", "llama-3.2")

    def key(p):
        return (f"{fp}|{template}|{DEFAULT_DATE}|{p['id']}|{prompt_hash(p['messages'], p.get('tools'))}|{max_tokens}"
                f"|{temperature}" + (f"|{CONSTRAINED_KEY}" if constrain else ""))

    cache = JsonlCache(cache_path)
    todo = [p for p in prompts if key(p) not in cache]
    if todo:
        gen = gen_or_spec if isinstance(gen_or_spec, Generator) else load_generator(spec, backend=backend)
        try:
            bar = tqdm(total=len(todo), desc=f"answers {spec.label}", disable=not progress)
            convs = [(p["messages"], p.get("tools")) for p in todo]
            kw = {"constrain": True} if constrain else {}
            for i, out in gen.generate_each(convs, max_tokens=max_tokens, temperature=temperature, **kw):
                p = todo[i]  # written as soon as it is ready: a killed run loses only what was in flight
                extra = {"constrained_tokens": gen.constrained.get(i, 0)} if constrain else {}
                cache.add({"key": key(p), "model": spec.label, "fingerprint": fp, "id": p["id"], **settings,
                           "backend": gen.backend, "output": out, **extra})
                bar.update(1)
            bar.close()
        finally:
            if gen is not gen_or_spec:
                gen.close()
    if records is not None:
        records.update({p["id"]: cache.get(key(p)) for p in prompts})
    return {p["id"]: cache.get(key(p))["output"] for p in prompts}
