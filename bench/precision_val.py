"""bf16 vs fp32 training, judged where it matters: validation accuracy of the same setting at the same step, paired.

Issue 26 asks that the demo's validation accuracy with bf16 training sit inside the fp32 run's interval. This trains
one setting of a successive-halving sweep file twice, with ``bf16: true`` and ``bf16: false`` (everything else equal:
rows, seed, the learning-rate schedule of the setting's whole budget), up to ``--steps`` (a rung of that sweep, so
the bf16 arm is the sweep's own cached run when ``--out`` is the sweep's directory), exports both, scores both on the
sweep's ``val.jsonl`` exactly as the sweep does and compares them paired (McNemar, bootstrap CI of fp32 − bf16).
The test items are never read. Every stage is cached under ``--out``; prints one JSON line.

    flock /tmp/llamatune-heavy.lock env PYTHONPATH=. python bench/precision_val.py \\
        FuncCall/recipes/demo-sha.yaml --out runs/sha --setting r32-lr5e-4 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_file", help="a successive-halving sweep file (its base data and the setting)")
    p.add_argument("--out", required=True, help="the sweep's output directory (its data and runs are reused)")
    p.add_argument("--setting", required=True, help="the name of one of the file's settings")
    p.add_argument("--steps", type=int, required=True, help="train to this step (a rung of the sweep)")
    a = p.parse_args(argv)

    from llamatune import sweep
    from llamatune.device import this_train_precision
    from llamatune.evals.toolcall import compare
    from llamatune.jsonl import read_json
    from llamatune.provenance import cpu_info

    spec = sweep.load_sweep(a.sweep_file)
    run = next((r for r in spec["runs"] if r["name"] == a.setting), None)
    if run is None:
        raise SystemExit(f"{a.sweep_file}: no setting named {a.setting!r} (have {[r['name'] for r in spec['runs']]})")
    rungs = (spec.get("search") or {}).get("rungs") or [int(run["steps"])]
    if a.steps not in rungs:
        raise SystemExit(f"--steps {a.steps}: not a rung of {a.sweep_file} ({rungs})")
    out, t0 = Path(a.out), time.time()
    rows, names = {}, {"bf16": run["name"], "fp32": f"{run['name']}-fp32"}
    for precision, flag in (("bf16", True), ("fp32", False)):
        arm = {**run, "name": names[precision], "set": {**(run.get("set") or {}), "bf16": flag}}
        prev = None
        for rung in rungs[: rungs.index(a.steps) + 1]:  # each rung continues from the one before, as in the sweep
            row = sweep.run_setting(out, spec["base"], arm, stop_at=rung, prev=prev)
            prev = rung
        rows[precision] = row
        got = read_json(out / arm["name"] / f"steps-{a.steps}" / "run.json")["precision"]["compute"]
        if got != ("bfloat16" if flag else "float32"):
            raise SystemExit(f"{out / arm['name']}: trained in {got}, expected {precision}")
    cmp = compare(*(out / names[precision] / f"steps-{a.steps}" / "val.json" for precision in ("bf16", "fp32")))
    res = {"bench": "precision_val", "sweep_file": a.sweep_file, "setting": a.setting, "steps": a.steps,
           "cpu": cpu_info().get("model"), "cpu_default": this_train_precision().dtype,
           "load_before": [round(x, 2) for x in os.getloadavg()]}
    for precision, row in rows.items():
        res[precision] = {"score": round(row["score"], 4), "train_seconds": row["train_seconds"],
                          **{k: round(v["value"], 4) if isinstance(v, dict) else v for k, v in row["val"].items()}}
    res["fp32_minus_bf16"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in cmp["overall"].items()}
    res["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
