"""Seconds per GRPO step (llamatune.rl) on a CPU, TRL's stock head vs the completion-only head, side by side.

One prompt per step × ``--num-generations`` completions of at most ``--max-completion-length`` tokens, from the SFT
run's adapter, on the same prompts for both heads (training-family prompts dressed like the validation items, none
equal to an ``--exclude`` prompt). TRL logs each step's wall time (``step_time``); the first step of each run is a
warm-up and is left out. Prints one JSON line.

    PYTHONPATH=. python bench/grpo_step.py --sft-run /tmp/grpo-demo/tuned --exclude /tmp/grpo-demo/data [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sft-run", required=True, help="a finished SFT run directory (adapter/, run.json)")
    p.add_argument("--exclude", nargs="*", default=[], help="validation/test JSONL files or directories")
    p.add_argument("--steps", type=int, default=4, help="timed steps per head (after one warm-up step)")
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--max-completion-length", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--heads", default="stock,fast", help="which heads to time: stock, fast or both")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="recipe overrides for every run (e.g. bf16=true prompt_style=train)")
    a = p.parse_args(argv)

    import torch

    from llamatune.provenance import cpu_info
    from llamatune.rl import exclusion_rows, grpo, prompt_rows

    torch.set_num_threads(a.threads)
    load = os.getloadavg()
    extra = [f"--{kv}" for kv in a.set]
    style = next((kv.split("=", 1)[1] for kv in a.set if kv.startswith("prompt_style=")), "eval")
    prompts = prompt_rows(a.steps + 1, seed=0, exclude=exclusion_rows(a.exclude), style=style)
    out = {"bench": "grpo_step", "sft_run": a.sft_run, "num_generations": a.num_generations,
           "max_completion_length": a.max_completion_length, "prompts_per_step": 1, "set": a.set, "threads": a.threads,
           "cpu": cpu_info().get("model"), "load_before": [round(x, 2) for x in load]}
    with tempfile.TemporaryDirectory() as tmp:
        for head in a.heads.split(","):
            run = grpo(a.sft_run, prompts, Path(tmp) / head, exclude=a.exclude, steps=a.steps + 1,
                       num_generations=a.num_generations, resume=False,
                       overrides=[f"--max_completion_length={a.max_completion_length}", "--save_strategy=no",
                                  f"--fast_lm_head={'true' if head == 'fast' else 'false'}", "--shuffle_dataset=false",
                                  *extra])
            logged = [h for h in json.loads((run / "trainer_state.json").read_text())["log_history"] if "step_time" in h]
            times = [h["step_time"] for h in logged[1:]]
            out[f"{head}_s_per_step"] = round(statistics.median(times), 2)
            out[f"{head}_step_times"] = [round(t, 2) for t in times]
            out[f"{head}_completion_tokens_mean"] = round(statistics.mean(h["completions/mean_length"] for h in logged), 1)
            out[f"{head}_reward_mean"] = round(statistics.mean(h["reward"] for h in logged), 3)
    if "stock_s_per_step" in out and "fast_s_per_step" in out:
        out["speedup"] = round(out["stock_s_per_step"] / out["fast_s_per_step"], 2)
    from transformers import AutoTokenizer

    from llamatune.rl import sft_record
    from llamatune.rl_reward import prompt_text

    rec = sft_record(a.sft_run)
    tok = AutoTokenizer.from_pretrained(Path(a.sft_run) / "adapter")
    template = rec["recipe"].get("chat_template", "llama-3.2")
    out["prompt_tokens_mean"] = round(statistics.mean(len(tok(prompt_text(r, template, tok))["input_ids"])
                                                      for r in prompts), 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
