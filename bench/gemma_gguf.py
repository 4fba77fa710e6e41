"""The embedded gemma-3-270m through llama.cpp: HF → GGUF conversion time, and prompt/decode speed of the
original Q4_K_M and of our round-tripped q8_0 (and q4_k_m) with N threads. Prints one JSON line.

    PYTHONPATH=. python bench/gemma_gguf.py [--threads 2] [--tokens 128] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def speed(path: Path, threads: int, prompt_ids: list[int], n_tokens: int) -> dict:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
    try:
        t = time.perf_counter()
        llm.eval(prompt_ids)
        prompt_s = time.perf_counter() - t
        t, n = time.perf_counter(), 0
        for tok in llm.generate(prompt_ids, temp=0.0, reset=False):  # greedy, continues the evaluated prompt
            n += 1
            if n >= n_tokens:
                break
        decode_s = time.perf_counter() - t
    finally:
        llm.close()
    return {"prompt_tok_s": round(len(prompt_ids) / prompt_s, 1), "decode_tok_s": round(n / decode_s, 1),
            "size_mb": round(path.stat().st_size / 1e6, 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--out", help="where to write the converted GGUFs (default: a temporary directory)")
    a = p.parse_args()

    from transformers import AutoTokenizer

    from llamatune.chat import render
    from llamatune.embedded import gemma_gguf_path, gemma_hf_dir
    from llamatune.gguf_convert import convert_hf_to_gguf, quantize

    hf = gemma_hf_dir()
    out = Path(a.out or tempfile.mkdtemp(prefix="gemma-gguf-"))
    t = time.time()
    f16 = convert_hf_to_gguf(hf, out / "gemma-f16.gguf", "f16")
    convert_s = time.time() - t
    t = time.time()
    q8 = quantize(f16, out / "gemma-q8_0.gguf", "q8_0", threads=a.threads)
    q8_s = time.time() - t
    t = time.time()
    q4 = quantize(f16, out / "gemma-q4_k_m.gguf", "q4_k_m", threads=a.threads)
    q4_s = time.time() - t
    tok = AutoTokenizer.from_pretrained(hf)
    prompt = render([{"role": "user", "content": "Write a short story about a lighthouse keeper. " * 8}], template="gemma-3",
                    add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    result = {"bench": "gemma_gguf", "threads": a.threads, "prompt_tokens": len(ids), "decode_tokens": a.tokens,
              "convert_f16_s": round(convert_s, 1), "quantize_q8_0_s": round(q8_s, 1), "quantize_q4_k_m_s": round(q4_s, 1)}
    for name, path in [("original_q4_k_m", gemma_gguf_path()), ("ours_q8_0", q8), ("ours_q4_k_m", q4), ("ours_f16", f16)]:
        result[name] = speed(path, a.threads, ids, a.tokens)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
