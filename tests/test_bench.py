"""bench/run_all.py's bookkeeping on hand-made results (no benchmark is run here)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def run_all():
    spec = importlib.util.spec_from_file_location("bench_run_all", REPO / "bench" / "run_all.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


RESULTS = {
    "machine": {"cpu": "Test CPU 9000", "logical_cpus": 4, "physical_cores": 2, "ram_gib": 8.0, "os": "Linux 6",
                "python": "3.11.2", "torch": "2.13.0", "llama_cpp_python": "0.3.36", "transformers": "5.24.0",
                "date": "2026-01-02 03:04 UTC", "loadavg": [0.5, 0.4, 0.3]},
    "benches": {
        "bandwidth": {"name": "bandwidth", "status": "ok", "mode": "full", "load_before": 0.5,
                      "result": {"bench": "bandwidth", "read_gb_s": 12.5, "copy_gb_s": 20.25}},
        "train_tiny": {"name": "train_tiny", "status": "ok", "mode": "full", "load_before": 0.7, "rc": 1,
                       "result": {"step_s": 0.123, "tokens_per_s": 4321.0, "non_pad_fraction": 0.9123,
                                  "padded_non_pad_fraction": 0.61}},
        "train_demo": {"name": "train_demo", "status": "skipped", "note": "FuncCall/recipes/x.yaml not present"},
        "agent": {"name": "agent", "status": "ok", "mode": "full", "load_before": 1.5,
                  "result": {"model": "/cache/x/tiny-q8_0.gguf", "decode_ratio": 0.97, "ttft_ratio": 0.35, "calls_tool": 2.0}},
        "arc_loglik": {"name": "arc_loglik", "status": "timeout", "mode": "full", "seconds": 450.0},
        "gguf_decode": {"name": "gguf_decode", "status": "ok", "mode": "full", "load_before": 0.9,
                        "result": {"threads": 2, "read_gb_s": 12.5, "models": [
                            {"model": "runs/demo/gguf/tuned-q8_0.gguf", "bytes": 291_000_000, "prompt_tok_s": 410.5,
                             "decode_tok_s": 38.25, "bandwidth_bound_tok_s": 42.96, "bandwidth_ratio": 0.89}]}},
        "mystery": {"name": "mystery", "status": "ok", "result": {"x": 1}},
    },
}


def _row(table: str, needle: str) -> str:
    rows = [line for line in table.splitlines() if needle in line]
    assert len(rows) == 1, (needle, rows)
    return rows[0]


def test_render_table_values_targets_and_statuses(run_all):
    table = run_all.render_table(RESULTS)
    assert "Test CPU 9000" in table and "2 physical cores" in table and "torch 2.13.0" in table
    assert "2026-01-02 03:04 UTC" in table
    assert "| 12.5 |" in _row(table, "memory read bandwidth")
    non_pad = _row(table, "tiny recipe: non-pad token fraction")
    assert "0.912" in non_pad and "≥ 0.95 ❌" in non_pad  # 0.9123 misses the target
    assert "≥ 0.95 ✅" in _row(table, "decode tok/s ÷ raw")
    assert "| tiny-q8_0.gguf |" in _row(table, "agent: model")  # paths shown by their file name
    assert "≤ 0.2 ❌" in _row(table, "time to first token")
    assert _row(table, "tiny recipe: step time").count("✅") == 0  # no target, no verdict
    assert "skipped: FuncCall/recipes/x.yaml not present" in _row(table, "| train_demo |")
    assert "timeout" in _row(table, "| arc_loglik |")
    assert "no known metrics" in _row(table, "| mystery |")
    decode = _row(table, "tuned-q8_0.gguf")
    assert "| 291.0 |" in decode and "| 38.25 |" in decode and "| 0.89 |" in decode
    assert "12.5 GB/s" in table
    assert "0.5–1.5" in table  # the range of load averages before the benchmarks


def test_update_readme_replaces_only_between_markers(run_all):
    text = f"# Bench\n\nintro\n\n{run_all.BEGIN}\nold table\n{run_all.END}\n\nfooter\n"
    new = run_all.update_readme(text, "| a | b |")
    assert new == f"# Bench\n\nintro\n\n{run_all.BEGIN}\n| a | b |\n{run_all.END}\n\nfooter\n"
    assert run_all.update_readme(new, "| a | b |") == new  # idempotent
    with pytest.raises(ValueError, match="bench:begin"):
        run_all.update_readme("no markers", "x")
    with pytest.raises(ValueError):
        run_all.update_readme(f"{run_all.END}\n{run_all.BEGIN}", "x")


def test_last_json_takes_the_last_object_line(run_all):
    out = 'progress 1/2\n{"a": 1}\nnoise {not json\n{"b": 2}\n[1, 2]\ndone\n'
    assert run_all.last_json(out) == {"b": 2}
    assert run_all.last_json("no json here\n") is None


def test_table_only_cli_writes_readme_from_results(run_all, tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps(RESULTS))
    readme = tmp_path / "README.md"
    readme.write_text(f"top\n{run_all.BEGIN}\n{run_all.END}\n")
    rc = run_all.main(["--table-only", "--results", str(results), "--readme", str(readme)])
    assert rc == 1  # arc_loglik timed out
    text = readme.read_text()
    assert text.startswith("top\n") and "Test CPU 9000" in text and "tuned-q8_0.gguf" in text


def test_run_bench_records_skip_failure_and_result(run_all, tmp_path, monkeypatch):
    monkeypatch.setattr(run_all, "REPO", tmp_path)
    (tmp_path / "ok.py").write_text('print("log line"); print(\'{"bench": "ok", "v": 3}\')')
    (tmp_path / "bad.py").write_text('import sys; print("boom", file=sys.stderr); sys.exit(2)')
    (tmp_path / "slow.py").write_text("import time; time.sleep(30)")
    ok = run_all.run_bench(run_all.Bench("ok", ["ok.py"]), quick=False)
    assert ok["status"] == "ok" and ok["result"] == {"bench": "ok", "v": 3} and ok["rc"] == 0
    bad = run_all.run_bench(run_all.Bench("bad", ["bad.py"]), quick=False)
    assert bad["status"] == "failed" and bad["rc"] == 2 and "boom" in bad["stderr_tail"]
    slow = run_all.run_bench(run_all.Bench("slow", ["slow.py"], timeout=1), quick=False)
    assert slow["status"] == "timeout" and slow["seconds"] < 20
    skipped = run_all.run_bench(run_all.Bench("x", ["ok.py"], requires="missing.yaml"), quick=False)
    assert skipped["status"] == "skipped" and "missing.yaml" in skipped["note"]
    assert run_all.run_bench(run_all.Bench("f", ["ok.py"], full_only=True), quick=True)["status"] == "skipped"
