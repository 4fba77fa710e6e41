"""Plots of training runs from their ``trainer_state.json``: the loss curve (SFT), the rewards (GRPO).

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


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(7, 4), dpi=110)


def _save(plt, fig, ax, ylabel: str, title: str, out_png: str | Path) -> Path:
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def plot_loss(trainer_state_path: str | Path, out_png: str | Path, title: str | None = None) -> Path:
    """Training loss and held-out eval loss against the optimizer step, written to ``out_png``."""
    curves = loss_curves(trainer_state_path)
    plt, fig, ax = _figure()
    if curves["loss"]:
        ax.plot(*zip(*curves["loss"]), label="train loss (assistant tokens)", lw=1.2)
    if curves["eval_loss"]:
        ax.plot(*zip(*curves["eval_loss"]), "o-", label="eval loss (held-out rows)", lw=1.5)
    return _save(plt, fig, ax, "cross-entropy (nats/token)", title or Path(trainer_state_path).parent.name, out_png)


def plot_rewards(trainer_state_path: str | Path, out_png: str | Path, title: str | None = None) -> Path:
    """A GRPO run's mean reward and share correct per logged step (and their running means over 10 steps)."""
    logged = [h for h in read_json(trainer_state_path, expect=dict).get("log_history", []) if "reward" in h]
    plt, fig, ax = _figure()
    for key, label in (("reward", "mean reward"), ("correct", "share correct (scorer)")):
        pts = [(h["step"], h[key]) for h in logged if key in h]
        if pts:
            steps, vals = zip(*pts)
            line, = ax.plot(steps, vals, lw=0.8, alpha=0.45)
            run = [sum(vals[max(0, i - 9):i + 1]) / len(vals[max(0, i - 9):i + 1]) for i in range(len(vals))]
            ax.plot(steps, run, lw=1.8, color=line.get_color(), label=f"{label}, running mean")
    return _save(plt, fig, ax, "reward / share", title or Path(trainer_state_path).parent.name, out_png)

if __name__ == "__main__":
    print(plot_loss(sys.argv[1], sys.argv[2]))
