"""Greedy raw completions for the tool-call evaluation: a rendered prompt in, the model's raw text out.

Unlike chat generation, the output keeps special tokens such as ``<|python_tag|>`` (the scorer needs the raw
text) and the prompt carries the tools. ``.gguf`` files run in llama-cpp-python, HF directories in
transformers. (Overlaps :mod:`llamatune.generate`, which renders without tools and strips special tokens.)
"""

from __future__ import annotations

from pathlib import Path

STOPS = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<end_of_turn>")  # Llama 3.2, Gemma 3


class LlamaCppRunner:
    """Greedy completion of a rendered prompt with llama-cpp-python; special tokens (``<|python_tag|>``) kept."""

    def __init__(self, path, n_ctx: int = 4096, max_tokens: int = 128, n_threads: int | None = None):
        from llamatune.evals.llamacpp_lm import open_llama  # threads: n_threads, $LLAMATUNE_THREADS, or physical cores

        self.llm = open_llama(str(path), n_ctx=n_ctx, n_threads=n_threads)
        self.n_ctx, self.max_tokens = n_ctx, max_tokens
        self.stop = {self.llm.token_eos()}
        for s in STOPS:
            ids = self.llm.tokenize(s.encode(), add_bos=False, special=True)
            if len(ids) == 1:
                self.stop.add(ids[0])

    def __call__(self, prompt: str) -> str:
        toks = self.llm.tokenize(prompt.encode(), add_bos=False, special=True)
        if len(toks) + self.max_tokens > self.n_ctx:
            raise ValueError(f"prompt of {len(toks)} tokens + {self.max_tokens} new does not fit n_ctx={self.n_ctx}"
                             " (pass --n-ctx)")
        out = []
        for t in self.llm.generate(toks, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
            if t in self.stop:
                break
            out.append(t)
            if len(out) >= self.max_tokens:
                break
        return self.llm.detokenize(out, special=True).decode("utf-8", errors="replace")

    def close(self):
        self.llm.close()


class HFRunner:
    """Greedy generation with transformers from an HF model directory."""

    def __init__(self, path, max_tokens: int = 128):
        from llamatune.models import load_causal_lm

        self.model, self.tok = load_causal_lm(str(path))
        self.model.eval()
        self.max_tokens = max_tokens
        self.stop = [i for i in (self.tok.convert_tokens_to_ids(s) for s in STOPS) if isinstance(i, int) and i >= 0]

    def __call__(self, prompt: str) -> str:
        import torch

        ids = self.tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_tokens,
                                      do_sample=False, eos_token_id=self.stop, pad_token_id=self.stop[0])
        text = self.tok.decode(out[0, ids.shape[1]:], skip_special_tokens=False)
        cut = min([text.find(s) for s in STOPS if s in text], default=len(text))
        return text[:cut]

    def close(self):
        pass


def model_kind(spec) -> str:
    """``"gguf"`` or ``"hf"``; ``ValueError`` naming the path for anything else."""
    p = Path(spec)
    if p.suffix == ".gguf" and p.is_file():
        return "gguf"
    if p.is_dir() and (p / "config.json").exists():
        return "hf"
    raise ValueError(f"--model {spec}: expected a .gguf file or an HF model directory with config.json")


def load_runner(spec, n_ctx: int = 4096, max_tokens: int = 128, n_threads: int | None = None):
    """A callable ``prompt -> raw text`` for a ``.gguf`` file (llama.cpp) or an HF model directory."""
    if model_kind(spec) == "gguf":
        return LlamaCppRunner(spec, n_ctx, max_tokens, n_threads)
    return HFRunner(spec, max_tokens)
