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


def load_script(relpath: str, name: str):
    """A repo script that is not in a package (``bench/X.py``, ``space/app.py``), imported as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, REPO / relpath)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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


@pytest.fixture(scope="module")
def funccall_data(tmp_path_factory) -> Path:
    """24 generated function-calling rows (``llamatune.data.funccall``), the training data of the tiny-model tests."""
    from llamatune.data.funccall import build_dataset

    out = tmp_path_factory.mktemp("funccall")
    build_dataset(out, 24, seed=0)
    return out


class Capture:
    """A TrainerCallback that keeps the trained model object (to inspect base and LoRA weights)."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Capture(TrainerCallback):
            model = None

            def on_train_end(self, args, state, control, model=None, **kwargs):
                type(self).model = model

        return _Capture()


def assert_thin_notebook(path: Path, *, gated: bool = False) -> None:
    """A notebook is a thin driver that a new user runs top to bottom on a fresh Colab runtime:

    * the first cell's Colab badge points at this file in the repository of pyproject's ``[project.urls]``;
    * the first code cell is the idempotent bootstrap: on Colab only, ``%cd /content``, clone unless the clone
      is there, ``%cd`` into it, ``%pip install -e`` (not ``-q``: the llama.cpp build shows), ``check_gpu()``,
      and ``hf_login()`` exactly when the notebook downloads a gated model (``gated``);
    * one ``parameters`` cell with ``SMOKE = False`` and ``WORKDIR = None`` (Drive on Colab), and
      ``workdir(WORKDIR)`` in a later cell; every ``train(`` call passes ``resume=True``;
    * no outputs, no cell over 12 code lines, no def/class/lambda, no API key."""
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
    code = [c for c in nb.cells if c.cell_type == "code"]
    boot = code[0].source
    lines = boot.splitlines()
    assert lines[0] == "import sys" and lines[1].startswith('if "google.colab" in sys.modules:'), "bootstrap first"
    assert all(ln.startswith("    ") for ln in lines[2:]), "bootstrap: does nothing outside Colab"
    body = [ln.strip() for ln in lines[2:]]
    assert all(ln.startswith(("%", "!", "from llamatune.colab import", "check_gpu(", "hf_login(")) for ln in body), boot
    clone_dir = "finetuning-llama-instruct"
    assert body[0] == "%cd /content", boot
    assert body[1] == f"![ -d {clone_dir} ] || git clone {repo} {clone_dir}", "clone only when missing"
    assert body[2] == f"%cd /content/{clone_dir}", boot
    assert body[3].startswith('%pip install -e "') and " -q" not in body[3], "pip: visible output"
    assert "check_gpu(" in boot
    assert ("hf_login()" in boot) == gated, "hf_login() exactly where a gated model is downloaded"
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "SMOKE = False" in params[0].source
    assert re.search(r"(?m)^WORKDIR = None\b", params[0].source), "WORKDIR = None: Google Drive on Colab"
    after = code[code.index(params[0]) + 1:]
    assert any("workdir(WORKDIR)" in c.source for c in after), "outputs under workdir(WORKDIR)"
    for cell in code:
        for call in re.findall(r"(?<![\w.])train\([^)]*\)", cell.source):
            assert "resume=True" in call, f"a rerun must resume: {call}"
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


# --- CI must not pass with the browser or fault tests skipped ----------------------------------------------
MUST_RUN_IN_CI = ("browser", "faults")  # markers: under CI=true a skip of such a test fails the run


def _needs_missing_artifact(item) -> bool:
    """A test may skip in CI only because an artefact of a long job it documents is absent (``needs_artifact``),
    never because a browser or a dependency is missing."""
    mark = item.get_closest_marker("needs_artifact")
    return bool(mark) and not any(Path(p).exists() and any(Path(p).iterdir()) for p in mark.args)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (os.environ.get("CI") == "true" and report.skipped and any(item.get_closest_marker(m) for m in MUST_RUN_IN_CI)
            and not _needs_missing_artifact(item)):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped under CI=true ({reason}): browser and fault tests must run in CI"
