"""Tool-call eval speed: prompts in sorted order (llama.cpp reuses the KV cache of the prefix two consecutive
prompts share: system text, tool schemas) against the data file's order, same model, items and threads, one run.

    PYTHONPATH=. python bench/eval_order.py [--model X.gguf] [--data runs/demo/data/val.jsonl] [--limit 40]

Default model: the tuned demo GGUF (``runs/demo/gguf/*funccall*``), default data: the demo's validation rows. Both
orders generate greedily with the project's generator (``llamatune.generate``); the outputs must be identical (KV
reuse changes nothing but the work). One JSON line: seconds per item in each order, ``speedup`` (file order ÷
sorted), ``prompt_tokens_evaluated`` in each order and ``same_outputs``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--data", default=str(REPO / "runs" / "demo" / "data" / "val.jsonl"))
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)

    from llamatune.chat import model_template
    from llamatune.evals.toolcall import build_prompt, read_items
    from llamatune.generate import load_generator

    model = a.model or next(iter(sorted((REPO / "runs" / "demo" / "gguf").glob("*funccall*.gguf"))), None)
    if model is None or not Path(model).exists():
        print("no model: run `make demo` first or pass --model", file=sys.stderr)
        return 2
    template = model_template(model)
    rows = read_items(a.data, ("id", "messages", "tools", "expected", "category"))[: a.limit]
    prompts = [build_prompt(r, 0, template) for r in rows]
    orders = {"file": list(range(len(rows))), "sorted": sorted(range(len(rows)), key=prompts.__getitem__)}
    result = {"bench": "eval_order", "model": str(model), "items": len(rows), "threads": a.threads}
    outputs = {}
    for name, order in orders.items():
        gen = load_generator(str(model), n_ctx=4096, n_threads=a.threads, template=template, batch=1)
        try:
            gen.complete(prompts[order[0]][:20], 1)  # warm up (weights paged in) outside the timing
            gen.decoder.clear()
            t0 = time.perf_counter()
            evaluated = 0
            for i in order:  # what gen.complete does, keeping the sequence (its prompt tokens from the cache)
                (seq,) = gen.decoder.generate(gen.requests([prompts[i]], a.max_tokens, special=True, strict=True))
                outputs.setdefault(name, {})[i] = seq.text
                evaluated += seq.prompt_tokens - seq.cached_tokens
            seconds = time.perf_counter() - t0
        finally:
            gen.close()
        result[f"{name}_s_per_item"] = round(seconds / len(rows), 3)
        result[f"{name}_prompt_tokens_evaluated"] = evaluated
    result["speedup"] = round(result["file_s_per_item"] / result["sorted_s_per_item"], 3)
    result["same_outputs"] = outputs["file"] == outputs["sorted"]
    print(json.dumps(result))
    return 0 if result["same_outputs"] else 1


if __name__ == "__main__":
    sys.exit(main())
