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
# A minimal tool schema for template tests (the project's real tools are in llamatune.tools).
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


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


def assert_thin_notebook(path: Path) -> None:
    """A notebook is a thin driver: Colab badge, one ``SMOKE = False`` parameter cell, a ``%pip install`` cell,
    no outputs, no cell over 12 code lines, no def/class/lambda, no API key."""
    import ast
    import re

    import nbformat

    import tomllib

    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert "colab-badge.svg" in nb.cells[0].source
    repo = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    slug = repo.removeprefix("https://github.com/")
    own = path.resolve().relative_to(REPO).as_posix()
    assert f"colab.research.google.com/github/{slug}/blob/main/{own})" in nb.cells[0].source, "badge ≠ this file"
    assert any(f"git clone -q {repo}" in c.source for c in nb.cells if c.cell_type == "code")
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "SMOKE = False" in params[0].source
    assert any("%pip install" in c.source for c in nb.cells if c.cell_type == "code")
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        assert not cell.get("outputs"), "commit the notebook without outputs"
        lines = [ln for ln in cell.source.splitlines() if ln.strip()]
        assert len(lines) <= 12, cell.source
        python = re.sub(r"(?m)^(\s*)[%!].*$", r"\1pass", cell.source)  # IPython magics/shell lines
        tree = ast.parse(python)
        defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Lambda))]
        assert not defs, cell.source
        assert "sk-" not in cell.source  # no key in a notebook
