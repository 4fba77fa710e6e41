"""GGUF decode speed with llama-cpp-python, next to the memory-bandwidth limit. Prints one JSON line.

    PYTHONPATH=. python bench/gguf_decode.py [--model X.gguf ...] [--tokens 128] [--repeats 3] [--threads N]

Default models: every ``runs/demo/**/*.gguf`` (the demo's base and tuned GGUFs) when there are any, else the
original embedded gemma-3-270m Q4_K_M (``llamatune.embedded.gemma_gguf_path()``) and the tiny test model's Q8_0.
Each model evaluates a fixed prompt, then greedily decodes ``--tokens`` tokens (EOS ignored), best of
``--repeats``, with ``n_threads`` = physical cores. Decoding one token reads every weight once, so
``bandwidth_ratio`` = file bytes × tok/s ÷ measured read bandwidth (bench/bandwidth.py) is the share of the
memory-bandwidth limit reached (≈ 1 means bandwidth-bound; a tiny model that fits in cache can exceed 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPT = ("The lighthouse keeper climbed the stairs as the storm rolled in from the sea. He had kept the light "
          "burning for thirty years, and tonight, more than ever, the ships would need it. Write what happened next.")


def default_models() -> list[Path]:
    demo = REPO / "runs" / "demo"
    found = sorted({p.resolve() for p in demo.rglob("*.gguf")}) if demo.exists() else []  # gguf/ holds links
    if found:
        return found
    from llamatune.gguf_convert import convert_hf_to_gguf, quantize
    from llamatune.models import tiny_model_dir

    models = []
    try:
        from llamatune.embedded import gemma_gguf_path

        models.append(gemma_gguf_path())
    except RuntimeError as e:  # the demo extra is not installed
        print(f"skipping the embedded gemma: {e}", file=sys.stderr)
    d = tiny_model_dir() / "gguf"
    f16, q8 = d / "tiny-f16.gguf", d / "tiny-q8_0.gguf"
    if not q8.exists():
        if not f16.exists():
            convert_hf_to_gguf(tiny_model_dir(), f16, "f16")
        quantize(f16, q8, "q8_0")
    return models + [q8]


def decode_speed(path: Path, threads: int, n_tokens: int, repeats: int) -> dict:
    """Best-of-``repeats`` prompt and decode tok/s of one GGUF (greedy, EOS ignored)."""

    from llamatune.runtime import open_llama

    llm = open_llama(str(path), n_ctx=1024, n_threads=threads, n_threads_batch=threads)
    try:
        ids = llm.tokenize(PROMPT.encode(), add_bos=True)
        prompt_rates, decode_rates = [], []
        for _ in range(repeats + 1):  # the first pass warms up (page-ins of the mapped weights)
            llm.reset()
            t = time.perf_counter()
            llm.eval(ids)
            prompt_rates.append(len(ids) / (time.perf_counter() - t))
            t, n = time.perf_counter(), 0
            for _tok in llm.generate(ids, temp=0.0, reset=False):  # continues the evaluated prompt
                n += 1
                if n >= n_tokens:
                    break
            decode_rates.append(n / (time.perf_counter() - t))
        arch = llm.metadata.get("general.architecture", "?")
        ftype = llm.metadata.get("general.file_type", "?")
    finally:
        llm.close()
    return {"model": str(path.relative_to(REPO) if path.is_relative_to(REPO) else path.name), "arch": arch,
            "file_type": ftype, "bytes": path.stat().st_size, "prompt_tokens": len(ids), "decode_tokens": n_tokens,
            "prompt_tok_s": round(max(prompt_rates[1:]), 1), "decode_tok_s": round(max(decode_rates[1:]), 2),
            "decode_tok_s_all": [round(r, 2) for r in decode_rates[1:]]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", help="a GGUF (repeatable; default: see the module docstring)")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="default: physical cores")
    p.add_argument("--bandwidth-gb-s", type=float, default=None, help="default: measured now (bench/bandwidth.py)")
    a = p.parse_args(argv)

    from bandwidth import measure

    from llamatune.runtime import physical_cores

    threads = a.threads or physical_cores()
    models = [Path(m) for m in a.model] if a.model else default_models()
    for m in models:
        if not m.exists():
            p.error(f"{m}: no such GGUF")
    bw = a.bandwidth_gb_s or measure()["read_gb_s"]
    rows = []
    for m in models:
        r = decode_speed(m.resolve(), threads, a.tokens, a.repeats)
        r["bandwidth_bound_tok_s"] = round(bw * 1e9 / r["bytes"], 1)
        r["bandwidth_ratio"] = round(r["bytes"] * r["decode_tok_s"] / (bw * 1e9), 3)
        rows.append(r)
    print(json.dumps({"bench": "gguf_decode", "threads": threads, "read_gb_s": bw, "models": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
