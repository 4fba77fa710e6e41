"""LoRA SFT from a flat recipe YAML: TRL ``SFTTrainer`` + PEFT, or unsloth on CUDA, with the same recipe.

    llamatune train FineTome/recipes/tiny-cpu.yaml --max_steps 20 --learning_rate 1e-3
    llamatune train FineTome/recipes/llama-3.2-3b-lora.yaml --resume      # continue from the last checkpoint
    python -m llamatune.train FineTome/recipes/tiny-cpu.yaml
    accelerate launch --config_file configs/accelerate/ddp.yaml -m llamatune.cli train RECIPE   # several GPUs

The recipe (flat YAML, typed overrides, keys by destination) is read by :mod:`llamatune.recipe`.

What a run does: renders the ``dataset_path``'s ``train.jsonl`` (``messages``, optional ``tools``) through the
project chat template (``llamatune/templates/<chat_template>.jinja``, which marks assistant turns with
``{% generation %}``) and trains on the assistant tokens only (``assistant_only_loss=True``); it evaluates the
loss on the first ``eval_samples`` rows of ``eval.jsonl`` every ``eval_steps``, saves ``checkpoint-*`` every
``save_steps``, and ``resume=True`` continues from the last complete checkpoint (same global step, same
weights as an uninterrupted run). The run directory gets ``adapter/`` (LoRA weights + tokenizer with the
template), ``run.json`` (resolved recipe, versions, git commit, data hashes, metrics), ``config.yaml``
(the resolved recipe, re-runnable), ``trainer_state.json`` and ``loss.png``.

Backend: ``backend: auto`` uses unsloth (``FastLanguageModel``) when CUDA is available and the ``gpu`` extra is
installed, else plain TRL; ``trl`` / ``unsloth`` force one. ``model_name_or_path: tiny`` is the offline tiny
test model (:func:`llamatune.models.tiny_model_dir`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import yaml

from llamatune.chat import template_text, validate_messages
from llamatune.device import importable
from llamatune.distributed import data_hashes, dist_state, is_final, last_checkpoint, restore_final
from llamatune.jsonl import iter_jsonl, read_json, write_json, write_text
from llamatune.provenance import git_info, package_versions
from llamatune.recipe import RECIPE_KEYS, load_recipe, split_recipe
from llamatune.train_fast import apply_fast_path, resolve_precision


def load_conversations(path: str | Path, limit: int | None = None):
    """A ``datasets.Dataset`` with ``messages`` (and ``tools`` when any row has them) from a data-stage JSONL.

    Each message and the tools are stored with the ``Json`` feature, so every row keeps exactly its own keys
    (Arrow structs would add ``None`` for keys other rows have, e.g. ``tool_calls``, and change the render).
    Rows must pass :func:`llamatune.chat.validate_messages`; errors name the file and line.
    """
    from datasets import Dataset, Features, Json, List

    messages, tools = [], []
    for lineno, row in iter_jsonl(path):
        if limit is not None and len(messages) >= limit:
            break
        validate_messages(row.get("messages"), where=f"{path}:{lineno}: messages")
        if row.get("tools") is not None and not isinstance(row["tools"], list):
            raise ValueError(f"{path}:{lineno}: tools must be a list of tool schemas")
        messages.append(row["messages"])
        tools.append(row.get("tools"))
    if not messages:
        raise ValueError(f"{path}: no rows")
    data, features = {"messages": messages}, {"messages": List(Json())}
    if any(t is not None for t in tools):
        data["tools"], features["tools"] = tools, Json()
    return Dataset.from_dict(data, features=Features(features))


def _choose_backend(want: str) -> str:
    import torch

    has_unsloth = importable("unsloth")
    if want == "unsloth" and not (has_unsloth and torch.cuda.is_available()):
        raise RuntimeError("backend: unsloth needs CUDA and the gpu extra (pip install 'llamatune[gpu]')")
    if want not in ("auto", "trl", "unsloth"):
        raise ValueError(f"recipe: backend must be auto, trl or unsloth, got {want!r}")
    auto = has_unsloth and torch.cuda.is_available() and not dist_state().distributed  # TRL under accelerate launch
    return "unsloth" if want == "unsloth" or (want == "auto" and auto) else "trl"


def _load_model(extra: dict, sft: dict, lora: dict, backend: str, dtype: str):
    """``(model, tokenizer, peft_config)``; with unsloth the model already carries the LoRA adapter."""
    import torch

    from llamatune.models import resolve_model  # "tiny", "gemma-3-270m" → local directories

    path = resolve_model(str(extra["model_name_or_path"]))
    extra["model_path"] = path
    if backend == "unsloth":
        from unsloth import FastLanguageModel  # must come before transformers/trl patch points are used

        model, tok = FastLanguageModel.from_pretrained(
            model_name=path, max_seq_length=sft.get("max_length") or 2048, dtype=getattr(torch, dtype),
            load_in_4bit=bool(extra["load_in_4bit"]),
        )
        keep = {"r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora", "modules_to_save",
                "layers_to_transform", "init_lora_weights", "loftq_config"}
        model = FastLanguageModel.get_peft_model(
            model, **{k: v for k, v in lora.items() if k in keep},
            use_gradient_checkpointing="unsloth" if sft.get("gradient_checkpointing", True) else False,
            random_state=sft.get("seed", 42), max_seq_length=sft.get("max_length") or 2048,
        )
        sft["gradient_checkpointing"] = False  # unsloth does its own
        return model, tok, None
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    attn = extra["attn_implementation"]
    if attn == "auto":
        attn = None if torch.cuda.is_available() else "packed"
    if attn == "packed":
        from llamatune.train_fast import register_packed_attention

        register_packed_attention()
    if attn is not None:
        kwargs["attn_implementation"] = attn
    if extra["load_in_4bit"]:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=getattr(torch, dtype))
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    tok = AutoTokenizer.from_pretrained(path)
    return model, tok, LoraConfig(**{"task_type": "CAUSAL_LM", **lora})


def build_trainer(recipe: dict, run_dir: str | Path | None = None, callbacks: list | None = None):
    """Everything up to ``trainer.train()``: ``(trainer, info)``. ``info`` holds what ``run.json`` records."""
    backend = _choose_backend(recipe.get("backend", RECIPE_KEYS["backend"]))
    if backend == "unsloth":
        import unsloth  # noqa: F401  (unsloth patches transformers/trl/peft: import it before them)
    from trl import SFTConfig, SFTTrainer

    extra, sft, lora = split_recipe(recipe)
    notes: list[str] = []
    run_dir = Path(run_dir or sft.get("output_dir") or Path("runs") / str(sft.get("run_name", "run")))
    sft["output_dir"] = str(run_dir)
    sft.setdefault("report_to", "none")
    sft.setdefault("assistant_only_loss", True)
    dtype, precision = resolve_precision(extra, sft, notes)
    model, tok, peft_config = _load_model(extra, sft, lora, backend, dtype)

    # The one chat template (with {% generation %} markers) and a pad token distinct from <|eot_id|>.
    tok.chat_template = template_text(extra["chat_template"])
    if tok.pad_token is None or tok.pad_token == tok.eos_token:
        pad = "<|finetune_right_pad_id|>" if "<|finetune_right_pad_id|>" in tok.get_vocab() else tok.eos_token
        tok.pad_token = pad

    data_dir = Path(extra["dataset_path"])
    if not (data_dir / "train.jsonl").exists():
        raise FileNotFoundError(f"{data_dir / 'train.jsonl'}: no such file (recipe dataset_path; write it with "
                                "`llamatune data finetome ...` or `llamatune data funccall ...`)")
    train_ds = load_conversations(data_dir / "train.jsonl")
    eval_path = data_dir / "eval.jsonl"
    n_eval = int(extra["eval_samples"] or 0)
    eval_ds = load_conversations(eval_path, limit=n_eval) if n_eval and eval_path.exists() else None
    if extra["date_string"] is not None:
        kw = {"date_string": str(extra["date_string"])}
        train_ds = train_ds.add_column("chat_template_kwargs", [kw] * len(train_ds))
        if eval_ds is not None:
            eval_ds = eval_ds.add_column("chat_template_kwargs", [kw] * len(eval_ds))
    if eval_ds is None:
        sft["eval_strategy"] = "no"
    args = SFTConfig(**sft)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tok,
                         peft_config=peft_config, callbacks=callbacks)
    if args.assistant_only_loss:
        check_assistant_labels(trainer)
    fast_head = bool(extra["fast_lm_head"]) and backend == "trl"
    decision_weight = float(extra["decision_weight"])
    if decision_weight != 1.0 and not fast_head:
        raise ValueError(f"decision_weight: {decision_weight} needs the label-only head (fast_lm_head: true, backend "
                         f"trl); this recipe has fast_lm_head: {extra['fast_lm_head']}, backend {backend}")
    if decision_weight != 1.0 and (args.loss_type != "nll" or args.label_smoothing_factor > 0):
        raise ValueError(f"decision_weight: {decision_weight} weighs the plain NLL loss; this recipe has loss_type: "
                         f"{args.loss_type}, label_smoothing_factor: {args.label_smoothing_factor}")
    if fast_head:
        from llamatune.label_head import add_label_only_head

        add_label_only_head(
            trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model,
            decision_weight=decision_weight)
    compiled = apply_fast_path(trainer, extra["compile"], dtype, precision,
                               backend == "trl" and peft_config is not None, notes)
    # train_sequences: what one epoch feeds the model (packs when packing), so rows/step = train_rows ÷
    # train_sequences × per_device_train_batch_size × gradient_accumulation_steps (× devices)
    data = {"dataset_path": str(data_dir), "train_rows": len(train_ds), "eval_rows_used": len(eval_ds or []),
            "train_sequences": len(trainer.train_dataset)}
    data.update(data_hashes(data_dir))
    attn_impl = getattr(trainer.model.config, "_attn_implementation", None)
    info = {"backend": backend, "dtype": dtype, "bf16": args.bf16, "fp16": args.fp16, "precision": precision,
            "attn_implementation": attn_impl, "compiled_modules": compiled,
            "optim": getattr(args.optim, "value", str(args.optim)), "model_path": extra["model_path"],
            "padding_free": bool(trainer.padding_free), "fast_lm_head": fast_head,
            "decision_weight": decision_weight, "data": data,
            "notes": notes, "device": str(args.device)}
    return trainer, info


def check_assistant_labels(trainer) -> None:
    """Fail loudly unless the first training batch, as the collator builds it, trains on some of its real
    tokens and masks the others (assistant-only loss). Works whatever prepared the dataset (TRL or unsloth)."""
    ds = trainer.train_dataset
    batch = trainer.data_collator([ds[i] for i in range(min(2, len(ds)))])
    labels = batch["labels"]
    real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else labels.numel()
    trained = int((labels != -100).sum())
    if not 0 < trained < real:
        raise RuntimeError(f"the first training batch trains on {trained} of {real} tokens: it is not masked to "
                           "the assistant turns; check assistant_only_loss and the chat template's "
                           "{% generation %} markers")


def train(recipe: dict, run_dir: str | Path | None = None, resume: bool = False, callbacks: list | None = None) -> Path:
    """Train a LoRA adapter as the recipe says; return the run directory.

    ``resume=True`` continues from the last complete checkpoint (or starts fresh when there is none). Without
    it, a run directory that already holds checkpoints is an error, so runs are never silently mixed. Under
    ``accelerate launch`` every process calls this; the run's files are written by the main process only
    (:mod:`llamatune.distributed`).
    """
    from llamatune.distributed import check_resumable, describe, is_main_process, save_adapter, scale_info

    recipe = dict(recipe)
    if run_dir is not None:
        recipe["output_dir"] = str(run_dir)
    run_dir = Path(recipe.get("output_dir") or Path("runs") / str(recipe.get("run_name", "run")))
    last = last_checkpoint(run_dir) if run_dir.exists() else None
    if last is not None and not resume:
        raise FileExistsError(f"{run_dir} already holds checkpoints (last: {last.name}); pass --resume to "
                              "continue it, or choose another output_dir/run_name")
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer, info = build_trainer(recipe, run_dir, callbacks)
    main = is_main_process()
    scale = scale_info(trainer)
    before = read_json(run_dir / "run.json", {}) if last else {}
    if before:
        check_resumable(before, recipe, info["data"], scale, run_dir)
    versions = package_versions(["unsloth"] if info["backend"] == "unsloth" else [])
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    resumes = before.get("resumes", []) + ([{"at": now, "from": last.name, "world_size": scale.get("world_size")}]
                                           if last else [])
    record = {"recipe": recipe, **info, **scale, "versions": versions, "git": git_info(), "status": "running",
              "resumed_from": last.name if last else None, "resumed_from_world_size": before.get("world_size"),
              "started": before.get("started", now), "resumes": resumes}
    if main:
        print(f"[llamatune] {describe(scale)}", file=sys.stderr)
        write_json(run_dir / "run.json", record, indent=2, sort_keys=True, default=str)
        write_text(run_dir / "config.yaml", yaml.safe_dump(recipe, sort_keys=False))
        if resume and last is None:
            print(f"[llamatune] no checkpoint in {run_dir}: starting from scratch", file=sys.stderr)
    t0 = time.time()
    if last is not None and is_final(last):
        # Killed after its final checkpoint, or already complete: the trainer would run past max_steps (it
        # restarts an epoch), so finish from the checkpoint instead of training.
        if main:
            print(f"[llamatune] {last.name} is the final step: finishing the run from it", file=sys.stderr)
        metrics = restore_final(trainer, last)
    else:
        metrics = dict(trainer.train(resume_from_checkpoint=str(last) if last else None).metrics)
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    if trainer.eval_dataset is not None and (not evals or evals[-1].get("step") != trainer.state.global_step):
        evals.append(trainer.evaluate())  # the held-out loss of the final weights, unless just measured
    if evals:
        metrics.update({k: v for k, v in evals[-1].items() if k.startswith("eval_")})
    save_adapter(trainer, run_dir / "adapter")  # every rank: ZeRO-3/FSDP gather the weights; the main one writes
    if not main:
        return run_dir
    trainer.state.save_to_json(str(run_dir / "trainer_state.json"))
    from llamatune.plots import plot_loss

    plot_loss(run_dir / "trainer_state.json", run_dir / "loss.png", title=str(recipe.get("run_name", run_dir.name)))
    record.update(status="done", global_step=trainer.state.global_step, metrics=metrics,
                  wall_seconds=round(time.time() - t0, 2), finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_json(run_dir / "run.json", record, indent=2, sort_keys=True, default=str)
    return run_dir


def add_arguments(parser) -> None:
    import argparse

    parser.add_argument("recipe", help="recipe YAML (e.g. FineTome/recipes/tiny-cpu.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    parser.add_argument("overrides", nargs=argparse.REMAINDER,
                        help="--key value overrides of recipe keys (YAML-typed); --resume may also come here")


def main(args) -> int:
    overrides = list(args.overrides or [])
    resume = args.resume or "--resume" in overrides
    overrides = [o for o in overrides if o != "--resume"]
    run_dir = train(load_recipe(args.recipe, overrides), resume=resume)  # errors: exit codes of llamatune.cli
    print(f"run written to {run_dir} (adapter/, run.json, trainer_state.json, loss.png)")
    return 0


if __name__ == "__main__":
    import argparse

    from llamatune.cli import run

    p = argparse.ArgumentParser(prog="python -m llamatune.train", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    sys.exit(run(main, p.parse_args(), "llamatune train"))
