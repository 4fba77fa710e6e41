"""Choose the demo's model and recipe on the validation split, never on the test items.

    llamatune sweep FuncCall/recipes/demo-sweep.yaml              # writes runs/sweep/{sweep.md,sweep.json}
    llamatune sweep FuncCall/recipes/demo-sweep.yaml --only NAME  # one setting

The sweep file lists settings (``runs``), each with a ``model`` (a key of :data:`llamatune.demo.MODELS`),
``steps``, optional recipe overrides under ``set`` (TRL/PEFT field names: ``learning_rate``, ``r``,
``per_device_train_batch_size``…), an optional training category ``mix``, ``breadth: true`` (the breadth families
added to the training rows, :mod:`llamatune.data.funccall_breadth`), ``pairs: SHARE`` (that share of the training
clarify rows built as contrastive pairs, :mod:`llamatune.data.funccall_pairs`), ``max_length`` (training rows longer
than that many tokens are left out; the demo's default otherwise) and ``seeds: [0, 1, 2]`` (one run per training seed,
``NAME-seedS``; the table adds each setting's mean score over its seeds with their range, and the best is chosen by
that mean: one seed of one setting moved the fold by 14 pp, README part 11). Every setting trains with the demo
recipe of its model on the demo's training rows, is exported to GGUF Q8_0, and is scored by ``eval toolcall`` on
``val.jsonl``: new rows of the *training* template families (the demo's test items come from held-out families
and are not read here). The untuned base of every model is scored on the same rows. Each stage is cached like the
demo's, so an interrupted sweep resumes; ``sweep.md`` lists every setting, its validation scores with 95% CIs, and
its training and evaluation time, whatever the outcome.

**Successive halving** (``search: {method: successive_halving, eta: 2, min_steps: 100}`` in the sweep file; the
original study named SHA and skipped it): every setting shares one step budget ``steps`` (its learning-rate
schedule), and is trained first only to ``steps / eta^k`` steps, scored on validation, and only the best
``1/eta`` continue, from their own checkpoint (the same weights an uninterrupted run has at that step), to the next
rung, until one setting has trained its whole budget. Settings are ranked by the selection metric,
:func:`llamatune.sweep_report.selection_score`: the mean of tool-call accuracy and irrelevance accuracy (answers
grounded in a tool result count as irrelevance items), so not calling weighs as much as calling; a tie goes to the
higher overall validation accuracy (:func:`llamatune.sweep_report.selection_key`). Every rung of every setting is
tabled.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import yaml

from llamatune import demo, demo_data
from llamatune.jsonl import read_json, write_json, write_text
from llamatune.report import pct_cell as _pct
from llamatune.sweep_report import markdown, selection_key, selection_score

DATA_KEYS = ("n", "n_test", "n_val", "max_length")
SEARCH_KEYS = {"method", "eta", "min_steps"}


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
        unknown = set(r) - {"name", "model", "steps", "set", "mix", "max_length", "breadth", "pairs", "seeds"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
        if not isinstance(r.get("breadth", False), bool):
            raise ValueError(f"{where}: breadth must be true or false, got {r['breadth']!r}")
        if "pairs" in r and (isinstance(r["pairs"], bool) or not isinstance(r["pairs"], (int, float))
                             or not 0 <= r["pairs"] <= 1):
            raise ValueError(f"{where}: pairs must be a share in [0, 1], got {r['pairs']!r}")
    runs = _expand_seeds(runs, path)
    search = spec.get("search")
    if search is not None and any("setting" in r for r in runs):
        raise ValueError(f"{path}: seeds and successive halving together are not supported (rungs rank runs)")
    if search is not None:
        if not isinstance(search, dict) or search.get("method") != "successive_halving" or set(search) - SEARCH_KEYS:
            raise ValueError(f"{path}: search must be {{method: successive_halving, eta: N, min_steps: N}}, "
                             f"got {search!r}")
        steps = {int(r.get("steps", demo.DEFAULTS["steps"])) for r in runs}
        if len(steps) != 1:
            raise ValueError(f"{path}: successive halving gives every setting the same step budget; runs have "
                             f"steps {sorted(steps)}")
        eta, lo = int(search.get("eta", 2)), int(search.get("min_steps", 1))
        if eta < 2 or lo < 1:
            raise ValueError(f"{path}: search.eta must be >= 2 and search.min_steps >= 1")
        search = {"method": "successive_halving", "eta": eta, "min_steps": lo, "rungs": rungs(steps.pop(), eta, lo)}
    defaults = {k: demo.DEFAULTS[k] for k in (*DATA_KEYS, "max_tokens", "threads", "val_fraction")}
    return {"base": {**defaults, **spec.get("base", {})}, "runs": runs, "search": search}


def _expand_seeds(runs: list[dict], path) -> list[dict]:
    """A setting with ``seeds: [a, b, ...]`` becomes one run per seed, ``NAME-seedA`` with ``set.seed: A``, each
    remembering its ``setting``: training-seed variance is as large as the lever effects measured (README part 11),
    so a setting is judged by its mean over seeds (:func:`llamatune.sweep_report.by_setting`)."""
    out = []
    for i, r in enumerate(runs):
        if "seeds" not in r:
            out.append(r)
            continue
        seeds, where = r["seeds"], f"{path}: runs[{i}]"
        if not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds) \
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds):
            raise ValueError(f"{where}: seeds must be a non-empty list of distinct integers, got {seeds!r}")
        if "seed" in (r.get("set") or {}):
            raise ValueError(f"{where}: give seeds or set.seed, not both")
        plain = {k: v for k, v in r.items() if k != "seeds"}
        out += [{**plain, "name": f"{r['name']}-seed{x}", "set": {**(r.get("set") or {}), "seed": x},
                 "setting": r["name"]} for x in seeds]
    names = [r["name"] for r in out]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: run names repeat once seeds are expanded: {sorted(names)}")
    return out


def rungs(max_steps: int, eta: int, min_steps: int) -> list[int]:
    """The step budgets of successive halving, ascending: ``max_steps`` and its divisions by ``eta`` that stay
    at or above ``min_steps`` (``rungs(600, 2, 150) == [150, 300, 600]``)."""
    out = [int(max_steps)]
    while out[0] // eta >= min_steps and out[0] // eta > 0:
        out.insert(0, out[0] // eta)
    return out


def _val_metrics(result: dict) -> dict:
    agg = result["aggregate"]["overall"]
    return {k: agg[k] for k in ("accuracy", "tool_accuracy", "irrelevance_accuracy", "calls_per_turn")}


def _categories(result: dict) -> dict:
    """Each category's validation items right and in all: ``{category: [k, n]}``."""
    return {c: [m["accuracy"]["k"], m["accuracy"]["n"]] for c, m in result["aggregate"]["by_category"].items()}


def _data(out: Path, base: dict, model: str, mix: dict | None, breadth: bool = False,
          pairs: float | None = None) -> Path:
    """The data of a setting: training rows by template, length limit, mix, breadth and pairs; the validation rows are
    the same for every setting (drawn before the mix, the breadth, the pairs and the length limit apply)."""
    from llamatune.models import resolve_model

    template = demo.MODELS[model]["template"]
    tag = template + ("-mix-" + "-".join(f"{k}{v:g}" for k, v in sorted(mix.items())) if mix else "")
    tag += f"-len{base['max_length']}" if base["max_length"] != demo.DEFAULTS["max_length"] else ""
    args = [base[k] for k in DATA_KEYS]
    vf = base["val_fraction"]
    tag += f"-val{vf:g}" if vf != demo.DEFAULTS["val_fraction"] else ""
    tag += "-breadth" if breadth else ""
    tag += f"-pairs{pairs:g}" if pairs else ""
    d = out / f"data-{tag}"
    if not demo_data.data_done(d, base["n"], base["n_test"], base["n_val"], base["max_length"], template, mix,
                           val_fraction=vf, breadth=breadth, pairs=pairs):
        demo_data.make_data(d, *args, resolve_model(model), template, mix, val_fraction=vf, breadth=breadth,
                            pairs=pairs)
    return d


def _evaluate(gguf: Path, data: Path, out_json: Path, base: dict, template: str) -> tuple[dict, float]:
    """The model's validation result, scored again unless ``out_json`` holds this model's on these very items (a
    validation draw that changed, e.g. ``demo_data.DATA_FORMAT`` 7's, must not be read as the old one's)."""
    from llamatune.evals.toolcall import evaluate, is_current

    t0 = time.perf_counter()
    if is_current(out_json, gguf, data / "val.jsonl", icl=0, max_tokens=base["max_tokens"], template=template):
        res = read_json(out_json)
        return res, res.get("seconds", 0.0)
    res = evaluate(gguf, data / "val.jsonl", out_json, max_tokens=base["max_tokens"], n_threads=base["threads"],
                   template=template)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(out_json, res, indent=1)
    return res, res["seconds"]


def _seed_checkpoint(prev_dir: Path, run_dir: Path, step: int) -> None:
    """Start a rung from the previous rung's checkpoint at ``step`` (copied whole, atomically), unless ``run_dir``
    already holds a checkpoint of its own (a resumed rung)."""
    import shutil

    from llamatune.distributed import last_checkpoint
    from llamatune.jsonl import replacing

    if run_dir.exists() and last_checkpoint(run_dir) is not None:
        return
    src = prev_dir / f"checkpoint-{step}"
    if last_checkpoint(prev_dir) != src:
        raise FileNotFoundError(f"{src}: the checkpoint the next rung continues from is missing")
    with replacing(run_dir / src.name) as tmp:
        shutil.copytree(src, tmp)


def run_setting(out: Path, base: dict, run: dict, stop_at: int | None = None, prev: int | None = None) -> dict:
    """Train, export and score one setting (each step cached); returns its row of the sweep table. With
    ``stop_at`` (successive halving) training stops at that step, the schedule still that of the setting's whole
    budget, in ``out/NAME/steps-STOP_AT``, continuing from the ``prev`` rung's checkpoint."""
    from llamatune.models import resolve_model

    model, template = run["model"], demo.MODELS[run["model"]]["template"]
    serve = demo.MODELS[model]["serve"]
    base = {**base, "max_length": int(run.get("max_length", base["max_length"]))}
    breadth = bool(run.get("breadth", False))
    pairs = run.get("pairs") or None
    data = _data(out, base, model, run.get("mix"), breadth, pairs)
    run_dir = out / run["name"] if stop_at is None else out / run["name"] / f"steps-{stop_at}"
    steps = int(run.get("steps", demo.DEFAULTS["steps"]))
    overrides = [f"--{k}={v}" for k, v in (run.get("set") or {}).items()]
    t0 = time.perf_counter()
    if not demo.train_done(run_dir):
        if prev:
            _seed_checkpoint(out / run["name"] / f"steps-{prev}", run_dir, prev)
        demo.run_training(data, run_dir, steps, base["max_length"], base["threads"], model, overrides,
                          stop_at=stop_at)
    run_json = read_json(run_dir / "run.json")
    train_s = run_json.get("wall_seconds", round(time.perf_counter() - t0, 1))
    if not demo.export_done(run_dir, serve):
        demo.run_export(run_dir, run_dir, f"{model}-{run['name']}", False, template)
    res, eval_s = _evaluate(demo.gguf_of(run_dir, serve), data, run_dir / "val.json", base, template)
    base_dir = out / f"base-{model}"
    if not demo.export_done(base_dir, serve):
        demo.run_export(Path(resolve_model(model)), base_dir, f"{model}-base", True, template)
    base_res, _ = _evaluate(demo.gguf_of(base_dir, serve), data, base_dir / "val.json", base, template)
    val = _val_metrics(res)
    return {"name": run["name"], "setting": run.get("setting") or run["name"], "model": model,
            "steps": stop_at or steps, "budget": steps,
            "global_step": run_json.get("global_step"), "set": run.get("set") or {}, "mix": run.get("mix"),
            "breadth": breadth, "pairs": pairs,
            "max_length": base["max_length"], "resumed": bool(run_json.get("resumed_from")) and not prev,
            "val": val, "val_categories": _categories(res), "base_val": _val_metrics(base_res),
            "train_seconds": train_s, "eval_seconds": eval_s, "n_val": res["aggregate"]["overall"]["n"],
            "score": selection_score(val)}


def halving(spec: dict, out: Path, run_one=None) -> tuple[list[dict], str]:
    """Successive halving over ``spec['runs']`` (see the module doc): the rows of every rung of every setting
    scored, and the name of the setting that trained its whole budget (the winner)."""
    import math

    run_one = run_one or run_setting
    by_name = {r["name"]: r for r in spec["runs"]}
    order = list(by_name)
    alive, rows, budgets = list(order), [], spec["search"]["rungs"]
    for k, b in enumerate(budgets):
        scored = []
        for name in alive:
            print(f"[sweep] rung {k + 1}/{len(budgets)} ({b} steps): {name}", flush=True)
            row = run_one(out, spec["base"], by_name[name], stop_at=b, prev=budgets[k - 1] if k else None)
            row.update(rung=k + 1, survived=False)
            rows.append(row)
            scored.append(row)
            _write(out, rows, spec)
        if k == len(budgets) - 1:
            break
        scored.sort(key=lambda r: (*(-x for x in selection_key(r["val"])), order.index(r["name"])))  # then listed first
        top = {r["name"] for r in scored[: math.ceil(len(scored) / spec["search"]["eta"])]}
        alive = [n for n in order if n in top]
        for r in scored:
            r["survived"] = r["name"] in alive
        _write(out, rows, spec)
    last = [r for r in rows if r["rung"] == len(budgets)]
    winner = max(last, key=lambda r: (*selection_key(r["val"]), -order.index(r["name"])))["name"]
    return rows, winner


def _write(out: Path, rows: list[dict], spec: dict) -> None:
    write_json(out / "sweep.json", rows, indent=1)
    write_text(out / "sweep.md", markdown(rows, spec.get("search"), spec.get("base", {}).get("val_fraction", 0)) + "\n")


def has_result(out: Path, run: dict) -> bool:
    """Whether ``run`` was trained and scored, and its model's base too (then :func:`run_setting` only reads)."""
    return (out / run["name"] / "val.json").exists() and (out / f"base-{run['model']}" / "val.json").exists() \
        and demo.train_done(out / run["name"]) and demo.export_done(out / run["name"])


def run_sweep(spec_path: str | Path, out: str | Path = "runs/sweep", only: list[str] | None = None) -> list[dict]:
    spec = load_sweep(spec_path)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if spec["search"]:
        if only:
            raise ValueError("--only does not apply to a successive-halving sweep (the rungs decide what runs)")
        rows, winner = halving(spec, out)
        print(f"[sweep] successive halving: {winner} trained its whole budget and scored best", flush=True)
        return rows
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
        _write(out, rows, spec)
    return rows


def add_arguments(parser) -> None:
    parser.add_argument("sweep", help="sweep YAML (e.g. FuncCall/recipes/demo-sweep.yaml)")
    parser.add_argument("--out", default="runs/sweep", help="output directory (default %(default)s)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these settings (by name)")


def main(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    rows = run_sweep(args.sweep, args.out, args.only)
    spec = load_sweep(args.sweep)
    print(markdown(rows, spec["search"], spec["base"]["val_fraction"]))
    return 0
