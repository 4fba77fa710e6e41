"""FineTome/finetuning.ipynb: a thin driver (no def/class, short cells) that runs end to end in smoke mode, and
again in the same live kernel (a rerun resumes, reuses the data and the GGUF, and raises nothing)."""

from __future__ import annotations

import copy
import os

import pytest

from tests.conftest import REPO, assert_thin_notebook, requires

NOTEBOOK = REPO / "FineTome" / "finetuning.ipynb"
nbformat = pytest.importorskip("nbformat")


def test_notebook_is_a_thin_driver():
    assert_thin_notebook(NOTEBOOK, gated=False)


def run_twice(nb, cwd, timeout=600):
    """Execute every cell, then every cell again in the same kernel (a user rerunning the notebook in a live
    runtime); the notebook as it was after each pass."""
    from nbclient import NotebookClient

    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    client.reset_execution_trackers()
    passes = []
    with client.setup_kernel():
        for _ in range(2):
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
            passes.append(copy.deepcopy(nb))
    return passes


def outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def text(nb):
    return "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs(nb))


@pytest.mark.slow
@requires("nbclient", "ipykernel", "trl", "llama_cpp")
def test_notebook_runs_in_smoke_mode_and_reruns(tmp_path, monkeypatch, tiny_model_dir):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source += (f"\nSMOKE = True\nWORKDIR = {str(tmp_path)!r}\n"
                      "OVERRIDES = ['--max_steps', '4', '--max_length', '128', '--eval_steps', '2', "
                      "'--save_steps', '2']")
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    first, second = run_twice(nb, tmp_path)
    run_dir = tmp_path / "runs" / "tiny-cpu"
    assert (run_dir / "loss.png").exists() and (run_dir / "adapter" / "adapter_model.safetensors").exists()
    assert (tmp_path / "data" / "finetome-tiny" / "train.jsonl").exists()
    assert (run_dir / "gguf" / "tiny-cpu-f16.gguf").exists() and (run_dir / "fidelity.json").exists()
    assert not (tmp_path / "finetuning-llama-instruct").exists()  # the Colab bootstrap did nothing here
    assert any("image/png" in o.get("data", {}) for o in outputs(first)), "the loss plot is displayed"
    assert "eval_loss" in text(first)
    # the progress bar shows in a notebook kernel (its stderr is not a TTY)
    assert any(o.get("name") == "stderr" and "scanning" in o.get("text", "") for o in outputs(first))
    # the rerun in the live kernel: data reused, training finished from its last checkpoint, export skipped
    again = text(second)
    assert "already there, reusing it" in again
    assert "exists, skipping the export" in again
    assert "eval_loss" in again
