"""Batched llama.cpp decoding for the tool-call eval: items/s with ``--batch`` sequences decoded together ÷ one at a
time, same items, same GGUF, same threads, one run; and whether the greedy outputs are the same.

    PYTHONPATH=. python bench/decode_batch.py [--model X.gguf] [--data eval.jsonl] [--limit 120] [--batch 8]
                                              [--threads 2] [--max-tokens 64] [--sweep 2,4,16]

Default model: the tuned demo GGUF (``runs/demo/gguf/*funccall*``) when ``runs/demo`` exists, else SmolLM2-135M-Instruct
converted to f16 (built once into the cache, as the tests build their GGUFs); default items: the demo's test items
(``runs/demo/data/eval.jsonl``, else the same 120 regenerated the way ``llamatune demo`` picks them). Both runs go
through ``eval toolcall``'s generator (:class:`llamatune.generate.LlamaCppGenerator`: prompts rendered and sorted as
the eval sorts them, greedy, ``--max-tokens`` new tokens), each on a fresh model after a warm-up. Batched matmuls can
round differently from one-row ones, so the outputs are compared, not assumed equal: ``identical_fraction``, the ids of
the items that differ and whether their verdict (the eval's score) changed. ``prefix_sharing_speedup``: the batched
run ÷ the same without sharing prompt prefixes between sequences (``Decoder.share_prefixes``).
``ceiling_if_generation_free``: the sequential run's seconds ÷ its seconds of prompt evaluation, the most any decode
batch can give on these items (Amdahl: batching shares the weight reads of generated tokens, not of prompt tokens).
``--sweep`` adds items/s at other batch sizes. One JSON line; targets: ``speedup_vs_sequential`` ≥ 4 (2 threads),
``identical_fraction`` ≥ 0.99 with 0 verdicts changed."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def smollm2_f16() -> Path:
    """SmolLM2-135M-Instruct as an f16 GGUF in the cache (built from the embedded model on first use)."""
    from llamatune.gguf_convert import convert_hf_to_gguf
    from llamatune.smollm2 import smollm2_hf_dir

    hf = smollm2_hf_dir()
    path = hf / "gguf" / "smollm2-135m-f16.gguf"
    return path if path.exists() else convert_hf_to_gguf(hf, path, "f16")


def default_model() -> Path:
    demo = sorted((REPO / "runs" / "demo" / "gguf").glob("*funccall*.gguf"))
    return demo[0] if (REPO / "runs" / "demo").exists() and demo else smollm2_f16()


def demo_items(n_test: int = 120) -> list[dict]:
    """The demo's test items: ``runs/demo/data/eval.jsonl``, else regenerated as ``llamatune demo`` picks them."""
    from llamatune.data.funccall import build_dataset
    from llamatune.demo import DEFAULTS
    from llamatune.demo_data import distinct, prompt_key, stratified
    from llamatune.jsonl import read_jsonl

    path = REPO / "runs" / "demo" / "data" / "eval.jsonl"
    if path.exists():
        return read_jsonl(path)
    with tempfile.TemporaryDirectory() as tmp:
        build_dataset(tmp, DEFAULTS["n"], seed=0)
        seen = {prompt_key(r) for r in read_jsonl(Path(tmp) / "train.jsonl")}
        pool = distinct(read_jsonl(Path(tmp) / "eval.jsonl"), seen)
    return stratified(pool, n_test)


def cpu() -> dict:
    from llamatune.runtime import physical_cores

    name, flags = "?", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and name == "?":
            name = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    return {"cpu": name, "physical_cores": physical_cores(),
            "cpu_flags": sorted(f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512f", "avx2")))}


def timed_run(model, prompts, batch, threads, max_tokens, share=True):
    """``(outputs in prompt order, seconds, prompt tokens evaluated)`` of the eval's generator on ``prompts``."""
    from llamatune.generate import LlamaCppGenerator
    from llamatune.model_spec import parse_spec

    gen = LlamaCppGenerator(parse_spec(str(model)), n_ctx=4096, n_threads=threads, batch=batch)
    try:
        gen.decoder.share_prefixes = share
        gen.complete(prompts[0], 2)  # warm-up: weights paged in, buffers allocated
        gen.decoder.clear()
        steps0, evaluated0 = gen.decoder.n_steps, gen.decoder.n_evaluated
        gen.decoder.seconds = dict.fromkeys(gen.decoder.seconds, 0.0)
        t0 = time.perf_counter()
        out = dict(gen.complete_each(prompts, max_tokens))
        seconds = time.perf_counter() - t0
        dec = gen.decoder
        return [out[i] for i in range(len(prompts))], seconds, dec.n_evaluated - evaluated0, \
            {"calls": dec.n_steps - steps0, **{f"{k}_s": round(v, 1) for k, v in dec.seconds.items()}}
    finally:
        gen.close()


def add_item_arguments(p) -> None:
    """The options of the benchmarks that decode the tool-call eval's items (this one and constrain.py)."""
    p.add_argument("--model", default=None)
    p.add_argument("--data", default=None, help="test items (default: the demo's)")
    p.add_argument("--limit", type=int, default=120)
    p.add_argument("--batch", type=int, default=None, help="default: eval toolcall's (llamatune.generate.DECODE_BATCH)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=64, help="new tokens per item (the demo's)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_item_arguments(p)
    p.add_argument("--sweep", default="", help="comma-separated other batch sizes to time")
    p.add_argument("--no-share-run", action="store_true", help="skip the run without prefix sharing")
    a = p.parse_args(argv)

    from llamatune.chat import model_template
    from llamatune.evals.scoring import score_output
    from llamatune.evals.toolcall import build_prompt, prompt_messages, read_items
    from llamatune.generate import DECODE_BATCH

    model = Path(a.model) if a.model else default_model()
    rows = (read_items(a.data, ("id", "messages", "tools", "expected", "category")) if a.data else demo_items())
    rows = rows[: a.limit]
    template = model_template(str(model))
    batch = a.batch or DECODE_BATCH
    prompts = [build_prompt(r, 0, template) for r in rows]
    order = sorted(range(len(rows)), key=prompts.__getitem__)  # as eval toolcall sends them
    prompts, rows = [prompts[i] for i in order], [rows[i] for i in order]

    seq_out, seq_s, seq_eval, seq_steps = timed_run(model, prompts, 1, a.threads, a.max_tokens)
    bat_out, bat_s, bat_eval, bat_steps = timed_run(model, prompts, batch, a.threads, a.max_tokens)

    def verdict(r, out):
        return score_output(out, r["expected"], r["tools"], r["category"], prompt_messages(r))["correct"]

    differ = [{"id": r["id"], "verdict_changed": verdict(r, x) != verdict(r, y)}
              for r, x, y in zip(rows, seq_out, bat_out) if x != y]
    n = len(rows)
    res = {"bench": "decode_batch", "model": str(model), "items": n, "threads": a.threads, "batch": batch,
           "max_tokens": a.max_tokens,
           "sequential_items_per_s": round(n / seq_s, 3), "batched_items_per_s": round(n / bat_s, 3),
           "speedup_vs_sequential": round(seq_s / bat_s, 2),
           "identical_fraction": round(1 - len(differ) / n, 4), "differing": differ,
           "verdicts_changed": sum(d["verdict_changed"] for d in differ),
           "accuracy_sequential": round(sum(verdict(r, o) for r, o in zip(rows, seq_out)) / n, 4),
           "accuracy_batched": round(sum(verdict(r, o) for r, o in zip(rows, bat_out)) / n, 4),
           "prompt_tokens_evaluated": {"sequential": seq_eval, "batched": bat_eval},
           "llama_decode": {"sequential": seq_steps, "batched": bat_steps},
           # what batching can buy at most on these items: every generated token free, prompts evaluated as fast
           # as one at a time (they already are: a prompt's tokens go through llama_decode together)
           "ceiling_if_generation_free": round(seq_s / max(seq_steps["prompt_s"], 1e-9), 2)}
    if not a.no_share_run:
        _, plain_s, plain_eval, _ = timed_run(model, prompts, batch, a.threads, a.max_tokens, share=False)
        res["prefix_sharing_speedup"] = round(plain_s / bat_s, 2)
        res["prompt_tokens_evaluated"]["batched_no_sharing"] = plain_eval
    sweep = {}
    for b in [int(x) for x in a.sweep.split(",") if x.strip()]:
        _, s, _, _ = timed_run(model, prompts, b, a.threads, a.max_tokens)
        sweep[str(b)] = round(n / s, 3)
    if sweep:
        res["items_per_s_by_batch"] = {"1": res["sequential_items_per_s"], str(batch): res["batched_items_per_s"],
                                       **sweep}
    res.update(cpu(), load=round(os.getloadavg()[0], 2),
               goal={"speedup_vs_sequential": ">= 4.0 (2 threads)", "identical_fraction": ">= 0.99",
                     "verdicts_changed": 0})
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
