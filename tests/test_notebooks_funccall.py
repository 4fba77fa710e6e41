"""The FuncCall notebooks run end to end in smoke mode (nbclient), on the tiny model where they train."""

import json
import os
import shutil

import nbformat
import pytest

from tests.conftest import REPO, requires

pytestmark = requires("nbclient", "ipykernel")


def run_notebook(name, overrides, cwd, timeout=600):
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "FuncCall" / name, as_version=4)
    idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(idx + 1, nbformat.v4.new_code_cell(overrides))
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


@pytest.fixture
def kernel_env(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def test_notebooks_are_thin():
    for name in ("generate_dataset.ipynb", "finetuning.ipynb"):
        nb = nbformat.read(REPO / "FuncCall" / name, as_version=4)
        code = [c.source for c in nb.cells if c.cell_type == "code"]
        assert all(len(src.splitlines()) <= 12 for src in code), name
        assert not any(line.lstrip().startswith(("def ", "class ")) for src in code for line in src.splitlines())
        assert "colab.research.google.com" in nb.cells[0].source


def test_generate_dataset_notebook_smoke(tmp_path, kernel_env):
    out = tmp_path / "fc"
    nb = run_notebook("generate_dataset.ipynb", f"SMOKE = True\nOUT = {str(out)!r}", tmp_path)
    train = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert len(train) == 48 and (out / "card.md").exists()
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert all(f"===== {cat}" in printed for cat in ("single_call", "no_tool", "tool_result", "clarify", "multi_turn"))


@pytest.mark.slow
@requires("llama_cpp", "trl", "peft")
def test_finetuning_notebook_smoke(tmp_path, kernel_env):
    """generate → train (tiny, 4 steps) → export (f16 + fidelity) → eval toolcall base / base+ICL / tuned → compare."""
    shutil.copytree(REPO / "FuncCall" / "recipes", tmp_path / "FuncCall" / "recipes")  # cwd-relative paths
    res = tmp_path / "results"
    run_notebook("finetuning.ipynb", f"SMOKE = True\nRESULTS = {str(res)!r}", tmp_path, timeout=900)
    for name in ("base", "base-icl1", "tuned"):
        r = json.loads((res / f"{name}.json").read_text())
        assert r["kind"] == "toolcall" and len(r["items"]) == 4 and r["aggregate"]["overall"]["n"] == 4
    assert (tmp_path / "runs" / "funccall-tiny" / "adapter").is_dir()
