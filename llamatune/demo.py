"""The offline end-to-end demo on an embedded small model (SmolLM2-135M by default): data → LoRA → GGUF → eval.

    llamatune demo                       # writes runs/demo/ (report.md, report.json, report.png)
    llamatune demo --smoke               # a handful of steps and items (the slow test runs this)
    make demo                            # installs like `make test`, then runs `llamatune demo`

Stages (each prints one status line and is skipped when its outputs exist, so a rerun resumes):

1. ``data``: the FuncCall generator (``--n`` rows, seed 0) into ``data/full/``; ``data/train.jsonl`` keeps the training
   rows that fit ``--max-length`` tokens, ``data/val.jsonl`` ``--n-val`` rows of the validation fold (families held out
   of training), ``data/eval.jsonl`` a stratified ``--n-test`` subset of the test split's original categories,
   ``data/eval_new.jsonl`` one of its new ones; it prints rows generated, kept, mean tokens per category, and packs;
2. ``base``: the embedded model's fp32 HF directory (dequantized once, cached in $LLAMATUNE_CACHE);
3. ``train``: LoRA SFT with the model's demo recipe (packed rows, bf16 on CPUs with AMX-BF16/AVX512-BF16) into
   ``tuned/`` (resumes from the last checkpoint when interrupted);
4. ``export``: base and tuned to GGUF f16 and Q8_0 (``base/gguf``, ``tuned/gguf``) with their ``fidelity.json``;
5. ``eval``: ``eval toolcall`` (f16) on the same test items, greedy, same threads, ``--batch`` sequences decoded
   together: ``base``, ``icl`` (``--icl`` few-shot examples), ``tuned``, then base and tuned with constrained calls
   (items whose raw output opened no call keep it: ``--reuse``), into ``results/``; the same on ``eval_new.jsonl``
   into ``results/new_*.json``; generations are cached per item;
6. ``report``: ``report.md``, ``report.json``, ``report.png`` and ``data/card.md`` (:mod:`llamatune.demo_report`).

``gguf/`` links the two served GGUFs (the model's ``serve`` quant) for the Space: ``python space/app.py --models-dir runs/demo/gguf``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from llamatune.demo_data import N_TEST_NEW, VAL, data_done, make_data
from llamatune.jsonl import read_json, write_json, write_text

RECIPES = Path(__file__).resolve().parent.parent / "FuncCall" / "recipes"
# The embedded models the demo can tune, each with its template and recipe (README, "Choosing the demo model").
MODELS = {
    # serve: the GGUF evaluated and served (of f16 and Q8_0, both checked: on 135M, Q8_0 flips 3-6% of the fidelity
    # prompt's top-1 tokens, f16 none); mix: training category shares chosen on the fold (None: the generator's
    # default, chosen on the fold by demo-mix.yaml, README part 8); breadth: the breadth families in training (False:
    # rejected on the fold, part 9); pairs: the clarify rows' share built as contrastive pairs (None: rejected, part 10)
    "smollm2-135m": {"template": "smollm2", "recipe": RECIPES / "smollm2-135m-demo.yaml",
                     "label": "SmolLM2-135M-Instruct", "serve": "f16", "mix": None, "breadth": False, "pairs": None},
    "gemma-3-270m": {"template": "gemma-3", "recipe": RECIPES / "gemma-270m-demo.yaml", "label": "gemma-3-270m (base)",
                     "serve": "q8_0"},
}
# max_length 1024: each category keeps >= 95% of its rows (packed); steps: each seen ~once; batch None: DECODE_BATCH
DEFAULTS = {"model": "smollm2-135m", "n": 1500, "n_test": 120, "n_val": 240, "steps": 80, "max_length": 1024, "icl": 2,
            "max_tokens": 64, "threads": 2, "n_test_new": N_TEST_NEW, "batch": None, "val_fraction": VAL}
SMOKE = {"n": 200, "n_test": 5, "n_val": 5, "steps": 4, "max_length": 384, "icl": 1, "max_tokens": 24, "n_test_new": 4}
CRASH_ENV = "LLAMATUNE_DEMO_EXIT_AFTER_SAVE"  # tests: hard-exit after the first checkpoint is saved


class Stages:
    """Runs stages in order, times them and records ``stage_seconds`` in ``stages.json`` (kept across reruns:
    a cached stage keeps the seconds it took when it ran)."""

    def __init__(self, out: Path):
        self.path = out / "stages.json"
        self.seconds: dict = read_json(self.path, {})

    def run(self, name: str, done: bool, fn, *args, **kwargs):
        say = lambda msg: print(f"[demo] stage {name}: {msg}", flush=True)  # noqa: E731
        if done:
            say(f"done (cached, {self.seconds.get(name, 0):.0f} s when it ran)")
            return None
        say("running ...")
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - t0, 1)
        write_json(self.path, self.seconds, indent=1)
        say(f"done in {self.seconds[name]:.0f} s")
        return result


# --- stage 1: data ---------------------------------------------------------------------------------------

# --- stage 3: training -----------------------------------------------------------------------------------

def _exit_after_save_callback():
    from transformers import TrainerCallback

    class ExitAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            print(f"[demo] {CRASH_ENV} set: exiting after checkpoint-{state.global_step}", flush=True)
            os._exit(3)

    return ExitAfterSave()


def train_done(run_dir: Path) -> bool:
    return (run_dir / "adapter" / "adapter_model.safetensors").exists() and \
        read_json(run_dir / "run.json", {}).get("status") == "done"


def _stop_at_callback(step: int):
    """Stop training after ``step`` (saving a checkpoint there); the schedule stays that of ``max_steps``."""
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= step:
                control.should_save = True
                control.should_training_stop = True

    return StopAt()


def demo_recipe(data_dir: Path, run_dir: Path, steps: int, max_length: int, model: str,
                overrides: list[str] = ()) -> dict:
    """The model's demo recipe with the demo's data, output, step budget and length (what ``run.json`` records)."""
    from llamatune.recipe import load_recipe

    save = max(1, min(20, steps // 3))  # a checkpoint every third of the run
    return load_recipe(MODELS[model]["recipe"], [
        f"--dataset_path={data_dir}", f"--output_dir={run_dir}", f"--max_steps={steps}", f"--save_steps={save}",
        f"--max_length={max_length}", f"--warmup_steps={min(5, steps // 4)}", *overrides])


def run_training(data_dir: Path, run_dir: Path, steps: int, max_length: int, threads: int, model: str,
                 overrides: list[str] = (), stop_at: int | None = None) -> Path:
    """LoRA SFT with the model's demo recipe for ``steps`` steps (the schedule); with ``stop_at`` (successive
    halving) training ends at that step with a checkpoint there, and the next rung resumes from it."""
    from llamatune.train import train

    recipe = demo_recipe(data_dir, run_dir, steps, max_length, model, overrides)
    import torch  # a training dependency (train.py needs it too)

    torch.set_num_threads(threads)
    callbacks = [_exit_after_save_callback()] if os.environ.get(CRASH_ENV) else []
    if stop_at is not None and stop_at < steps:
        callbacks.append(_stop_at_callback(stop_at))
    return train(recipe, run_dir, resume=True, callbacks=callbacks or None)


# --- stage 4: export -------------------------------------------------------------------------------------

def export_done(out: Path, must_pass: str | None = None) -> bool:
    """The export under ``out`` finished (and, with ``must_pass``, that quant passed its fidelity check)."""
    if not ((out / "fidelity.json").exists() and any((out / "gguf").glob("*-q8_0.gguf"))):
        return False
    if not must_pass:
        return True
    try:
        rep = json.loads((out / "fidelity.json").read_text(encoding="utf-8"))["reports"][must_pass]
    except (ValueError, KeyError, TypeError):
        return False  # torn or from another export: do it again
    return bool(rep.get("pass"))


def run_export(source: Path, out: Path, name: str, plain: bool, template: str, must_pass: str | None = None) -> dict:
    """Export f16 + Q8_0 and check both; every result is reported, and a failed check of ``must_pass`` (the quant
    the demo evaluates and serves) stops the demo with :class:`~llamatune.export.FidelityError`."""
    from llamatune.export import FidelityError, export, export_base

    if plain:
        res = export_base(source, out, ("q8_0",), name=name, template=template, strict=False)
    else:
        res = export(source, ("q8_0",), name=name, template=template, strict=False)
    rep = (res.get("fidelity") or {}).get(must_pass) if must_pass else None
    if rep is not None and not rep.get("pass"):
        raise FidelityError(f"{name}: the {must_pass} GGUF the demo evaluates and serves failed its fidelity check: "
                            + "; ".join(rep.get("failures") or ["?"]) + f" (details: {res.get('fidelity_path')})")
    return res


def gguf_of(out: Path, quant: str = "q8_0") -> Path:
    """The ``quant`` GGUF that export wrote under ``out/gguf`` (export writes f16, then quantizes it)."""
    found = sorted((out / "gguf").glob(f"*-{quant}.gguf"))
    if not found:
        raise FileNotFoundError(f"{out / 'gguf'}: no *-{quant}.gguf (rerun the export stage)")
    return found[0]


def link_ggufs(out: Path, ggufs: dict[str, Path]) -> Path:
    d = out / "gguf"
    d.mkdir(exist_ok=True)
    for name, target in ggufs.items():
        link = d / f"{name}.gguf"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(target, d))
    return d


# --- the pipeline ----------------------------------------------------------------------------------------

def run_demo(out: str | Path = "runs/demo", *, model: str, n: int, n_test: int, n_val: int, steps: int,
             max_length: int, icl: int, max_tokens: int, threads: int, n_test_new: int = N_TEST_NEW,
             batch: int | None = None, constrained: bool = True, val_fraction: float = VAL) -> dict:
    """Run (or resume) every stage (``constrained``: also base and tuned with grammar-constrained calls); returns the report dict also written to ``out/report.json``."""
    from llamatune import demo_report
    from llamatune.distributed import set_aside_stale
    from llamatune.evals.toolcall import decode_batch, evaluate, is_current
    from llamatune.models import resolve_model
    from llamatune.provenance import cpu_info

    if model not in MODELS:
        raise ValueError(f"--model {model!r}: the demo tunes one of {', '.join(MODELS)}")
    template = MODELS[model]["template"]
    (out := Path(out)).mkdir(parents=True, exist_ok=True)
    owner = out / "demo_model.txt"
    if owner.exists() and owner.read_text().strip() != model:
        raise ValueError(f"{out} holds a demo of {owner.read_text().strip()}; give --model {model} its own --out")
    write_text(owner, model + "\n")
    st = Stages(out)
    t_all = time.perf_counter()
    st.run("base", "base" in st.seconds, resolve_model, model)
    hf_dir = resolve_model(model)  # built by the stage above (or before): a cache lookup
    data = out / "data"
    kw = {"n_test_new": n_test_new, "val_fraction": val_fraction, "mix": MODELS[model].get("mix"),
          "breadth": MODELS[model].get("breadth", False), "pairs": MODELS[model].get("pairs")}
    st.run("data", data_done(data, n, n_test, n_val, max_length, template, **kw), make_data, data, n, n_test, n_val,
           max_length, hf_dir, template, **kw)
    run_dir = out / "tuned"
    set_aside_stale(run_dir, demo_recipe(data, run_dir, steps, max_length, model), data)  # an edited recipe: train again
    st.run("train", train_done(run_dir), run_training, data, run_dir, steps, max_length, threads, model)
    serve = MODELS[model]["serve"]
    st.run("export_base", export_done(out / "base", serve), run_export, Path(hf_dir), out / "base", f"{model}-base", True,
           template, serve)
    st.run("export_tuned", export_done(run_dir, serve), run_export, run_dir, run_dir, f"{model}-funccall", False, template,
           serve)
    ggufs = {"base": gguf_of(out / "base", serve), "tuned": gguf_of(run_dir, serve)}
    link_ggufs(out, {f"{model}-base-{serve}": ggufs["base"], f"{model}-funccall-{serve}": ggufs["tuned"]})
    res = out / "results"
    batch = decode_batch(ggufs["base"], batch)  # sequences decoded together, the same for every evaluation
    sets = [("", "eval.jsonl")] + ([("new_", "eval_new.jsonl")] if n_test_new else [])  # results/{,new_}{label}.json
    # and calls decoded under the tools' lazy grammar (a serving feature; raw quality first; --reuse: see stage 5)
    systems = [("base", ggufs["base"], 0, False), ("icl", ggufs["base"], icl, False), ("tuned", ggufs["tuned"], 0, False)]
    if constrained:
        systems += [("base_constrained", ggufs["base"], 0, True), ("tuned_constrained", ggufs["tuned"], 0, True)]
    for prefix, items in sets:
        for label, gguf, k, constrain in systems:
            path = res / f"{prefix}{label}.json"
            done = is_current(path, gguf, data / items, icl=k, max_tokens=max_tokens, template=template, limit=None,
                              decode_batch=batch, **({"constrained": True} if constrain else {}))
            st.run(f"eval_{prefix}{label}", done, evaluate, gguf, data / items, path, icl=k, max_tokens=max_tokens,
                   n_threads=threads, template=template, batch=batch, constrain=constrain,
                   reuse=res / f"{prefix}{label.removesuffix('_constrained')}.json" if constrain else None)
    report = st.run("report", False, demo_report.write_report, out,
                    meta={"model": model, "model_label": MODELS[model]["label"], "quant": serve, "n": n, "n_test": n_test,
                          "n_test_new": n_test_new, "steps": steps, "max_length": max_length, "icl": icl,
                          "max_tokens": max_tokens, "threads": threads, "decode_batch": batch, "cpu": cpu_info(),
                          "constrained": constrained, "wall_seconds_this_run": round(time.perf_counter() - t_all, 1)})
    return report


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output directory (default %(default)s)")
    parser.add_argument("--smoke", action="store_true", help="a handful of steps and test items (minutes)")
    parser.add_argument("--model", default=None, choices=sorted(MODELS),
                        help=f"the embedded model to tune (default {DEFAULTS['model']}, chosen on validation)")
    parser.add_argument("--n", type=int, default=None, help=f"generated rows, train + test (default {DEFAULTS['n']})")
    parser.add_argument("--n-test", type=int, default=None, help=f"held-out test items (default {DEFAULTS['n_test']})")
    parser.add_argument("--n-val", type=int, default=None,
                        help=f"validation items, of the validation fold (default {DEFAULTS['n_val']})")
    parser.add_argument("--val-fraction", type=float, default=None, help="share of each group's template families "
                        f"held out of training as the validation fold (default {VAL:g}; 0: none)")
    parser.add_argument("--steps", type=int, default=None, help=f"LoRA steps (default {DEFAULTS['steps']})")
    parser.add_argument("--max-length", type=int, default=None,
                        help=f"training rows longer than this (tokens) are left out (default {DEFAULTS['max_length']})")
    parser.add_argument("--icl", type=int, default=None, help=f"few-shot examples for base+ICL (default {DEFAULTS['icl']})")
    parser.add_argument("--max-tokens", type=int, default=None, help=f"new tokens per test item (default {DEFAULTS['max_tokens']})")
    parser.add_argument("--threads", type=int, default=None, help=f"CPU threads (default {DEFAULTS['threads']})")
    parser.add_argument("--n-test-new", type=int, default=None,
                        help="test items of the new categories, data/eval_new.jsonl "
                        f"(default {DEFAULTS['n_test_new']})")
    parser.add_argument("--no-constrained", dest="constrained", action="store_false",
                        help="skip the evaluations with grammar-constrained calls (base/tuned + constrained)")
    parser.add_argument("--batch", type=int, default=None,
                        help="sequences the evaluations decode together (default: llamatune.generate.DECODE_BATCH)")


def main(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Threads that sleep instead of spinning while they wait: on a shared or busy CPU, spinning OpenMP
    # threads made LoRA steps ~8x slower (54 s instead of 6.5 s on 2 cores with one other busy process).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cfg = {**DEFAULTS, **(SMOKE if args.smoke else {})}
    for key in DEFAULTS:
        if getattr(args, key, None) is not None:
            cfg[key] = getattr(args, key)
    report = run_demo(args.out, **cfg, constrained=getattr(args, "constrained", True))
    out = Path(args.out)
    print(f"\n{(out / 'report.md').read_text(encoding='utf-8')}")
    print(f"[demo] report: {out / 'report.md'} ({out / 'report.json'}, {out / 'report.png'}); "
          f"total {sum(report['stage_seconds'].values()):.0f} s of stages")
    print(f"[demo] serve base and tuned in the Space:  python space/app.py --models-dir {out / 'gguf'}")
    return 0
