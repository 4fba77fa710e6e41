"""What constrained calls cost and change: the tool-call eval's generation with and without the lazy call grammar,
same items, same GGUF, same threads, side by side in one run. One JSON line.

    PYTHONPATH=. python bench/constrain.py [--model X.gguf] [--data eval.jsonl] [--limit 120] [--batch 8]
                                           [--threads 2] [--max-tokens 64] [--repeats 2]

Default model: the tuned demo GGUF (``runs/demo/gguf/*funccall*``, also looked for under ``$LLAMATUNE_DEMO_RUN``) when
there is one, else SmolLM2-135M-Instruct converted to f16 (as ``bench/decode_batch.py``); default items: the demo's
test items (``bench/decode_batch.py``'s ``demo_items``). Both modes go through ``eval toolcall``'s generator
(:class:`llamatune.generate.LlamaCppGenerator`, greedy, ``--batch`` sequences, prompts sorted as the eval sorts them),
one model, the KV cache cleared before each run; the order alternates over ``--repeats`` pairs so drift on a shared
machine favours neither. ``constrained`` decodes each item under the lazy grammar of its tools
(:func:`llamatune.grammar.grammar_for`), as ``eval toolcall --constrain`` does.

* ``decode_tok_s_ratio``: constrained ÷ raw decode tokens/s (generated tokens ÷ the run's wall time outside prompt
  evaluation steps, so sampling and the grammar count; median of the pairs); target ≥ 0.9;
* ``invalid_calls``: outputs that attempt a call which is not a well-formed call of an offered tool with arguments
  of its schema (:func:`llamatune.toolcall.parse_output` + ``validate_call``), raw and constrained; target 0 constrained;
  ``invalid_calls_at_budget``: those of them cut by ``--max-tokens`` (a grammar cannot finish a call the budget cuts);
* ``irrelevance``: of the items that want no call, the fraction answered without attempting one, raw and constrained
  (the grammar must not push towards calling: within ±2 pp); ``accuracy`` (the eval's verdicts), raw and constrained;
* ``constrained_tokens``: tokens the grammar changed; ``outputs_changed``: items whose output differs from raw.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def default_model() -> Path:
    import os

    from decode_batch import smollm2_f16

    for run in filter(None, [os.environ.get("LLAMATUNE_DEMO_RUN"), str(REPO / "runs" / "demo")]):
        found = sorted((Path(run) / "gguf").glob("*funccall*f16.gguf")) or sorted((Path(run) / "gguf").glob("*funccall*.gguf"))
        if found:
            return found[0]
    return smollm2_f16()


def invalid(output: str, tools: list) -> bool:
    """An attempted call that is not a valid call of an offered tool."""
    from llamatune.toolcall import parse_output, validate_call

    parsed = parse_output(output)
    if not parsed.attempted:
        return False
    return not parsed.format_valid or not parsed.calls or any(validate_call(c, tools) for c in parsed.calls)


def run(gen, prompts, grammars, max_tokens):
    """``(outputs, decode tok/s, generated tokens, tokens the grammar changed, finishes)`` of one pass over
    ``prompts``."""
    dec = gen.decoder
    dec.clear()
    dec.seconds = dict.fromkeys(dec.seconds, 0.0)
    generated, changed, out, finish = 0, 0, {}, {}
    t0 = time.perf_counter()
    for ev in dec.run(gen.requests(prompts, max_tokens, special=True, strict=True, grammar=grammars)):
        if ev.done:
            out[ev.seq.request.tag], finish[ev.seq.request.tag] = ev.seq.text, ev.seq.finish
            generated += ev.seq.generated
            changed += ev.seq.constrained
    wall = time.perf_counter() - t0
    return ([out[i] for i in range(len(prompts))], generated / (wall - dec.seconds["prompt"]), generated, changed,
            [finish[i] for i in range(len(prompts))])


def main(argv=None) -> int:
    from decode_batch import add_item_arguments

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_item_arguments(p)
    p.add_argument("--repeats", type=int, default=2, help="raw/constrained pairs (order alternating)")
    a = p.parse_args(argv)

    from decode_batch import demo_items

    from llamatune.chat import model_template
    from llamatune.evals.scoring import score_output
    from llamatune.evals.toolcall import build_prompt, prompt_messages, read_items
    from llamatune.generate import DECODE_BATCH, LlamaCppGenerator
    from llamatune.grammar import grammar_for
    from llamatune.model_spec import parse_spec

    model = Path(a.model) if a.model else default_model()
    rows = (read_items(a.data, ("id", "messages", "tools", "expected", "category")) if a.data else demo_items())
    rows = rows[: a.limit]
    template = model_template(str(model))
    prompts = [build_prompt(r, 0, template) for r in rows]
    order = sorted(range(len(rows)), key=prompts.__getitem__)  # as eval toolcall sends them
    prompts, rows = [prompts[i] for i in order], [rows[i] for i in order]
    grammars = [grammar_for(r["tools"], template) for r in rows]
    batch = a.batch or DECODE_BATCH

    gen = LlamaCppGenerator(parse_spec(str(model)), n_ctx=4096, n_threads=a.threads, batch=batch, template=template)
    try:
        gen.complete(prompts[0], 2)  # warm-up: weights paged in, buffers allocated
        ratios, rates, outs = [], {"raw": [], "constrained": []}, {}
        for r in range(a.repeats):
            for mode in (("raw", "constrained") if r % 2 == 0 else ("constrained", "raw")):
                out, tps, n_gen, changed, finish = run(gen, prompts, grammars if mode == "constrained" else None,
                                                       a.max_tokens)
                rates[mode].append(tps)
                outs[mode] = (out, n_gen, changed, finish)
            ratios.append(rates["constrained"][-1] / rates["raw"][-1])
    finally:
        gen.close()

    def stats(mode):
        out = outs[mode][0]
        verdicts = [score_output(o, r["expected"], r["tools"], r["category"], prompt_messages(r))
                    for r, o in zip(rows, out)]
        none = [v for v in verdicts if not v["expects_call"]]
        bad = [invalid(o, r["tools"]) for r, o in zip(rows, out)]
        return {"invalid_calls": sum(bad),
                "invalid_calls_at_budget": sum(b and f == "length" for b, f in zip(bad, outs[mode][3])),
                "attempted": sum(v["attempted"] for v in verdicts),
                "irrelevance": round(sum(not v["attempted"] for v in none) / len(none), 4) if none else None,
                "accuracy": round(sum(v["correct"] for v in verdicts) / len(rows), 4)}

    raw, con = stats("raw"), stats("constrained")
    res = {"bench": "constrain", "model": str(model), "template": template, "items": len(rows), "threads": a.threads,
           "batch": batch, "max_tokens": a.max_tokens, "repeats": a.repeats,
           "decode_tok_s_ratio": round(statistics.median(ratios), 3),
           "raw_decode_tok_s": round(statistics.median(rates["raw"]), 2),
           "constrained_decode_tok_s": round(statistics.median(rates["constrained"]), 2),
           "generated_tokens_raw": outs["raw"][1], "generated_tokens_constrained": outs["constrained"][1],
           "constrained_tokens": outs["constrained"][2],
           "outputs_changed": sum(x != y for x, y in zip(outs["raw"][0], outs["constrained"][0])),
           "no_call_items": sum(r["expected"] is None for r in rows),
           **{f"{k}_{mode}": v[k] for k in ("invalid_calls", "invalid_calls_at_budget", "attempted", "irrelevance",
                                            "accuracy")
              for mode, v in (("raw", raw), ("constrained", con))}}
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
