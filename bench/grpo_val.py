"""SFT vs SFT + GRPO on the validation items (by hand; ~30 min on 2 cores): does the reinforcement stage help?

Takes a demo directory whose ``data/`` (``val.jsonl``, ``eval.jsonl``, ...) and SFT run ``tuned/`` exist (``llamatune
demo``), or, with ``--sft-steps N``, makes the demo's data (defaults) and trains ``tuned-N/`` with the demo recipe when
missing; runs GRPO from the SFT run (``llamatune.rl.grpo``, prompts of
the training families, none equal to a validation or test prompt) into ``grpo-<steps>/``, exports both runs to f16
GGUF, evaluates both on ``data/val.jsonl`` exactly as the demo evaluates (greedy, ``--max-tokens`` 64, the model's
template) and compares them paired (McNemar, bootstrap CI of the difference). Every stage resumes or is skipped when
its output exists. The test items are never touched. Prints one JSON line.

    PYTHONPATH=. python bench/grpo_val.py --demo /tmp/grpo-demo --steps 60
    PYTHONPATH=. python bench/grpo_val.py --demo /tmp/grpo-demo --sft-steps 160 --steps 0   # an SFT-only control
    PYTHONPATH=. python bench/grpo_val.py --demo runs/demo --steps 60 --select 4   # only prompts the SFT is unsure of

``--select K`` keeps the drawn prompts whose K samples from the SFT model's GGUF differ in reward (the GRPO
recipe's ``select_samples``, :mod:`llamatune.rl_select`: DAPO's dynamic sampling, up front), so fewer GRPO steps see a
group of equal rewards.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def _metric(res: dict, key: str) -> dict:
    m = res["aggregate"]["overall"][key]
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", required=True, help="directory with data/ and the SFT run tuned/")
    p.add_argument("--sft-steps", type=int, default=None, help="train (or reuse) tuned-N with the demo recipe")
    p.add_argument("--steps", type=int, default=60, help="GRPO steps (0: evaluate the SFT run only)")
    p.add_argument("--n-prompts", type=int, default=256)
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--prompts-per-step", type=int, default=1)
    p.add_argument("--select", type=int, default=0, metavar="K",
                   help="keep the drawn prompts whose K samples of the SFT GGUF differ in reward (llamatune.rl_select; "
                        "0: every drawn prompt)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=64, help="new tokens per validation item (the demo's)")
    p.add_argument("overrides", nargs="*", help="--key=value GRPO recipe overrides (after --)")
    a = p.parse_args(argv)

    import torch

    from llamatune.evals.toolcall import compare, evaluate, is_current
    from llamatune.export import export
    from llamatune.jsonl import read_json
    from llamatune.provenance import cpu_info
    from llamatune.rl import exclusion_rows, grpo, prompt_rows

    torch.set_num_threads(a.threads)
    demo = Path(a.demo)
    data, sft = demo / "data", demo / ("tuned" if a.sft_steps is None else f"tuned-{a.sft_steps}")
    t0 = time.time()
    if a.sft_steps is not None:
        from llamatune import demo as pipeline, demo_data
        from llamatune.models import resolve_model

        d = pipeline.DEFAULTS
        if not demo_data.data_done(data, d["n"], d["n_test"], d["n_val"], d["max_length"], "smollm2"):
            demo_data.make_data(data, d["n"], d["n_test"], d["n_val"], d["max_length"], resolve_model(d["model"]),
                               "smollm2")
        pipeline.run_training(data, sft, a.sft_steps, d["max_length"], a.threads, d["model"])
    template = read_json(sft / "run.json")["recipe"]["chat_template"]
    tag = f"grpo-{a.steps}" + (f"-select{a.select}" if a.select else "") + (
        "-" + "-".join(o.lstrip("-").replace("=", "") for o in a.overrides) if a.overrides else "")
    out = {"bench": "grpo_val", "demo": str(demo), "sft_run": str(sft),
           "sft_wall_s": read_json(sft / "run.json").get("wall_seconds"), "steps": a.steps, "n_prompts": a.n_prompts,
           "num_generations": a.num_generations, "prompts_per_step": a.prompts_per_step, "overrides": a.overrides,
           "cpu": cpu_info().get("model"), "load_before": [round(x, 2) for x in os.getloadavg()]}
    exclude = [data]
    runs = {"sft": sft}

    def gguf_of(name: str, run_dir: Path) -> Path:
        gguf = next(iter(sorted((run_dir / "gguf").glob("*-f16.gguf"))), None)
        return gguf or Path(export(run_dir, ("f16",), name=name, template=template, strict=False)["gguf"]["f16"])

    if a.steps:
        t1 = time.time()
        prompts = prompt_rows(a.n_prompts, seed=0, exclude=exclusion_rows(exclude))
        # the selection is the GRPO recipe's (select_samples): sampled with its temperature and completion length
        select = [f"--select_samples={a.select}", f"--select_gguf={gguf_of('sft', sft)}"] if a.select else []
        run = grpo(sft, prompts, demo / f"{sft.name}-{tag}", exclude=exclude, steps=a.steps,
                   num_generations=a.num_generations, prompts_per_step=a.prompts_per_step,
                   overrides=select + list(a.overrides))
        rec = read_json(run / "run.json")
        if a.select:
            out.update(selection=rec.get("selection"), selection_s=(rec.get("selection") or {}).get("seconds"))
        out.update(grpo_wall_s=round(time.time() - t1, 1), grpo_s_per_step=rec.get("seconds_per_step"),
                   reward=rec.get("reward"), run=str(run))
        runs["grpo"] = run
    results = {}
    for name, run_dir in runs.items():
        gguf = gguf_of(name, run_dir)
        res_path = demo / "results" / f"val-{run_dir.name}.json"
        if not is_current(res_path, gguf, data / "val.jsonl", max_tokens=a.max_tokens, template=template, limit=None):
            evaluate(gguf, data / "val.jsonl", res_path, max_tokens=a.max_tokens, n_threads=a.threads,
                     template=template)
        res = read_json(res_path)
        results[name] = res_path
        out[name] = {k: _metric(res, k) for k in ("accuracy", "tool_accuracy", "irrelevance_accuracy",
                                                  "format_valid_rate")}
        out[name]["by_category"] = {c: round(m["accuracy"]["value"], 3)
                                    for c, m in res["aggregate"]["by_category"].items()}
    if "grpo" in results:
        cmp = compare(results["sft"], results["grpo"])
        out["grpo_minus_sft"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in cmp["overall"].items()}
    out["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
