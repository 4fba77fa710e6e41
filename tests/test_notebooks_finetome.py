"""FineTome/finetuning.ipynb: a thin driver (no def/class, short cells) that runs end to end in smoke mode."""

from __future__ import annotations

import os

import pytest

from tests.conftest import REPO, assert_thin_notebook

NOTEBOOK = REPO / "FineTome" / "finetuning.ipynb"
nbformat = pytest.importorskip("nbformat")


def test_notebook_is_a_thin_driver():
    assert_thin_notebook(NOTEBOOK)


@pytest.mark.slow
def test_notebook_runs_in_smoke_mode(tmp_path, monkeypatch, tiny_model_dir):
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("trl")
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = (f"SMOKE = True\nWORKDIR = {str(tmp_path)!r}\n"
                     "OVERRIDES = ['--max_steps', '4', '--max_length', '128', '--eval_steps', '2', '--save_steps', '2']")
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    run_dir = tmp_path / "runs" / "tiny-cpu"
    assert (run_dir / "loss.png").exists() and (run_dir / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "data" / "finetome-tiny" / "train.jsonl").exists()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, "the loss plot is displayed"
    assert "eval_loss" in str(nb.cells[-2].outputs[-1]["data"]["text/plain"])
