"""Shared fixtures: the tiny offline Llama (real Llama 3.2 tokenizer) as an HF dir and as GGUFs.

Everything is built offline and cached under $LLAMATUNE_CACHE, so only the first test session on a
machine pays for it (~15 s).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]


def requires(*modules: str):
    """Skip marker for optional dependencies (e.g. ``@requires("llama_cpp")``)."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"optional dependency missing: {', '.join(missing)}")


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The cached tiny Llama HF directory. Treat as read-only; copy it to modify."""
    from llamatune.models import tiny_model_dir as build

    return build()


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir) -> dict[str, Path]:
    """The tiny model converted by llama.cpp's converter: ``{"f16": path, "q8_0": path}`` (cached)."""
    pytest.importorskip("llama_cpp")
    from llamatune.gguf_convert import convert_hf_to_gguf, quantize

    out = tiny_model_dir / "gguf"
    f16 = out / "tiny-f16.gguf"
    if not f16.exists():
        convert_hf_to_gguf(tiny_model_dir, f16, "f16")
    q8 = out / "tiny-q8_0.gguf"
    if not q8.exists():
        quantize(f16, q8, "q8_0")
    return {"f16": f16, "q8_0": q8}
