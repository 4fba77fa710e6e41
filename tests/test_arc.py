"""ARC through lm-eval on the project's ARC-style fixture: GGUF (in-process llama.cpp) and HF paths, the
generative task, the paired comparison, and in-process vs llama_cpp.server log-likelihood agreement."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import FIXTURES, requires
from llamatune.evals import arc, stats

ARC = FIXTURES / "arc_sample.jsonl"
N_FIXTURE = len(ARC.read_text().splitlines())


def test_load_arc_items_validates(tmp_path):
    items = arc.load_arc_items(ARC)
    assert len(items) == N_FIXTURE and items[0]["id"] == "LT-ARC-001"
    llama = arc.llama_process(items)
    assert len(llama) == N_FIXTURE - 1  # the 3-choice item is dropped, as Meta does
    numeric = next(it for it in llama if it["id"] == "LT-ARC-003")  # labelled 1-4 in the file
    assert numeric["answerKey"] == "B" and numeric["choices"]["label"] == list("ABCD")
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    (tmp_path / "ARC-Challenge").mkdir()
    rows = [json.loads(x) for x in ARC.read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "ARC-Challenge" / "test-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:2]), tmp_path / "ARC-Challenge" / "train-00000-of-00001.parquet")
    assert arc.load_arc_items(tmp_path) == items  # the hub's parquet layout: the test split is used
    bad = tmp_path / "bad.jsonl"
    row = json.loads(ARC.read_text().splitlines()[0])
    bad.write_text(json.dumps(row) + "\n" + json.dumps({**row, "answerKey": "E"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl: row 2: field 'answerKey' 'E' is not one of the labels"):
        arc.load_arc_items(bad)


def _check_cloze_items(result, n):
    items = result["items"]
    assert result["kind"] == "arc" and result["n"] == n == len(items)
    assert [it["id"] for it in items] == [f"LT-ARC-{i:03d}" for i in range(1, n + 1)]
    for it in items:
        assert it["pred"] == max(range(len(it["loglik"])), key=it["loglik"].__getitem__)
        assert it["correct"] == (it["pred"] == it["target"])
        assert all(ll < 0 for ll in it["loglik"])
    acc = result["aggregate"]["acc"]
    assert acc["value"] == pytest.approx(sum(it["correct"] for it in items) / n)
    assert acc["value"] == pytest.approx(result["lm_eval_results"]["acc,none"])  # lm-eval agrees
    assert acc["low"] <= acc["value"] <= acc["high"]


@requires("llama_cpp", "lm_eval")
def test_arc_gguf_inprocess(tiny_gguf, tmp_path, monkeypatch):
    from llamatune.evals.llamacpp_lm import llamacpp_lm_class

    cls = llamacpp_lm_class()
    scored = []
    real_score = cls.score_many
    monkeypatch.setattr(cls, "score_many", lambda self, pairs: scored.extend(pairs) or real_score(self, pairs))
    first = arc.run_arc(str(tiny_gguf["f16"]), tmp_path / "gguf", data_dir=ARC, limit=3)
    n_first = len(scored)
    assert n_first == sum(len(it["loglik"]) for it in first["items"])
    r = arc.run_arc(str(tiny_gguf["f16"]), tmp_path / "gguf", data_dir=ARC, limit=6)
    assert len(scored) - n_first == sum(len(it["loglik"]) for it in r["items"][3:])  # a rerun resumes
    assert r["items"][:3] == first["items"]
    _check_cloze_items(r, 6)
    assert len(r["items"][4]["loglik"]) == 3  # the 3-choice item is scored on its 3 choices
    assert r["items"][2]["target"] == 1  # answerKey "2" among labels 1-4
    saved = json.loads((tmp_path / "gguf" / "arc-arc_challenge.json").read_text())
    assert saved["items"] == r["items"] and saved["backend"] == "inproc"
    # every response is in the resumable cache
    from sqlitedict import SqliteDict

    (db,) = (tmp_path / "gguf" / "cache").glob("*.db")
    with SqliteDict(str(db)) as cache:
        assert len(cache) == sum(len(it["loglik"]) for it in r["items"])


@requires("lm_eval", "llama_cpp")
def test_arc_hf_matches_gguf(tiny_model_dir, tiny_gguf, tmp_path):
    hf = arc.run_arc(str(tiny_model_dir), tmp_path / "hf", data_dir=ARC, limit=4, batch_size=4)
    _check_cloze_items(hf, 4)
    assert hf["backend"] == "hf"
    gg = arc.run_arc(str(tiny_gguf["f16"]), tmp_path / "gguf", data_dir=ARC, limit=4)
    diffs = [abs(x - y) for a, b in zip(hf["items"], gg["items"]) for x, y in zip(a["loglik"], b["loglik"])]
    assert max(diffs) < 5e-3  # same tokens (BOS + text), f32 HF vs f16 GGUF
    # paired comparison through the CLI
    from llamatune.cli import main

    assert main(["eval", "arc", "--compare", str(tmp_path / "hf"), str(tmp_path / "gguf"), "--out", str(tmp_path)]) == 0
    (cmp_path,) = tmp_path.glob("compare-*.json")
    cmp = json.loads(cmp_path.read_text())
    mc = stats.mcnemar_exact([it["correct"] for it in hf["items"]], [it["correct"] for it in gg["items"]])
    o = cmp["overall"]
    assert cmp["kind"] == "arc_compare" and o["n"] == 4 and o["mcnemar"]["p_value"] == mc["p_value"]
    assert o["diff"]["low"] <= o["diff"]["value"] <= o["diff"]["high"]  # B − A
    assert o["diff"]["value"] == pytest.approx(o["b"]["value"] - o["a"]["value"])


@requires("llama_cpp", "lm_eval")
def test_arc_generative_llama_task(tiny_gguf, tmp_path):
    from llamatune.cli import main

    out = tmp_path / "gen"
    rc = main(["eval", "arc", "--model", str(tiny_gguf["f16"]), "--task", "arc_challenge_llama", "--data-dir",
               str(ARC), "--limit", "2", "--max-gen-toks", "4", "--out", str(out)])
    assert rc == 0
    r = json.loads((out / "arc-arc_challenge_llama.json").read_text())
    assert r["n"] == 2 and set(r["aggregate"]) == {"exact_match"}
    assert all(it["target"] in "ABCD" and isinstance(it["output"], str) for it in r["items"])
    prompt = (out / "tasks" / "arc_challenge_llama_local.yaml").read_text()
    assert "The best answer is" in prompt


def test_compare_needs_same_task():
    a = {"kind": "arc", "name": "a", "task": "arc_challenge", "items": [{"id": "1", "correct": True}]}
    b = {**a, "task": "arc_challenge_llama"}
    with pytest.raises(ValueError, match="different tasks"):
        arc.compare(a, b)


@requires("llama_cpp", "lm_eval")
def test_kv_reuse_gives_identical_scores(tiny_gguf):
    from lm_eval.api.instance import Instance

    from llamatune.evals.llamacpp_lm import LlamaCppLM

    lm = LlamaCppLM(model_path=str(tiny_gguf["f16"]), n_ctx=512)
    try:
        ctx = "Question: Which gas do plants take in from the air to make food?\nAnswer:"
        reqs = [Instance("loglikelihood", {}, (ctx, " " + c), i)
                for i, c in enumerate(["oxygen", "carbon dioxide", "nitrogen", "helium"])]
        shared = lm.loglikelihood(reqs, disable_tqdm=True)
        reused = lm.n_evaluated
        fresh = []
        for q in reqs:
            lm.decoder.clear()  # forget the cache: evaluate from scratch
            fresh.append(lm.loglikelihood([q], disable_tqdm=True)[0])
        assert [s[0] for s in shared] == pytest.approx([f[0] for f in fresh], abs=1e-4)
        assert reused < lm.n_evaluated - reused  # the shared question was evaluated once
    finally:
        lm.close()


@requires("llama_cpp", "lm_eval")
def test_inprocess_matches_llama_cpp_server(tiny_gguf):
    """The server path (lm-eval's gguf model over llama_cpp.server) is the cross-check of the fast path."""
    pytest.importorskip("llama_cpp.server")
    from lm_eval.api.instance import Instance
    from lm_eval.models.gguf import GGUFLM

    from llamatune.evals.llamacpp_lm import LlamaCppLM
    from llamatune.evals.llamacpp_server import LlamaCppServer

    reqs = [Instance("loglikelihood", {}, ("Q: sky?\nA:", c), i) for i, c in enumerate([" blue", " green"])]
    lm = LlamaCppLM(model_path=str(tiny_gguf["f16"]), n_ctx=512)
    try:
        fast = lm.loglikelihood(reqs, disable_tqdm=True)
    finally:
        lm.close()
    with LlamaCppServer(tiny_gguf["f16"], n_ctx=512) as srv:
        slow = GGUFLM(base_url=srv.url).loglikelihood(reqs, disable_tqdm=True)
    assert max(abs(a[0] - b[0]) for a, b in zip(fast, slow)) <= 1e-3


@requires("llama_cpp")
def test_server_ignores_environment_variables_named_like_its_settings(tiny_gguf, monkeypatch):
    """llama_cpp.server reads every setting from the environment too: ``make test CACHE=DIR`` used to kill it."""
    pytest.importorskip("llama_cpp.server")
    import requests

    from llamatune.evals.llamacpp_server import LlamaCppServer, server_env

    monkeypatch.setenv("CACHE", "/not/a/bool")
    monkeypatch.setenv("N_CTX", "7")
    env = server_env()
    assert "CACHE" not in env and "N_CTX" not in env and env["PATH"] == os.environ["PATH"]
    with LlamaCppServer(tiny_gguf["f16"], n_ctx=512) as srv:
        models = requests.get(srv.base_url + "/models", timeout=10).json()["data"]
        assert [m["id"] for m in models] == [str(tiny_gguf["f16"])]
