"""Plots of training runs: the loss curve of a run from its ``trainer_state.json``.

    python -m llamatune.plots runs/tiny/trainer_state.json runs/tiny/loss.png
"""

from __future__ import annotations

import sys
from pathlib import Path

from llamatune.jsonl import read_json


def loss_curves(trainer_state_path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{"loss": [(step, value)...], "eval_loss": [...]}`` from a Trainer's ``log_history``."""
    state = read_json(trainer_state_path, expect=dict)
    curves: dict[str, list[tuple[int, float]]] = {"loss": [], "eval_loss": []}
    for entry in state.get("log_history", []):
        for key in curves:
            if key in entry and "step" in entry:
                curves[key].append((int(entry["step"]), float(entry[key])))
    return curves


def plot_loss(trainer_state_path: str | Path, out_png: str | Path, title: str | None = None) -> Path:
    """Training loss and held-out eval loss against the optimizer step, written to ``out_png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = loss_curves(trainer_state_path)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if curves["loss"]:
        ax.plot(*zip(*curves["loss"]), label="train loss (assistant tokens)", lw=1.2)
    if curves["eval_loss"]:
        ax.plot(*zip(*curves["eval_loss"]), "o-", label="eval loss (held-out rows)", lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title or Path(trainer_state_path).parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


if __name__ == "__main__":
    print(plot_loss(sys.argv[1], sys.argv[2]))
