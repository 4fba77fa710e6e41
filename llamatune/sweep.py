"""Choose the demo's model and recipe on the validation split, never on the test items.

    llamatune sweep FuncCall/recipes/demo-sweep.yaml              # writes runs/sweep/{sweep.md,sweep.json}
    llamatune sweep FuncCall/recipes/demo-sweep.yaml --only NAME  # one setting

The sweep file lists settings (``runs``), each with a ``model`` (a key of :data:`llamatune.demo.MODELS`),
``steps``, optional recipe overrides under ``set`` (TRL/PEFT field names: ``learning_rate``, ``r``,
``per_device_train_batch_size``…), an optional training category ``mix`` and ``max_length`` (training rows longer
than that many tokens are left out; the demo's default otherwise). Every setting trains with the demo
recipe of its model on the demo's training rows, is exported to GGUF Q8_0, and is scored by ``eval toolcall`` on
``val.jsonl``: new rows of the *training* template families (the demo's test items come from held-out families
and are not read here). The untuned base of every model is scored on the same rows. Each stage is cached like the
demo's, so an interrupted sweep resumes; ``sweep.md`` lists every setting, its validation scores with 95% CIs, and
its training and evaluation time, whatever the outcome.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import yaml

from llamatune import demo
from llamatune.jsonl import read_json, write_json, write_text
from llamatune.report import pct_cell as _pct

DATA_KEYS = ("n", "n_test", "n_val", "max_length")


def load_sweep(path: str | Path) -> dict:
    spec = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    runs = spec.get("runs")
    if not isinstance(runs, list) or not runs:
        raise ValueError(f"{path}: 'runs' must be a non-empty list of settings")
    names = set()
    for i, r in enumerate(runs):
        where = f"{path}: runs[{i}]"
        if not isinstance(r, dict) or not r.get("name") or r.get("model") not in demo.MODELS:
            raise ValueError(f"{where}: needs a name and a model in {sorted(demo.MODELS)}")
        if r["name"] in names:
            raise ValueError(f"{where}: name {r['name']!r} appears twice")
        names.add(r["name"])
        unknown = set(r) - {"name", "model", "steps", "set", "mix", "max_length"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    return {"base": {**{k: demo.DEFAULTS[k] for k in (*DATA_KEYS, "max_tokens", "threads")}, **spec.get("base", {})},
            "runs": runs}


def _val_metrics(result: dict) -> dict:
    agg = result["aggregate"]["overall"]
    return {k: agg[k] for k in ("accuracy", "tool_accuracy", "irrelevance_accuracy", "calls_per_turn")}


def _data(out: Path, base: dict, model: str, mix: dict | None) -> Path:
    """The data of a setting: training rows by template, length limit and mix; the validation rows are the same
    for every setting (drawn before the mix and the length limit apply)."""
    from llamatune.models import resolve_model

    template = demo.MODELS[model]["template"]
    tag = template + ("-mix-" + "-".join(f"{k}{v:g}" for k, v in sorted(mix.items())) if mix else "")
    tag += f"-len{base['max_length']}" if base["max_length"] != demo.DEFAULTS["max_length"] else ""
    d = out / f"data-{tag}"
    args = [base[k] for k in DATA_KEYS]
    if not demo._data_done(d, base["n"], base["n_test"], base["n_val"], base["max_length"], template, mix):
        demo.make_data(d, *args, resolve_model(model), template, mix)
    return d


def _evaluate(gguf: Path, data: Path, out_json: Path, base: dict, template: str) -> tuple[dict, float]:
    from llamatune.evals.toolcall import evaluate

    t0 = time.perf_counter()
    if (res := read_json(out_json, None)) is not None:
        return res, res.get("seconds", 0.0)
    res = evaluate(gguf, data / "val.jsonl", out_json, max_tokens=base["max_tokens"], n_threads=base["threads"],
                   template=template)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(out_json, res, indent=1)
    return res, res["seconds"]


def run_setting(out: Path, base: dict, run: dict) -> dict:
    """Train, export and score one setting (each step cached); returns its row of the sweep table."""
    from llamatune.models import resolve_model

    model, template = run["model"], demo.MODELS[run["model"]]["template"]
    base = {**base, "max_length": int(run.get("max_length", base["max_length"]))}
    data = _data(out, base, model, run.get("mix"))
    run_dir = out / run["name"]
    steps = int(run.get("steps", demo.DEFAULTS["steps"]))
    overrides = [f"--{k}={v}" for k, v in (run.get("set") or {}).items()]
    t0 = time.perf_counter()
    if not demo.train_done(run_dir):
        demo.run_training(data, run_dir, steps, base["max_length"], base["threads"], model, overrides)
    run_json = read_json(run_dir / "run.json")
    train_s = run_json.get("wall_seconds", round(time.perf_counter() - t0, 1))
    if not demo.export_done(run_dir):
        demo.run_export(run_dir, run_dir, f"{model}-{run['name']}", False, template)
    res, eval_s = _evaluate(demo.gguf_of(run_dir, "q8_0"), data, run_dir / "val.json", base, template)
    base_dir = out / f"base-{model}"
    if not demo.export_done(base_dir):
        demo.run_export(Path(resolve_model(model)), base_dir, f"{model}-base", True, template)
    base_res, _ = _evaluate(demo.gguf_of(base_dir, "q8_0"), data, base_dir / "val.json", base, template)
    return {"name": run["name"], "model": model, "steps": steps, "set": run.get("set") or {}, "mix": run.get("mix"),
            "max_length": base["max_length"], "resumed": bool(run_json.get("resumed_from")),
            "val": _val_metrics(res), "base_val": _val_metrics(base_res), "train_seconds": train_s,
            "eval_seconds": eval_s, "n_val": res["aggregate"]["overall"]["n"]}


def markdown(rows: list[dict]) -> str:
    lines = ["| setting | model | steps | recipe changes | val accuracy | tool-call acc. | irrelevance acc. | "
             "calls/turn | train s | eval s |", "|---|---|---|---|---|---|---|---|---|---|"]
    bases = {}
    for r in rows:
        bases.setdefault(r["model"], r["base_val"])
        change = ", ".join(f"{k}={v}" for k, v in r["set"].items()) or "recipe as is"
        if r.get("max_length", demo.DEFAULTS["max_length"]) != demo.DEFAULTS["max_length"]:
            change += f"; rows ≤ {r['max_length']} tokens"
        if r["mix"]:
            change += "; mix " + ", ".join(f"{k}={v:g}" for k, v in r["mix"].items())
        v = r["val"]
        lines.append(f"| {r['name']} | {r['model']} | {r['steps']} | {change} | {_pct(v['accuracy'])} | "
                     f"{_pct(v['tool_accuracy'])} | {_pct(v['irrelevance_accuracy'])} | "
                     f"{v['calls_per_turn']['value']:.2f} | {r['train_seconds']:.0f}{'*' if r.get('resumed') else ''} | "
                     f"{r['eval_seconds']:.0f} |")
    for model, v in bases.items():
        lines.append(f"| *untuned base* | {model} | 0 | – | {_pct(v['accuracy'])} | {_pct(v['tool_accuracy'])} | "
                     f"{_pct(v['irrelevance_accuracy'])} | {v['calls_per_turn']['value']:.2f} | – | – |")
    n = rows[0]["n_val"] if rows else 0
    best = max(rows, key=lambda r: (r["val"]["accuracy"]["value"], -r["train_seconds"])) if rows else None
    if best:
        lines += ["", f"Validation: {n} items of the training template families (Wilson 95% CIs). Best by validation "
                  f"accuracy: **{best['name']}** ({_pct(best['val']['accuracy'])}). Train seconds: the training stage's "
                  "wall time on 2 cores; * = resumed after an interruption, so only the resumed part."]
    return "\n".join(lines)


def has_result(out: Path, run: dict) -> bool:
    """Whether ``run`` was trained and scored, and its model's base too (then :func:`run_setting` only reads)."""
    return (out / run["name"] / "val.json").exists() and (out / f"base-{run['model']}" / "val.json").exists() \
        and demo.train_done(out / run["name"]) and demo.export_done(out / run["name"])


def run_sweep(spec_path: str | Path, out: str | Path = "runs/sweep", only: list[str] | None = None) -> list[dict]:
    spec = load_sweep(spec_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for run in spec["runs"]:
        if only and run["name"] not in only:
            if has_result(out, run):  # the table lists every setting scored so far, not only those run now
                rows.append(run_setting(out, spec["base"], run))
            continue
        print(f"[sweep] {run['name']}: {run['model']}, {run.get('steps')} steps, {run.get('set') or {}}", flush=True)
        rows.append(run_setting(out, spec["base"], run))
        v = rows[-1]["val"]
        print(f"[sweep] {run['name']}: val accuracy {_pct(v['accuracy'])}, tool {_pct(v['tool_accuracy'])}, "
              f"irrelevance {_pct(v['irrelevance_accuracy'])}", flush=True)
        write_json((out / "sweep.json"), rows, indent=1)
        write_text((out / "sweep.md"), markdown(rows) + "\n")
    return rows


def add_arguments(parser) -> None:
    parser.add_argument("sweep", help="sweep YAML (e.g. FuncCall/recipes/demo-sweep.yaml)")
    parser.add_argument("--out", default="runs/sweep", help="output directory (default %(default)s)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these settings (by name)")


def main(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    rows = run_sweep(args.sweep, args.out, args.only)
    print(markdown(rows))
    return 0
