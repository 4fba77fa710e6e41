"""Reinforcement with verifiable rewards after the LoRA SFT: TRL's ``GRPOTrainer`` on the tuned adapter, rewarded by
the project's own scorer (:func:`llamatune.evals.scoring.score_output`).

    llamatune rl FuncCall/recipes/grpo-cpu.yaml --sft_run runs/demo/tuned --exclude '[runs/demo/data]'
    llamatune rl FuncCall/recipes/grpo-cpu.yaml --sft_run runs/demo/tuned --exclude '[runs/demo/data]' --resume
    llamatune export runs/grpo-cpu                   # exported like an SFT run
    grpo("runs/demo/tuned", prompt_rows(256, exclude=...), "runs/demo/grpo", steps=60)   # from the demo or a sweep

A recipe is flat YAML: TRL ``GRPOConfig`` fields and ``RL_KEYS``. The policy is the SFT run's base model with the
SFT adapter loaded *trainable* (every base weight frozen); the base model and chat template come from the SFT run's
``run.json`` and are recorded in this run's, so ``llamatune export`` takes an RL run as it takes an SFT run.

Prompts (:func:`prompt_rows`): ``n_prompts`` new rows of the *training* template families (a random stream of their
own, ids ``fc-grpo-…``), every category in the default proportions, dressed as the validation and test items are
(``prompt_style: eval``: no system prompt, every distractor, whole tool results) or as training rows (``train``). A
prompt equal to a prompt of any ``exclude`` file (the validation and test items; a directory means its JSONL files
but ``train.jsonl``) is dropped, and so is a repeated one; test template families are never drawn. Each prompt is
the conversation up to the target rendered as ``eval toolcall`` renders it (:func:`llamatune.evals.toolcall.
build_prompt`, the project template), passed to TRL as text: TRL's conversational path renders every prompt with the
trainer's one tool list, not each row's own tools, and decodes completions without the special tokens some templates
call with. When the tokenizer adds BOS itself the rendered BOS is left out, so the prompt ids equal the eval's.

Reward (:func:`llamatune.rl_reward.reward`): the completion is cut at its first end-of-turn marker, as the eval
cuts, and scored against the row's expected call(s), tools, category and conversation: 1.0 when the scorer counts it
correct (the right call with the right arguments, parallel calls in any order, no call where none is needed, a
question where an argument is missing, an answer grounded in the tool results), ``-invalid_penalty`` for an
attempted call that does not parse, 0.0 otherwise. GRPO's advantages are relative within a prompt's group of
completions, so the penalty only orders the wrong ones: a malformed call is the failure that breaks the agent
("Invalid tool call"), worse than a well-formed wrong one. No partial credit for the right tool with wrong
arguments: it would pay the model to call where the right answer is not to.

Speed on a CPU: TRL's fused head scores every position of prompt and completion off Triton devices (a prompt here is
~10× its completion); ``fast_lm_head: true`` (the default, at ``temperature`` 1.0, the head :mod:`llamatune.label_head`
gives the SFT) scores the completion positions only, with TRL's own kernel.

KL: ``beta`` 0.0 by default (TRL's default; no reference pass, a third less compute per step on a CPU); with
``beta > 0`` TRL anchors the policy to a frozen copy of the SFT adapter, not to the base model.

The run directory is laid out like a training run: ``prompts.jsonl`` (the rows used), ``checkpoint-*``, ``adapter/``,
``run.json`` (status, the resolved recipe with the SFT run's model and template, data hashes, reward first/last),
``config.yaml``, ``trainer_state.json`` and ``reward.png``. ``resume=True`` continues from the last complete
checkpoint; a run directory with checkpoints is never continued silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from llamatune.jsonl import read_json, read_jsonl, sha256_file, write_json, write_jsonl, write_text
from llamatune.plots import plot_rewards
from llamatune.recipe import load_recipe, route_keys
from llamatune.rl_reward import prompt_text, reward_function

# Recipe keys that are not GRPOConfig fields, with their defaults (None = required).
RL_KEYS: dict[str, Any] = {
    "sft_run": None,  # the SFT run directory (adapter/ + run.json) the policy starts from
    "exclude": None,  # JSONL files / directories whose prompts are never used (validation, test); [] = none, knowingly
    "n_prompts": 256,  # GRPO prompts drawn (training template families)
    "prompt_seed": 0,  # their random stream ("grpo", independent of the train and val streams)
    "prompt_style": "eval",  # eval: dressed like the validation/test items; train: like the training rows
    "invalid_penalty": 0.5,  # reward of an attempted call that does not parse: -invalid_penalty
    "dtype": "auto",  # policy weights: auto (llamatune.device's rule), float32, bfloat16, float16
    "fast_lm_head": True,  # the head at completion positions only (llamatune.label_head); false = TRL's stock path
    "select_samples": 0,  # k >= 2: keep the prompts (drawn or given) whose k samples of select_gguf differ in reward
    "select_gguf": "",  # the SFT run's GGUF that select_samples samples (llamatune export <sft_run>)
}
INHERITED = ("model_name_or_path", "chat_template")  # taken from the SFT run; recorded in this run's recipe
RECIPE = Path(__file__).resolve().parent.parent / "FuncCall" / "recipes" / "grpo-cpu.yaml"


def split_rl_recipe(recipe: dict) -> tuple[dict, dict]:
    """``(extra, grpo_kwargs)``: ``RL_KEYS`` (defaults filled) and ``GRPOConfig`` fields. ``ValueError`` names unknown
    keys (with the closest known names) and a missing required one."""
    from trl import GRPOConfig

    fields = {f.name for f in dataclasses.fields(GRPOConfig) if f.init}
    extra, cfg = route_keys(recipe, RL_KEYS, fields, ignore=INHERITED, required_hints={
        "exclude": " (the validation and test files whose prompts GRPO must never use; [] for none)"})
    if int(extra["select_samples"] or 0) and not extra["select_gguf"]:
        raise ValueError("recipe: select_samples needs select_gguf (the SFT run's GGUF: llamatune export <sft_run>)")
    if extra["prompt_style"] not in ("eval", "train"):
        raise ValueError(f"recipe: prompt_style must be eval or train, got {extra['prompt_style']!r}")
    return extra, cfg


def sft_record(sft_run: str | Path) -> dict:
    """The finished SFT run's ``run.json``; ``ValueError``/``FileNotFoundError`` naming what is missing."""
    sft_run = Path(sft_run)
    rec = read_json(sft_run / "run.json", None, expect=dict)
    if rec is None or not (sft_run / "adapter" / "adapter_config.json").exists():
        raise FileNotFoundError(f"{sft_run}: not a training run (needs run.json and adapter/adapter_config.json)")
    if rec.get("status") != "done":
        raise ValueError(f"{sft_run}: the SFT run did not finish (run.json status {rec.get('status')!r})")
    if not (rec.get("recipe") or {}).get("model_name_or_path"):
        raise ValueError(f"{sft_run}/run.json: no recipe.model_name_or_path")
    return rec


# --- prompts ---------------------------------------------------------------------------------------------

def exclusion_rows(paths) -> list[dict]:
    """The rows of the ``exclude`` paths: JSONL files, or directories (every ``*.jsonl`` below but ``train.jsonl``);
    only rows with ``messages`` count (caches beside them are skipped)."""
    files: list[Path] = []
    for p in map(Path, [paths] if isinstance(paths, (str, Path)) else list(paths or [])):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*.jsonl") if f.name != "train.jsonl")
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory (recipe exclude)")
    return [r for f in files for r in read_jsonl(f) if isinstance(r.get("messages"), list)]


def prompt_rows(n: int, seed: int = 0, exclude: list[dict] = (), style: str = "eval") -> list[dict]:
    """``n`` GRPO prompt rows of the training template families (never the demo's validation fold), every category in
    the default proportions, none whose prompt (:func:`llamatune.demo_data.prompt_key`) equals an ``exclude`` row's or
    another's. Fewer when the families cannot give ``n`` distinct prompts (said on stderr)."""
    from llamatune.data.funccall import DEFAULT_PROPORTIONS, build_split, strip_private, train_style
    from llamatune.data.funccall_rows import EVAL_STYLE
    from llamatune.demo import DEFAULTS
    from llamatune.demo_data import distinct, prompt_key, stratified

    if n < 1:
        raise ValueError(f"n_prompts must be >= 1, got {n}")
    pool = strip_private(build_split("train", max(4 * n, 400), seed, DEFAULT_PROPORTIONS, stream="grpo",
                                     style=train_style() if style == "train" else EVAL_STYLE,
                                     val_fraction=DEFAULTS["val_fraction"]))
    pool = distinct(pool, {prompt_key(r) for r in exclude})
    rows = stratified(pool, n, seed=seed, weights=DEFAULT_PROPORTIONS)
    if len(rows) < n:
        print(f"[rl] only {len(rows)} distinct GRPO prompts (asked for {n})", file=sys.stderr)
    return rows


def _check_excluded(rows: list[dict], exclude: list[dict]) -> None:
    from llamatune.demo_data import prompt_key

    banned = {prompt_key(r) for r in exclude}
    bad = [r.get("id") for r in rows if prompt_key(r) in banned]
    if bad:
        raise ValueError(f"{len(bad)} GRPO prompt(s) equal an excluded (validation or test) prompt: {bad[:5]}")


# --- the run ---------------------------------------------------------------------------------------------

def _rows_sha256(rows: list[dict]) -> str:
    """The sha256 of ``rows`` written by :func:`llamatune.jsonl.write_jsonl` (known before the file is written)."""
    return hashlib.sha256("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()).hexdigest()


def build_trainer(recipe: dict, prompts: list[dict], run_dir: str | Path, callbacks: list | None = None):
    """Everything up to ``trainer.train()``: ``(trainer, info)``; ``info`` holds what ``run.json`` records."""
    import torch
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from llamatune.chat import template_text
    from llamatune.device import device_dtype
    from llamatune.models import resolve_model

    extra, cfg = split_rl_recipe(recipe)
    sft_run = Path(extra["sft_run"])
    sft = sft_record(sft_run)
    template = sft["recipe"].get("chat_template") or "llama-3.2"
    dtype = device_dtype() if extra["dtype"] == "auto" else str(extra["dtype"])
    if "bf16" not in cfg and "fp16" not in cfg:
        cfg["bf16"], cfg["fp16"] = dtype == "bfloat16", dtype == "float16"
    cfg.update(output_dir=str(run_dir), report_to=cfg.get("report_to", "none"), use_vllm=cfg.get("use_vllm", False))
    model_path = resolve_model(str(sft["recipe"]["model_name_or_path"]))
    adapter = sft_run / "adapter"
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
    model = PeftModel.from_pretrained(base, str(adapter), is_trainable=True)
    tok = AutoTokenizer.from_pretrained(str(adapter) if (adapter / "tokenizer_config.json").exists() else model_path)
    tok.chat_template = template_text(template)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    ds = Dataset.from_dict({"prompt": [prompt_text(r, template, tok) for r in prompts], "item": list(range(len(prompts)))})
    args = GRPOConfig(**cfg)
    trainer = GRPOTrainer(model=model, reward_funcs=[reward_function(prompts, tok, extra["invalid_penalty"])],
                          args=args, train_dataset=ds, processing_class=tok, callbacks=callbacks)
    fast_head = bool(extra["fast_lm_head"]) and float(args.temperature) == 1.0
    if fast_head:  # TRL scores every prompt position off Triton devices; ours only the completion's
        from llamatune.label_head import add_label_only_head

        add_label_only_head(trainer.model.get_base_model())
    data = {"sft_run": str(sft_run), "sft_adapter_sha256": sha256_file(adapter / "adapter_model.safetensors"),
            "prompts.jsonl_sha256": _rows_sha256(prompts), "n_prompts": len(prompts),
            "by_category": {c: sum(r["category"] == c for r in prompts) for c in sorted({r["category"] for r in prompts})}}
    info = {"kind": "grpo", "dtype": dtype, "bf16": args.bf16, "fp16": args.fp16, "model_path": model_path,
            "fast_lm_head": fast_head, "chat_template": template, "data": data, "device": str(args.device),
            "sft": {k: sft.get(k) for k in ("global_step", "git", "finished")}}
    return trainer, info


def reward_summary(log_history: list[dict]) -> dict:
    """Mean reward and share correct over the first and the last fifth of the logged steps."""
    logged = [h for h in log_history if "reward" in h]
    k = max(1, len(logged) // 5)
    out: dict[str, Any] = {"logged_steps": len(logged)}
    for key in ("reward", "correct", "format_invalid"):
        vals = [h[key] for h in logged if key in h]
        if vals:
            out[f"{key}_first"] = round(sum(vals[:k]) / len(vals[:k]), 4)
            out[f"{key}_last"] = round(sum(vals[-k:]) / len(vals[-k:]), 4)
    return out


def train_grpo(recipe: dict, prompts: list[dict] | None = None, run_dir: str | Path | None = None,
               resume: bool = False, callbacks: list | None = None) -> Path:
    """GRPO as the recipe says; return the run directory. ``prompts``: the rows to train on (default
    :func:`prompt_rows` from the recipe's ``n_prompts``, ``prompt_seed``, ``prompt_style`` and ``exclude``)."""
    from llamatune.distributed import (check_resumable, is_final, last_checkpoint, restore_final, save_adapter,
                                       scale_info)
    from llamatune.provenance import git_info, package_versions

    recipe = dict(recipe)
    if run_dir is not None:
        recipe["output_dir"] = str(run_dir)
    run_dir = Path(recipe.get("output_dir") or Path("runs") / str(recipe.get("run_name", "grpo")))
    extra, _ = split_rl_recipe(recipe)  # bad keys fail before anything heavy
    sft = sft_record(extra["sft_run"])
    for key in INHERITED:
        if recipe.get(key) not in (None, sft["recipe"].get(key)):
            raise ValueError(f"recipe {key}={recipe[key]!r}, but the SFT run {extra['sft_run']} used "
                             f"{sft['recipe'].get(key)!r}: GRPO continues the SFT run's model and template")
        recipe[key] = sft["recipe"].get(key)
    last = last_checkpoint(run_dir) if run_dir.exists() else None
    if last is not None and not resume:
        raise FileExistsError(f"{run_dir} already holds checkpoints (last: {last.name}); pass --resume to "
                              "continue it, or choose another output_dir/run_name")
    selection = None  # what select_samples kept, for run.json
    if prompts is None:
        prompts = prompt_rows(int(extra["n_prompts"]), int(extra["prompt_seed"]), exclusion_rows(extra["exclude"]),
                              extra["prompt_style"])
    else:
        _check_excluded(prompts, exclusion_rows(extra["exclude"]))
    if int(extra["select_samples"] or 0):  # drawn or given, sampled as this recipe's GRPO will sample them
        from llamatune.rl_select import uncertain

        template = sft["recipe"].get("chat_template") or "llama-3.2"
        prompts, selection = uncertain(prompts, extra["select_gguf"], template, k=int(extra["select_samples"]),
                                       temperature=float(recipe.get("temperature", 1.0)),
                                       max_tokens=int(recipe.get("max_completion_length", 64)),
                                       cache=run_dir / "select.jsonl")
    if not prompts:
        raise ValueError("no GRPO prompts")
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer, info = build_trainer(recipe, prompts, run_dir, callbacks)
    scale = scale_info(trainer)
    before = read_json(run_dir / "run.json", {}) if last else {}
    if before:
        check_resumable(before, recipe, info["data"], scale, run_dir)
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    record = {"recipe": recipe, **info, **scale, "versions": package_versions(), "git": git_info(),
              "status": "running", "resumed_from": last.name if last else None, "started": before.get("started", now),
              "resumes": before.get("resumes", []) + ([{"at": now, "from": last.name}] if last else []),
              **({"selection": selection} if selection else {})}
    write_jsonl(run_dir / "prompts.jsonl", prompts)
    write_json(run_dir / "run.json", record, indent=2, sort_keys=True, default=str)
    write_text(run_dir / "config.yaml", yaml.safe_dump(recipe, sort_keys=False))
    t0 = time.time()
    if last is not None and is_final(last):
        print(f"[rl] {last.name} is the final step: finishing the run from it", file=sys.stderr)
        metrics = restore_final(trainer, last)
    else:
        metrics = dict(trainer.train(resume_from_checkpoint=str(last) if last else None).metrics)
    model = trainer.model
    if "ref" in getattr(model, "peft_config", {}):  # beta > 0: TRL's frozen copy of the SFT adapter, not ours to ship
        model.delete_adapter("ref")
    save_adapter(trainer, run_dir / "adapter")
    trainer.state.save_to_json(str(run_dir / "trainer_state.json"))
    plot_rewards(run_dir / "trainer_state.json", run_dir / "reward.png", title=f"GRPO {run_dir.name}")
    steps = trainer.state.global_step - (int(read_json(last / "trainer_state.json")["global_step"]) if last else 0)
    wall = time.time() - t0
    if steps > 0:  # else finished from the final checkpoint: the figures of the run that trained stand
        record.update(metrics=metrics, wall_seconds=round(wall, 2), seconds_per_step=round(wall / steps, 2))
    else:
        record.update({k: before[k] for k in ("metrics", "wall_seconds", "seconds_per_step") if k in before})
    record.update(status="done", global_step=trainer.state.global_step, reward=reward_summary(trainer.state.log_history),
                  finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_json(run_dir / "run.json", record, indent=2, sort_keys=True, default=str)
    return run_dir


def grpo(sft_run: str | Path, prompts: list[dict], out_dir: str | Path, exclude=(), steps: int = 60,
         num_generations: int = 4, prompts_per_step: int = 1, overrides: list[str] = (), recipe: str | Path = RECIPE,
         resume: bool = True, callbacks: list | None = None) -> Path:
    """GRPO from ``sft_run`` on ``prompts`` (see :func:`prompt_rows`) into ``out_dir`` with the CPU recipe:
    ``steps`` optimizer steps of ``prompts_per_step`` prompts × ``num_generations`` completions. ``exclude``: the
    validation/test files, checked again (a prompt equal to one of theirs is an error); ``overrides``: ``--key value``
    recipe overrides. Resumes by default (what the demo and the sweep want)."""
    paths = [str(exclude)] if isinstance(exclude, (str, Path)) else [str(p) for p in exclude]
    r = load_recipe(recipe, [f"--sft_run={sft_run}", f"--output_dir={out_dir}", f"--max_steps={steps}",
                             f"--num_generations={num_generations}", f"--exclude={json.dumps(paths)}",
                             f"--per_device_train_batch_size={num_generations * prompts_per_step}", *overrides])
    return train_grpo(r, prompts=prompts, resume=resume, callbacks=callbacks)


def add_arguments(parser) -> None:
    import argparse

    parser.add_argument("recipe", help="recipe YAML (e.g. FuncCall/recipes/grpo-cpu.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    parser.add_argument("overrides", nargs=argparse.REMAINDER,
                        help="--key value overrides of recipe keys (YAML-typed), e.g. --sft_run runs/demo/tuned "
                             "--exclude '[runs/demo/data]'")


def main(args) -> int:
    overrides = list(args.overrides or [])
    resume = args.resume or "--resume" in overrides
    run_dir = train_grpo(load_recipe(args.recipe, [o for o in overrides if o != "--resume"]), resume=resume)
    print(f"run written to {run_dir} (adapter/, run.json, trainer_state.json, reward.png, prompts.jsonl)")
    return 0
