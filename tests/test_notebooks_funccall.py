"""The FuncCall notebooks are thin drivers that run end to end in smoke mode (nbclient), on the tiny model where
they train; the dataset notebook also reruns in the same live kernel."""

import json
import os

import nbformat
import pytest

from tests.conftest import REPO, assert_thin_notebook, requires
from tests.test_notebooks_finetome import run_twice, text

pytestmark = requires("nbclient", "ipykernel")


def load(name, overrides):
    nb = nbformat.read(REPO / "FuncCall" / name, as_version=4)
    idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(idx + 1, nbformat.v4.new_code_cell(overrides))
    return nb


def run_notebook(name, overrides, cwd, timeout=600):
    from nbclient import NotebookClient

    nb = load(name, overrides)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


@pytest.fixture
def kernel_env(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


@pytest.mark.parametrize("name,gated", [("generate_dataset.ipynb", False), ("finetuning.ipynb", True),
                                        ("eval_llm_judge.ipynb", True)])
def test_notebooks_are_thin(name, gated):
    assert_thin_notebook(REPO / "FuncCall" / name, gated=gated)


def test_generate_dataset_notebook_smoke(tmp_path, kernel_env):
    nb = load("generate_dataset.ipynb", f"SMOKE = True\nWORKDIR = {str(tmp_path)!r}\nOUT = 'fc'")
    first, second = run_twice(nb, tmp_path)
    out = tmp_path / "fc"
    train = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert len(train) == 48 and (out / "card.md").exists()
    printed = text(first)
    assert all(f"===== {cat}" in printed for cat in ("single_call", "no_tool", "tool_result", "clarify", "multi_turn"))
    assert "already there, reusing it" not in printed and "already there, reusing it" in text(second)


@pytest.mark.slow
@requires("llama_cpp", "trl", "peft")
def test_finetuning_notebook_smoke(tmp_path, kernel_env):
    """generate → train (tiny, 4 steps) → export (f16 + fidelity) → eval toolcall base / base+ICL / tuned →
    compare, everything under WORKDIR (the recipe comes from the repository, whatever the kernel's directory)."""
    nb = run_notebook("finetuning.ipynb", f"SMOKE = True\nWORKDIR = {str(tmp_path / 'work')!r}", tmp_path, timeout=900)
    work = tmp_path / "work"
    for name in ("base", "base-icl1", "tuned"):
        r = json.loads((work / "results" / "funccall" / f"{name}.json").read_text())
        assert r["kind"] == "toolcall" and len(r["items"]) == 4 and r["aggregate"]["overall"]["n"] == 4
    assert (work / "runs" / "funccall-tiny" / "adapter").is_dir()
    assert (work / "runs" / "funccall-tiny" / "gguf" / "funccall-tiny-f16.gguf").is_file()
    assert (work / "runs" / "base" / "gguf" / "base-f16.gguf").is_file()
    assert (work / "data" / "funccall-tiny" / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # nothing written outside WORKDIR
    streams = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert any("toolcall " in o["text"] for o in streams), "the evaluation's progress bar shows in the notebook"
