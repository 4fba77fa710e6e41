"""Training throughput of a recipe: step time, tokens/s and the non-pad token fraction of the batches. One JSON line.

    PYTHONPATH=. python bench/train.py [--steps 20] [--recipe FineTome/recipes/tiny-cpu.yaml] [--data DIR] \
        [--key value ...]
    PYTHONPATH=. python bench/train.py --recipe FuncCall/recipes/gemma-270m-demo.yaml --steps 5

Data: ``--data DIR``, else the recipe's ``dataset_path`` when it holds a ``train.jsonl``, else a small generated
set: 60 synthetic function-calling rows (``llamatune.data.funccall``) for a FuncCall recipe, the FineTome fixture
(40 train rows) otherwise.

The recipe's batches are counted as the trainer sees them: ``non_pad_fraction`` is real tokens / token positions
fed to the model (1.0 when batches are padding-free), ``trained_fraction`` the share of them with a label
(assistant tokens). ``padded_non_pad_fraction`` is the same recipe with packing and padding-free switched off
(plain right-padded batches), for comparison. ``tokens_per_s`` is real tokens / wall seconds of
``trainer.train()`` (no eval, no checkpoints); ``step_s`` the median optimizer step after the first
(``first_step_s``). Target: ``non_pad_fraction >= 0.95``.

``speedup_vs_stock``: rows/s of the shipped path (``fast_lm_head: true``, the head and loss at labelled positions
only, :mod:`llamatune.label_head`) ÷ rows/s of TRL's stock loss (``fast_lm_head: false``), the same rows on the same
machine in one run (median step after the first). ``final_loss`` and ``stock_final_loss`` should agree.
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


class CountingCollator:
    """Wraps a data collator and counts real tokens, positions and labelled tokens of every batch."""

    def __init__(self, inner):
        self.inner, self.real, self.positions, self.labelled, self.batches, self.rows = inner, 0, 0, 0, 0, 0

    def __call__(self, examples):
        out = self.inner(examples)
        self.batches += 1
        self.real += sum(len(ex["input_ids"]) for ex in examples)
        self.rows += sum(len(ex.get("seq_lengths") or [0]) for ex in examples)
        self.positions += out["input_ids"].numel()
        self.labelled += int((out["labels"] != -100).sum())
        return out


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
    from llamatune.train import load_recipe

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default=str(REPO / "FineTome" / "recipes" / "tiny-cpu.yaml"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--data", help="a prepared data directory (default: see the module docstring)")
    p.add_argument("--no-compare-stock", dest="compare_stock", action="store_false",
                   help="skip the stock-TRL-loss run (fast_lm_head: false) that speedup_vs_stock divides by")
    args, overrides = p.parse_known_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from llamatune.train import build_trainer, load_recipe

    with tempfile.TemporaryDirectory(prefix="llamatune-bench-") as tmp:
        data, source = bench_data(args.recipe, args.data, Path(tmp) / "data")
        common = ["--dataset_path", str(data), "--max_steps", str(args.steps), "--eval_strategy", "no",
                  "--eval_on_start", "false", "--save_strategy", "no", "--logging_steps", str(max(1, args.steps)),
                  "--disable_tqdm", "true", *overrides]

        def timed(name: str, extra: list[str]):
            recipe = load_recipe(args.recipe, common + ["--output_dir", str(Path(tmp) / name), *extra])
            step_times: list[float] = []
            trainer, info = build_trainer(recipe, callbacks=[StepTimer(step_times)])
            counter = CountingCollator(trainer.data_collator)
            trainer.data_collator = counter
            t0 = time.perf_counter()
            trainer.train()
            return recipe, trainer, info, counter, step_times, time.perf_counter() - t0

        # The stock TRL loss first, then the shipped path, on the same rows (same seed, same order).
        stock = timed("stock", ["--fast_lm_head", "false"]) if args.compare_stock else None
        recipe, trainer, info, counter, step_times, seconds = timed("run", [])

        padded = load_recipe(args.recipe, common + ["--output_dir", str(Path(tmp) / "padded"), "--packing", "false",
                                                    "--padding_free", "false"])
        ptrainer, _ = build_trainer(padded)
        pcount = CountingCollator(ptrainer.data_collator)
        ptrainer.data_collator = pcount
        for _ in ptrainer.get_train_dataloader():
            pass

    def rows_per_s(times: list[float]) -> float:
        return recipe.get("per_device_train_batch_size", 1) * recipe.get("gradient_accumulation_steps", 1) / \
            statistics.median(times[1:] or times)

    result = {
        "bench": "train",
        "recipe": Path(args.recipe).name,
        "model": recipe.get("model_name_or_path"),
        "data": source,
        "max_length": recipe.get("max_length"),
        "batch_size": recipe.get("per_device_train_batch_size"),
        "backend": info["backend"],
        "device": info["device"],
        "torch_threads": torch.get_num_threads(),
        "steps": trainer.state.global_step,
        "padding_free": info["padding_free"],
        "seconds": round(seconds, 2),
        "step_s": round(statistics.median(step_times[1:] or step_times), 3),
        "first_step_s": round(step_times[0], 3) if step_times else None,
        "tokens": counter.real,
        "tokens_per_s": round(counter.real / seconds, 1),
        "trained_tokens_per_s": round(counter.labelled / seconds, 1),
        "non_pad_fraction": round(counter.real / counter.positions, 4),
        "trained_fraction": round(counter.labelled / counter.real, 4),
        "padded_non_pad_fraction": round(pcount.real / pcount.positions, 4),
        "final_loss": round(trainer.state.log_history[-1].get("train_loss", float("nan")), 4),
        "fast_lm_head": info["fast_lm_head"],
        "rows_per_s": round(rows_per_s(step_times), 4),
        "target_non_pad_fraction": 0.95,
    }
    if stock is not None:
        result.update(stock_step_s=round(statistics.median(stock[4][1:] or stock[4]), 3),
                      stock_rows_per_s=round(rows_per_s(stock[4]), 4),
                      stock_final_loss=round(stock[1].state.log_history[-1].get("train_loss", float("nan")), 4),
                      speedup_vs_stock=round(rows_per_s(step_times) / rows_per_s(stock[4]), 3))
    print(json.dumps(result))
    return 0 if result["non_pad_fraction"] >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
