"""Training throughput of a recipe, and its speed-up over fp32 on the same rows. One JSON line.

    PYTHONPATH=. python bench/train.py [--steps 20] [--recipe FineTome/recipes/tiny-cpu.yaml] [--data DIR] \
        [--key value ...]
    PYTHONPATH=. python bench/train.py --recipe FuncCall/recipes/smollm2-135m-demo.yaml --rows 96 --data DIR
    PYTHONPATH=. python bench/train.py --recipe FuncCall/recipes/gemma-270m-demo.yaml --steps 5 --compare-stock

Data: ``--data DIR``, else the recipe's ``dataset_path`` when it holds a ``train.jsonl``, else a small generated
set: 60 synthetic function-calling rows (``llamatune.data.funccall``) for a FuncCall recipe, the FineTome fixture
(40 train rows) otherwise. ``--rows N`` trains on the first N rows for exactly one epoch (every run sees the same
rows, whatever its batching); otherwise every run takes ``--steps`` optimizer steps over the same batches.

**The recipe's path** (what ``llamatune train`` does on this machine: on a CPU with AMX-BF16/AVX512-BF16 bf16 weights
and compute, fp32 LoRA, packed attention; :mod:`llamatune.train_fast`): ``rows_per_s`` and ``tokens_per_s`` are rows
and real tokens ÷ wall seconds of ``trainer.train()``, end to end: the first step, any compilation, the optimizer,
no eval and no checkpoints; ``build_s`` is loading the model and preparing the data before it. torch.compile starts
from an empty cache (``--warm-compile`` keeps the user's), so the compile time counted is a cold start's. ``step_s`` is the
median optimizer step after the first (``first_step_s``); ``rows``/``tokens`` what the timed steps saw.

``speedup_vs_fp32``: rows/s of the recipe's path ÷ rows/s of the same recipe with ``bf16: false`` (fp32 weights
and compute), the same rows in the same batches, one after the other in one process. ``final_loss`` and
``fp32_final_loss`` (the trainer's mean training loss) and ``loss_gap_max`` (the largest per-step relative gap
between the two loss curves) say whether the loss is equal. Target on an AMX CPU: ``>= 2.0``. ``--today`` adds
``speedup_vs_today``: ÷ the path of the demo before this change (fp32, ``sdpa``, unpacked batches of one row), on
the same rows (use it with ``--rows``).

``non_pad_fraction`` is real tokens / token positions fed to the model (1.0 when padding-free),
``trained_fraction`` the share with a label; ``padded_non_pad_fraction`` the recipe without packing (plain
right-padded batches). ``--compare-stock`` adds ``speedup_vs_stock``: rows/s of the label-only head
(:mod:`llamatune.label_head`) ÷ TRL's stock loss (``fast_lm_head: false``), same rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FP32 = ["--bf16", "false", "--dtype", "float32"]
TODAY = FP32 + ["--packing", "false", "--padding_free", "false", "--per_device_train_batch_size", "1",
                "--gradient_accumulation_steps", "1", "--attn_implementation", "sdpa"]


class CountingCollator:
    """Wraps a data collator and records rows, real tokens, positions and labelled tokens of every batch (the
    dataloader may collate one batch ahead of the last step: :meth:`totals` counts the first ``n`` only)."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []

    def __call__(self, examples):
        out = self.inner(examples)
        rows = sum(len(ex.get("seq_lengths") or [0]) for ex in examples)  # packed: the rows inside each pack
        self.seen.append((rows, sum(len(ex["input_ids"]) for ex in examples), out["input_ids"].numel(),
                          int((out["labels"] != -100).sum())))
        return out

    def totals(self, n: int | None = None) -> dict:
        cols = list(zip(*self.seen[:n])) or [(), (), (), ()]
        return dict(zip(("rows", "real", "positions", "labelled"), (sum(c) for c in cols)))


def StepTimer(times: list[float]):
    """A TrainerCallback appending the wall time of each optimizer step to ``times``."""
    from transformers import TrainerCallback

    class _Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    return _Timer()


def bench_data(recipe_path: str, data: str | None, scratch: Path) -> tuple[Path, str]:
    """The data directory to train on and where it came from (see the module docstring)."""
    from llamatune.recipe import load_recipe

    if data:
        return Path(data), "given"
    recipe = load_recipe(recipe_path)
    ds = recipe.get("dataset_path")
    if ds:
        for cand in (Path(ds), REPO / ds):
            if (cand / "train.jsonl").exists():
                with open(cand / "train.jsonl", "rb") as f:
                    rows = sum(1 for _ in f)
                return cand, f"{ds} ({rows} rows)"
    if "funccall" in f"{recipe_path} {ds} {recipe.get('run_name')}".lower():
        from llamatune.data.funccall import build_dataset

        build_dataset(scratch, 60, seed=0)
        return scratch, "generated funccall (60 rows)"
    from llamatune.data.finetome import prepare

    prepare(str(REPO / "tests" / "fixtures" / "finetome_sample.jsonl"), scratch, 40, 12, max_bad_fraction=0.2)
    return scratch, "finetome fixture (40 rows)"


def first_rows(data: Path, n: int, out: Path) -> Path:
    """A data directory holding the first ``n`` training rows of ``data``."""
    lines = (data / "train.jsonl").read_text(encoding="utf-8").splitlines()
    if len(lines) < n:
        raise ValueError(f"{data / 'train.jsonl'}: {len(lines)} rows, fewer than --rows {n}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("\n".join(lines[:n]) + "\n", encoding="utf-8")
    return out


def timed_run(recipe_path: str, common: list[str], out: Path, extra: list[str]) -> dict:
    """Build and train one configuration; what it saw, how long it took and its loss curve."""
    from llamatune.recipe import load_recipe
    from llamatune.train import build_trainer

    recipe = load_recipe(recipe_path, common + ["--output_dir", str(out), *extra])
    step_times: list[float] = []
    t0 = time.perf_counter()
    trainer, info = build_trainer(recipe, callbacks=[StepTimer(step_times)])
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    t1 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t1
    steps = trainer.state.global_step
    seen = counter.totals(steps * trainer.args.gradient_accumulation_steps)
    if not seen["rows"]:  # unpacked: one row per example
        seen["rows"] = steps * trainer.args.gradient_accumulation_steps * trainer.args.per_device_train_batch_size
    history = trainer.state.log_history
    return {"recipe": recipe, "info": info, "steps": steps, "build_s": t1 - t0, "seconds": seconds,
            "step_times": step_times, **seen, "losses": [h["loss"] for h in history if "loss" in h],
            "train_loss": history[-1].get("train_loss", float("nan"))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default=str(REPO / "FineTome" / "recipes" / "tiny-cpu.yaml"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rows", type=int, default=None, help="train on the first N rows, one epoch (instead of --steps)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--data", help="a prepared data directory (default: see the module docstring)")
    p.add_argument("--no-compare-fp32", dest="compare_fp32", action="store_false",
                   help="skip the fp32 run that speedup_vs_fp32 divides by")
    p.add_argument("--today", action="store_true", help="add the demo's earlier path (fp32, sdpa, unpacked, batch 1)")
    p.add_argument("--compare-stock", action="store_true", help="add the stock-TRL-loss run (fast_lm_head: false)")
    p.add_argument("--no-compare-stock", dest="compare_stock", action="store_false", help=argparse.SUPPRESS)
    p.add_argument("--warm-compile", action="store_true",
                   help="keep torch.compile's cache (default: a fresh one, so the compile time is a cold start's)")
    args, overrides = p.parse_known_args(argv)

    import os

    if not args.warm_compile:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="llamatune-bench-inductor-")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from llamatune.provenance import cpu_info
    from llamatune.recipe import load_recipe

    with tempfile.TemporaryDirectory(prefix="llamatune-bench-") as tmp:
        data, source = bench_data(args.recipe, args.data, Path(tmp) / "data")
        length = ["--max_steps", str(args.steps)]
        if args.rows:
            data, source = first_rows(data, args.rows, Path(tmp) / "rows"), f"{source}, first {args.rows} rows"
            length = ["--max_steps", "-1", "--num_train_epochs", "1"]
        common = ["--dataset_path", str(data), *length, "--eval_strategy", "no", "--eval_on_start", "false",
                  "--eval_samples", "0", "--save_strategy", "no", "--logging_steps", "1", "--disable_tqdm", "true",
                  *overrides]
        run = timed_run(args.recipe, common, Path(tmp) / "run", [])
        fp32 = timed_run(args.recipe, common, Path(tmp) / "fp32", FP32) if args.compare_fp32 else None
        today = timed_run(args.recipe, common, Path(tmp) / "today", TODAY) if args.today else None
        stock = timed_run(args.recipe, common, Path(tmp) / "stock", ["--fast_lm_head", "false"]) \
            if args.compare_stock else None

        from llamatune.train import build_trainer

        padded = load_recipe(args.recipe, common + ["--output_dir", str(Path(tmp) / "padded"), "--packing", "false",
                                                    "--padding_free", "false"])
        ptrainer, _ = build_trainer(padded)
        pcount = CountingCollator(ptrainer.data_collator)
        ptrainer.data_collator = pcount
        for _ in ptrainer.get_train_dataloader():
            pass

    def rows_per_s(r: dict) -> float:
        return r["rows"] / r["seconds"]

    def step_s(r: dict) -> float:
        return statistics.median(r["step_times"][1:] or r["step_times"])

    recipe, info = run["recipe"], run["info"]
    result = {
        "bench": "train",
        "recipe": Path(args.recipe).name,
        "model": recipe.get("model_name_or_path"),
        "data": source,
        "cpu": cpu_info()["model"],
        "precision": info["precision"]["compute"],
        "precision_reason": info["precision"]["reason"],
        "attn_implementation": info["attn_implementation"],
        "max_length": recipe.get("max_length"),
        "batch_size": recipe.get("per_device_train_batch_size"),
        "backend": info["backend"],
        "device": info["device"],
        "torch_threads": torch.get_num_threads(),
        "steps": run["steps"],
        "padding_free": info["padding_free"],
        "rows": run["rows"],
        "tokens": run["real"],
        "build_s": round(run["build_s"], 2),
        "seconds": round(run["seconds"], 2),
        "rows_per_s": round(rows_per_s(run), 4),
        "tokens_per_s": round(run["real"] / run["seconds"], 1),
        "trained_tokens_per_s": round(run["labelled"] / run["seconds"], 1),
        "step_s": round(step_s(run), 3),
        "first_step_s": round(run["step_times"][0], 3) if run["step_times"] else None,
        "non_pad_fraction": round(run["real"] / run["positions"], 4),
        "trained_fraction": round(run["labelled"] / run["real"], 4),
        "padded_non_pad_fraction": round(pcount.totals()["real"] / pcount.totals()["positions"], 4),
        "final_loss": round(run["train_loss"], 4),
        "fast_lm_head": info["fast_lm_head"],
        "target_non_pad_fraction": 0.95,
    }
    if fp32 is not None:
        if (fp32["rows"], fp32["real"]) != (run["rows"], run["real"]):
            raise RuntimeError(f"the fp32 run saw other rows ({fp32['rows']} rows, {fp32['real']} tokens) than "
                               f"the recipe's ({run['rows']}, {run['real']})")
        gaps = [abs(a - b) / abs(b) for a, b in zip(run["losses"], fp32["losses"]) if b]
        result.update(fp32_seconds=round(fp32["seconds"], 2), fp32_rows_per_s=round(rows_per_s(fp32), 4),
                      fp32_tokens_per_s=round(fp32["real"] / fp32["seconds"], 1), fp32_step_s=round(step_s(fp32), 3),
                      fp32_final_loss=round(fp32["train_loss"], 4), loss_gap_max=round(max(gaps), 4),
                      speedup_vs_fp32=round(rows_per_s(run) / rows_per_s(fp32), 3), target_speedup_vs_fp32=2.0)
    if today is not None:
        result.update(today_rows=today["rows"], today_rows_per_s=round(rows_per_s(today), 4),
                      today_tokens_per_s=round(today["real"] / today["seconds"], 1),
                      today_final_loss=round(today["train_loss"], 4),
                      speedup_vs_today=round(rows_per_s(run) / rows_per_s(today), 3))
    if stock is not None:
        result.update(stock_step_s=round(step_s(stock), 3), stock_rows_per_s=round(rows_per_s(stock), 4),
                      stock_final_loss=round(stock["train_loss"], 4),
                      speedup_vs_stock=round(rows_per_s(run) / rows_per_s(stock), 3))
    print(json.dumps(result))
    return 0 if result["non_pad_fraction"] >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
