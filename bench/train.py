"""Training throughput on the tiny recipe: tokens/s and the non-pad token fraction of the batches. One JSON line.

    PYTHONPATH=. python bench/train.py [--steps 20] [--recipe FineTome/recipes/tiny-cpu.yaml] [--key value ...]

The recipe's batches are counted as the trainer sees them: ``non_pad_fraction`` is real tokens / token positions
fed to the model (1.0 when batches are padding-free), ``trained_fraction`` the share of them with a label
(assistant tokens). ``padded_non_pad_fraction`` is the same recipe with packing and padding-free switched off
(plain right-padded batches), for comparison. ``tokens_per_s`` is real tokens / wall seconds of
``trainer.train()`` (no eval, no checkpoints). Target: ``non_pad_fraction >= 0.95``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class CountingCollator:
    """Wraps a data collator and counts real tokens, positions and labelled tokens of every batch."""

    def __init__(self, inner):
        self.inner, self.real, self.positions, self.labelled, self.batches = inner, 0, 0, 0, 0

    def __call__(self, examples):
        out = self.inner(examples)
        self.batches += 1
        self.real += sum(len(ex["input_ids"]) for ex in examples)
        self.positions += out["input_ids"].numel()
        self.labelled += int((out["labels"] != -100).sum())
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default=str(REPO / "FineTome" / "recipes" / "tiny-cpu.yaml"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args, overrides = p.parse_known_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from llamatune.data.finetome import prepare
    from llamatune.train import build_trainer, load_recipe

    with tempfile.TemporaryDirectory(prefix="llamatune-bench-") as tmp:
        data = Path(tmp) / "data"
        prepare(str(REPO / "tests" / "fixtures" / "finetome_sample.jsonl"), data, 40, 12, max_bad_fraction=0.2)
        common = ["--dataset_path", str(data), "--max_steps", str(args.steps), "--eval_strategy", "no",
                  "--eval_on_start", "false", "--save_strategy", "no", "--logging_steps", str(max(1, args.steps)),
                  "--disable_tqdm", "true", *overrides]
        recipe = load_recipe(args.recipe, common + ["--output_dir", str(Path(tmp) / "run")])
        trainer, info = build_trainer(recipe)
        counter = CountingCollator(trainer.data_collator)
        trainer.data_collator = counter
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0

        padded = load_recipe(args.recipe, common + ["--output_dir", str(Path(tmp) / "padded"), "--packing", "false",
                                                    "--padding_free", "false"])
        ptrainer, _ = build_trainer(padded)
        pcount = CountingCollator(ptrainer.data_collator)
        ptrainer.data_collator = pcount
        for _ in ptrainer.get_train_dataloader():
            pass

    result = {
        "bench": "train",
        "recipe": Path(args.recipe).name,
        "backend": info["backend"],
        "device": info["device"],
        "torch_threads": torch.get_num_threads(),
        "steps": trainer.state.global_step,
        "padding_free": info["padding_free"],
        "seconds": round(seconds, 2),
        "tokens": counter.real,
        "tokens_per_s": round(counter.real / seconds, 1),
        "trained_tokens_per_s": round(counter.labelled / seconds, 1),
        "non_pad_fraction": round(counter.real / counter.positions, 4),
        "trained_fraction": round(counter.labelled / counter.real, 4),
        "padded_non_pad_fraction": round(pcount.real / pcount.positions, 4),
        "final_loss": round(trainer.state.log_history[-1].get("train_loss", float("nan")), 4),
        "target_non_pad_fraction": 0.95,
    }
    print(json.dumps(result))
    return 0 if result["non_pad_fraction"] >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
