"""Reading a recipe: flat YAML, ``--key value`` overrides, and its keys by destination.

A recipe is flat YAML whose keys are TRL ``SFTConfig`` fields (all of ``TrainingArguments``), PEFT
``LoraConfig`` fields, or one of ``RECIPE_KEYS`` below (model, data, template). ``--key value`` overrides on
the command line are typed by YAML parsing (``--max_steps 20`` is an int, ``--learning_rate 1e-3`` a float,
``--target_modules '[q_proj, v_proj]'`` a list). Unknown keys are an error naming them.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path
from typing import Any

import yaml

from llamatune.chat import DEFAULT_DATE

# Recipe keys that are neither SFTConfig nor LoraConfig fields, with their defaults (None = required).
RECIPE_KEYS: dict[str, Any] = {
    "model_name_or_path": None,  # HF id or local dir; "tiny" = llamatune.models.tiny_model_dir()
    "dataset_path": None,  # a directory with train.jsonl and eval.jsonl (from `llamatune data ...`)
    "eval_samples": 200,  # eval loss on the first N rows of eval.jsonl (0 = no eval)
    "chat_template": "llama-3.2",  # a template in llamatune/templates/
    "date_string": DEFAULT_DATE,  # pins the template's "Today Date" so tokenisation is reproducible; null = today
    "dtype": "auto",  # model weights: auto (bf16/fp16 on CUDA, float32 on CPU), float32, bfloat16, float16
    "load_in_4bit": False,  # QLoRA (bitsandbytes, CUDA only)
    "backend": "auto",  # auto | trl | unsloth
    "fast_lm_head": True,  # head + loss at labelled positions only (llamatune.label_head); false = TRL's stock path
    "decision_weight": 1.0,  # loss weight of each assistant turn's first token, call or answer (llamatune.label_head)
    "attn_implementation": "auto",  # auto: "packed" on a CPU (llamatune.train_fast), transformers' choice on a GPU
    "compile": "auto",  # torch.compile of the MLPs and norms (llamatune.train_fast); auto: with bf16 on a CPU
}


class _Loader(yaml.SafeLoader):
    """Safe loader with YAML 1.2 scalars: ``2e-4`` (no dot) is a float, as people write learning rates, and only
    true/false are booleans (YAML 1.1 would read ``eval_strategy: no`` as False)."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?[eE][-+]?\d+|\d[\d_]*\.[\d_]*(?:[eE][-+]?\d+)?"
               r"|\.\d+(?:[eE][-+]?\d+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """Type a command-line value the way YAML would (``20`` → int, ``1e-3`` → float, ``[a, b]`` → list)."""
    return yaml.load(text, Loader=_Loader) if text.strip() else ""


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> dict:
    """Read a flat recipe YAML and apply ``--key value`` / ``--key=value`` overrides (YAML-typed).

    Fills ``run_name`` (the file's stem) and ``output_dir`` (``runs/<run_name>``) when absent. Key validation
    against SFTConfig/LoraConfig happens in :func:`split_recipe` (it needs the heavy imports).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such recipe")
    try:
        recipe = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe must be a flat YAML mapping of keys to values")
    items = list(overrides or [])
    i = 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--") or item == "--":
            raise ValueError(f"override {item!r}: expected --key value or --key=value")
        key, eq, value = item[2:].partition("=")
        if not eq:
            if i + 1 >= len(items) or items[i + 1].startswith("--"):
                raise ValueError(f"override --{key}: missing a value")
            value, i = items[i + 1], i + 1
        recipe[key.replace("-", "_")] = parse_value(value)
        i += 1
    recipe.setdefault("run_name", path.stem)
    recipe.setdefault("output_dir", str(Path("runs") / str(recipe["run_name"])))
    return recipe


def route_keys(recipe: dict, own: dict[str, Any], *field_sets: set[str], ignore: tuple[str, ...] = (),
               required_hints: dict[str, str] | None = None) -> tuple[dict, ...]:
    """``(extra, *one dict per field set)``: each key goes to ``own`` (the project's keys, with their defaults; None
    = required) or to the first field set that holds it; keys in ``ignore`` go nowhere. Defaults are filled in
    ``extra``. ``ValueError`` names unknown keys (with the closest known names) and a required key left unset (with
    its ``required_hints`` entry)."""
    extra: dict = {}
    outs: list[dict] = [{} for _ in field_sets]
    unknown = []
    for key, value in recipe.items():
        if key in own:
            extra[key] = value
            continue
        for fields, out in zip(field_sets, outs):
            if key in fields:
                out[key] = value
                break
        else:
            if key not in ignore:
                unknown.append(key)
    if unknown:
        known = list(own) + sorted(set().union(*field_sets))
        hints = [f"{k} (did you mean {', '.join(difflib.get_close_matches(k, known, 2)) or '?'})" for k in unknown]
        raise ValueError(f"unknown recipe keys: {'; '.join(hints)}")
    for key, default in own.items():
        extra.setdefault(key, default)
        if default is None and extra[key] is None:
            raise ValueError(f"recipe: {key!r} is required" + (required_hints or {}).get(key, ""))
    return (extra, *outs)


def split_recipe(recipe: dict) -> tuple[dict, dict, dict]:
    """``(extra, sft_kwargs, lora_kwargs)``: the recipe's keys by destination, with defaults for ``RECIPE_KEYS``.
    Raises ``ValueError`` naming unknown keys (with the closest known names)."""
    from peft import LoraConfig
    from trl import SFTConfig

    sft_fields = {f.name for f in dataclasses.fields(SFTConfig) if f.init}
    lora_fields = {f.name for f in dataclasses.fields(LoraConfig) if f.init}
    extra, lora, sft = route_keys(recipe, RECIPE_KEYS, lora_fields, sft_fields)
    return extra, sft, lora
