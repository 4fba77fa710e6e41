"""The evaluation notebooks are thin drivers (no def/class, short cells) that run end to end in smoke mode."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import REPO, requires, assert_thin_notebook

NOTEBOOKS = ["FineTome/eval_benchmark.ipynb", "FineTome/eval_llm_judge.ipynb", "FuncCall/eval_llm_judge.ipynb"]
nbformat = pytest.importorskip("nbformat")


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_notebook_is_a_thin_driver(path):
    assert_thin_notebook(REPO / path, gated=True)  # each downloads meta-llama/Llama-3.2-3B-Instruct as the base


def _run(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / path, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source += f"\nSMOKE = True\nWORKDIR = {str(tmp_path)!r}"
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb


def _images(nb):
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    return [o for o in outputs if "image/png" in o.get("data", {})]


@pytest.mark.slow
@requires("nbclient", "ipykernel", "llama_cpp", "lm_eval")
def test_benchmark_notebook_smoke(tmp_path, monkeypatch, tiny_gguf):
    nb = _run("FineTome/eval_benchmark.ipynb", tmp_path, monkeypatch)
    for name in ("base", "tuned"):
        r = json.loads((tmp_path / "results" / f"arc-{name}" / "arc-arc_challenge.json").read_text())
        assert r["n"] == 4 and len(r["items"]) == 4
    cmp = json.loads((tmp_path / "results" / "compare-arc_challenge-tuned-vs-base.json").read_text())
    assert cmp["overall"]["n"] == 4 and (cmp["a"]["model"], cmp["b"]["model"]) == ("base", "tuned")  # B − A
    assert (tmp_path / "results" / "report.md").exists() and _images(nb)


@pytest.mark.slow
@pytest.mark.parametrize("path,n", [("FineTome/eval_llm_judge.ipynb", 4), ("FuncCall/eval_llm_judge.ipynb", 3)])
@requires("nbclient", "ipykernel", "llama_cpp", "openai")
def test_judge_notebook_smoke(path, n, tmp_path, monkeypatch, tiny_gguf):
    nb = _run(path, tmp_path, monkeypatch)
    (out,) = (tmp_path / "results").glob("*-judge")
    r = json.loads((out / "judge.json").read_text())
    assert r["complete"] and r["n_prompts"] == n
    assert len((out / "verdicts.jsonl").read_text().splitlines()) <= 2 * n
    assert _images(nb) and "W/L/T" in "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
