"""The embedded gemma-3-270m through llama.cpp: HF → GGUF conversion time, and prompt/decode speed of the
original Q4_K_M and of our round-tripped f16, q8_0 and q4_k_m with N threads. Prints one JSON line.

    PYTHONPATH=. python bench/gemma_gguf.py [--threads 2] [--tokens 64] [--repeats 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def speed(path: Path, threads: int, prompt_ids: list[int], n_tokens: int, repeats: int) -> dict:
    """Prompt and greedy decode speed (tokens/s), best and median of ``repeats`` runs.

    llama.cpp's threads spin while they wait for each other, so on a machine whose cores are busy with other
    work a 2-thread run can be 10x slower than an idle one; the best run estimates the idle speed.
    """
    import numpy as np

    from llamatune.runtime import open_llama

    llm = open_llama(str(path), n_ctx=2048, n_threads=threads, n_threads_batch=threads)
    prompt, decode = [], []
    try:
        for _ in range(repeats):
            llm.reset()
            t = time.perf_counter()
            llm.eval(prompt_ids)
            prompt.append(len(prompt_ids) / (time.perf_counter() - t))
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            t = time.perf_counter()
            for _ in range(n_tokens):
                llm.eval([nxt])
                nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            decode.append(n_tokens / (time.perf_counter() - t))
    finally:
        llm.close()
    r = lambda x: round(float(x), 1)  # noqa: E731
    return {"prompt_tok_s_best": r(max(prompt)), "prompt_tok_s_median": r(np.median(prompt)),
            "decode_tok_s_best": r(max(decode)), "decode_tok_s_median": r(np.median(decode)),
            "size_mb": r(path.stat().st_size / 1e6)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
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
    result = {"bench": "gemma_gguf", "threads": a.threads, "loadavg_1m": os.getloadavg()[0], "cpus": os.cpu_count(), "prompt_tokens": len(ids), "decode_tokens": a.tokens,
              "convert_f16_s": round(convert_s, 1), "quantize_q8_0_s": round(q8_s, 1), "quantize_q4_k_m_s": round(q4_s, 1)}
    for name, path in [("original_q4_k_m", gemma_gguf_path()), ("ours_q8_0", q8), ("ours_q4_k_m", q4), ("ours_f16", f16)]:
        result[name] = speed(path, a.threads, ids, a.tokens, a.repeats)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
