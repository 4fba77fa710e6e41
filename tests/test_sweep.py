"""`llamatune sweep` with successive halving: the rungs, who continues, where each rung starts from, the table."""

import json

import pytest

from llamatune import sweep, sweep_report
from tests.conftest import load_script


def _metric(v, n=100):
    return {"value": v, "low": max(0.0, v - 0.1), "high": min(1.0, v + 0.1), "n": n}


def _val(tool, irr):
    return {"accuracy": _metric((tool + irr) / 2), "tool_accuracy": _metric(tool),
            "irrelevance_accuracy": _metric(irr), "calls_per_turn": _metric(1.2)}


def test_rungs_divide_the_budget_by_eta_down_to_the_minimum():
    assert sweep.rungs(600, 2, 150) == [150, 300, 600]
    assert sweep.rungs(100, 3, 10) == [11, 33, 100]
    assert sweep.rungs(100, 2, 100) == [100]


def test_selection_score_weighs_not_calling_as_much_as_calling():
    assert sweep_report.selection_score(_val(0.9, 0.1)) == pytest.approx(0.5)
    assert sweep_report.selection_score(_val(0.5, 0.7)) == pytest.approx(0.6)  # fewer right calls, but it stops: better


def _row(name, tool, irr, accuracy, train_seconds=10.0, rung=None):
    val = {**_val(tool, irr), "accuracy": _metric(accuracy)}
    return {"name": name, "model": "smollm2-135m", "steps": 80, "budget": 80, "set": {}, "mix": None, "val": val,
            "base_val": _val(0.0, 1.0), "train_seconds": train_seconds, "eval_seconds": 5.0, "n_val": 240,
            "score": sweep_report.selection_score(val), "rung": rung}


def test_a_tie_on_the_score_goes_to_the_higher_validation_accuracy_not_the_faster_run():
    # part 8's two mixes: 44/99 calls and 130/141 declines each, 62% and 68% of all items; the default trained faster
    rows = [_row("default", 0.444, 0.922, 0.62, train_seconds=643), _row("mix", 0.444, 0.922, 0.68, train_seconds=651)]
    assert sweep_report.selection_key(rows[0]["val"]) < sweep_report.selection_key(rows[1]["val"])
    md = sweep_report.markdown(rows, None, 0.2)
    assert "Best by the score: **mix**" in md and "a tie goes to the higher val accuracy" in md
    # a better score still wins over a higher accuracy
    assert "Best by the score: **default**" in sweep_report.markdown([_row("default", 0.5, 0.922, 0.6), rows[1]],
                                                                       None, 0.2)


def _spec_file(tmp_path, runs, search):
    import yaml

    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"base": {"n_val": 10}, "search": search, "runs": runs}))
    return p


def test_a_halving_sweep_is_checked(tmp_path):
    ok = [{"name": "a", "model": "smollm2-135m", "steps": 400}, {"name": "b", "model": "smollm2-135m", "steps": 400}]
    spec = sweep.load_sweep(_spec_file(tmp_path, ok, {"method": "successive_halving", "eta": 2, "min_steps": 100}))
    assert spec["search"]["rungs"] == [100, 200, 400]
    uneven = [ok[0], {**ok[1], "steps": 300}]
    with pytest.raises(ValueError, match="same step budget"):
        sweep.load_sweep(_spec_file(tmp_path, uneven, {"method": "successive_halving"}))
    with pytest.raises(ValueError, match="search must be"):
        sweep.load_sweep(_spec_file(tmp_path, ok, {"method": "random"}))
    with pytest.raises(ValueError, match="eta"):
        sweep.load_sweep(_spec_file(tmp_path, ok, {"method": "successive_halving", "eta": 1}))


def test_halving_continues_the_best_half_from_their_own_checkpoints_and_tables_every_rung(tmp_path):
    runs = [{"name": n, "model": "smollm2-135m", "steps": 400} for n in ("a", "b", "c", "d", "e")]
    spec = sweep.load_sweep(_spec_file(tmp_path, runs, {"method": "successive_halving", "eta": 2, "min_steps": 100}))
    # validation scores by setting and rung: "a" leads early and fades, "d" starts slow and wins
    scores = {("a", 100): (0.6, 0.6), ("b", 100): (0.2, 0.3), ("c", 100): (0.5, 0.5), ("d", 100): (0.55, 0.5),
              ("e", 100): (0.1, 0.9),
              ("a", 200): (0.6, 0.6), ("c", 200): (0.4, 0.4), ("d", 200): (0.7, 0.7),
              ("a", 400): (0.6, 0.65), ("d", 400): (0.8, 0.8)}
    calls = []

    def run_one(out, base, run, stop_at=None, prev=None):
        calls.append((run["name"], stop_at, prev))
        val = _val(*scores[(run["name"], stop_at)])
        return {"name": run["name"], "model": run["model"], "steps": stop_at, "budget": run["steps"],
                "set": {}, "mix": None, "max_length": 512, "val": val, "base_val": _val(0.0, 0.5),
                "train_seconds": 10.0, "eval_seconds": 5.0, "n_val": 100, "score": sweep_report.selection_score(val)}

    rows, winner = sweep.halving(spec, tmp_path, run_one)
    assert winner == "d"
    # rung 1: all five from scratch; rung 2: the best ceil(5/2) = 3 (a 0.6, d 0.525, c 0.5 = e 0.5: c listed first)
    assert calls[:5] == [(n, 100, None) for n in "abcde"]
    assert calls[5:8] == [("a", 200, 100), ("c", 200, 100), ("d", 200, 100)]
    assert calls[8:] == [("a", 400, 200), ("d", 400, 200)]  # ceil(3/2) = 2: d 0.7, a 0.6
    assert [r["rung"] for r in rows] == [1] * 5 + [2] * 3 + [3] * 2
    survived = {(r["name"], r["rung"]) for r in rows if r["survived"]}
    assert survived == {("a", 1), ("c", 1), ("d", 1), ("a", 2), ("d", 2)}
    md = (tmp_path / "sweep.md").read_text()
    assert "| e | smollm2-135m | 1 | 100/400 |" in md  # the setting dropped at the first rung is tabled too
    assert "| d | smollm2-135m | 3 | 400/400 |" in md and "Best by the score after the last rung: **d**" in md
    assert len(json.loads((tmp_path / "sweep.json").read_text())) == 10


def test_a_validation_result_is_scored_again_when_the_validation_items_changed(tmp_path, monkeypatch):
    from llamatune.evals import toolcall

    gguf, data = tmp_path / "m.gguf", tmp_path / "data"
    gguf.write_bytes(b"GGUF model")
    data.mkdir()
    (data / "val.jsonl").write_text('{"id": "v1"}\n')
    calls = []

    def fake_evaluate(model, path, out, **kw):
        calls.append(path)
        res = {"fingerprint": toolcall.fingerprint(toolcall.parse_spec(str(model))), "icl": 0,
               "data_sha256": toolcall.sha256_file(path), "max_tokens": kw["max_tokens"], "template": kw["template"],
               "aggregate": {"overall": {"n": 1}}}
        out.write_text(json.dumps(res))
        return res

    monkeypatch.setattr(toolcall, "evaluate", fake_evaluate)
    base = {"max_tokens": 64, "threads": 2}
    out = tmp_path / "val.json"
    sweep._evaluate(gguf, data, out, base, "smollm2")
    sweep._evaluate(gguf, data, out, base, "smollm2")
    assert len(calls) == 1  # the same model on the same items: read back
    (data / "val.jsonl").write_text('{"id": "v2"}\n')  # a new validation draw
    sweep._evaluate(gguf, data, out, base, "smollm2")
    assert len(calls) == 2
    gguf.write_bytes(b"GGUF retrained")  # or a new model under the same path
    sweep._evaluate(gguf, data, out, base, "smollm2")
    assert len(calls) == 3


def test_a_rung_starts_from_the_previous_rungs_checkpoint(tmp_path):
    prev, cur = tmp_path / "a" / "steps-100", tmp_path / "a" / "steps-200"
    ck = prev / "checkpoint-100"
    ck.mkdir(parents=True)
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": 100, "max_steps": 200}))
    (ck / "adapter_model.safetensors").write_bytes(b"weights")
    sweep._seed_checkpoint(prev, cur, 100)
    assert (cur / "checkpoint-100" / "adapter_model.safetensors").read_bytes() == b"weights"
    (ck / "adapter_model.safetensors").write_bytes(b"changed")
    sweep._seed_checkpoint(prev, cur, 100)  # the rung's own checkpoint is kept (a resumed rung)
    assert (cur / "checkpoint-100" / "adapter_model.safetensors").read_bytes() == b"weights"
    with pytest.raises(FileNotFoundError, match="checkpoint-50"):
        sweep._seed_checkpoint(prev, tmp_path / "b", 50)


def _toolcall_result(correct):
    return {"items": [{"id": f"i{k}", "category": "single_call", "correct": c} for k, c in enumerate(correct)]}


def test_precision_val_trains_both_arms_through_the_same_rungs_and_compares_them_paired(tmp_path, monkeypatch, capsys):
    """bench/precision_val.py: the bf16 arm is the sweep's own setting, the fp32 arm the same with ``bf16: false``,
    each trained rung by rung as the sweep does; the comparison is fp32 − bf16 on the same validation items."""
    runs = [{"name": "a", "model": "smollm2-135m", "steps": 80, "set": {"learning_rate": 1e-3}}]
    f = _spec_file(tmp_path, runs, {"method": "successive_halving", "eta": 2, "min_steps": 20})
    calls = []
    correct = {"a": [True] * 6 + [False] * 4, "a-fp32": [True] * 5 + [False] * 5}

    def fake_run(out, base, run, stop_at=None, prev=None, compute=None):
        calls.append((run["name"], run["set"], stop_at, prev))
        d = out / run["name"] / f"steps-{stop_at}"
        d.mkdir(parents=True, exist_ok=True)
        dtype = compute or ("bfloat16" if run["set"]["bf16"] else "float32")
        (d / "run.json").write_text(json.dumps({"precision": {"compute": dtype}}))
        (d / "val.json").write_text(json.dumps(_toolcall_result(correct[run["name"]])))
        return {"score": 0.5, "train_seconds": 1.0, "val": _val(0.6, 0.4)}

    monkeypatch.setattr(sweep, "run_setting", fake_run)
    bench = load_script("bench/precision_val.py", "bench_precision_val")
    assert bench.main([str(f), "--out", str(tmp_path / "o"), "--setting", "a", "--steps", "40"]) == 0
    assert calls == [("a", {"learning_rate": 1e-3, "bf16": True}, 20, None),
                     ("a", {"learning_rate": 1e-3, "bf16": True}, 40, 20),
                     ("a-fp32", {"learning_rate": 1e-3, "bf16": False}, 20, None),
                     ("a-fp32", {"learning_rate": 1e-3, "bf16": False}, 40, 20)]
    line = json.loads(capsys.readouterr().out)
    assert line["fp32_minus_bf16"]["a"]["k"] == 6 and line["fp32_minus_bf16"]["b"]["k"] == 5
    assert line["fp32_minus_bf16"]["diff"]["value"] == pytest.approx(-0.1)

    with pytest.raises(SystemExit, match="not a rung"):
        bench.main([str(f), "--out", str(tmp_path / "o"), "--setting", "a", "--steps", "30"])
    with pytest.raises(SystemExit, match="no setting named"):
        bench.main([str(f), "--out", str(tmp_path / "o"), "--setting", "zz", "--steps", "20"])
    monkeypatch.setattr(sweep, "run_setting", lambda *a, **k: fake_run(*a, **k, compute="bfloat16"))
    with pytest.raises(SystemExit, match="trained in bfloat16, expected fp32"):
        bench.main([str(f), "--out", str(tmp_path / "o2"), "--setting", "a", "--steps", "20"])


def _data_stage_recorded(monkeypatch, key: str) -> tuple[list, dict]:
    """The demo's data stage replaced by a recorder of (directory name, its ``key`` argument); a sweep's base."""
    from llamatune import demo_data

    built = []
    monkeypatch.setattr(demo_data, "data_done", lambda *a, **kw: False)
    monkeypatch.setattr(demo_data, "make_data", lambda d, *a, **kw: built.append((d.name, kw[key])))
    monkeypatch.setattr("llamatune.models.resolve_model", lambda m: "/models/" + m)
    return built, {"n": 100, "n_test": 10, "n_val": 10, "max_length": 1024, "max_tokens": 64, "threads": 2,
                   "val_fraction": 0.2}


def test_a_setting_without_the_breadth_families_gets_its_own_data_and_is_named_in_the_table(tmp_path, monkeypatch):
    """``breadth: true`` (README part 9's rejected arm) trains on rows with the breadth families: its own data
    directory, built with ``breadth=True``; the table names it; any other key is refused."""
    from llamatune import demo

    built, base = _data_stage_recorded(monkeypatch, "breadth")
    narrow, wide = (sweep._data(tmp_path, base, "smollm2-135m", None, b) for b in (False, True))
    assert narrow != wide and built == [(narrow.name, False), (wide.name, True)]
    md = sweep_report.markdown([_row("narrow", 0.5, 0.9, 0.6), {**_row("wide", 0.5, 0.9, 0.6), "breadth": True}],
                               None, 0.2)
    assert md.count("breadth families") == 1 and "| wide |" in md.split("breadth families")[0].splitlines()[-1]
    runs = [{"name": "a", "model": "smollm2-135m", "breadth": False}]
    assert sweep.load_sweep(_spec_file(tmp_path, runs, None))["runs"][0]["breadth"] is False
    with pytest.raises(ValueError, match="unknown keys"):
        sweep.load_sweep(_spec_file(tmp_path, [{**runs[0], "breath": True}], None))
    with pytest.raises(ValueError, match="breadth must be"):
        sweep.load_sweep(_spec_file(tmp_path, [{**runs[0], "breadth": "no"}], None))


def test_a_setting_with_contrastive_pairs_gets_its_own_data_and_is_named_in_the_table(tmp_path, monkeypatch):
    """``pairs: SHARE`` (README part 10) trains on rows with contrastive pairs: its own data directory, built with
    that share; the table names it; a share outside [0, 1] or a non-number is refused."""
    built, base = _data_stage_recorded(monkeypatch, "pairs")
    plain, paired = (sweep._data(tmp_path, base, "smollm2-135m", None, False, p) for p in (None, 0.5))
    assert plain != paired and built == [(plain.name, None), (paired.name, 0.5)]
    md = sweep_report.markdown([_row("narrow", 0.5, 0.9, 0.6), {**_row("paired", 0.5, 0.9, 0.6), "pairs": 0.5}],
                               None, 0.2)
    assert md.count("contrastive pairs 0.5") == 1
    assert "| paired |" in md.split("contrastive pairs")[0].splitlines()[-1]
    runs = [{"name": "a", "model": "smollm2-135m", "pairs": 0.5}]
    assert sweep.load_sweep(_spec_file(tmp_path, runs, None))["runs"][0]["pairs"] == 0.5
    for bad in (1.5, -0.1, "half", True):
        with pytest.raises(ValueError, match="pairs must be a share"):
            sweep.load_sweep(_spec_file(tmp_path, [{**runs[0], "pairs": bad}], None))


def test_seeds_expand_a_setting_into_one_run_per_seed_and_the_best_is_the_best_mean(tmp_path):
    import yaml

    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"runs": [
        {"name": "narrow", "model": "smollm2-135m", "set": {"r": 32}, "seeds": [0, 1]},
        {"name": "lever", "model": "smollm2-135m", "set": {"r": 32, "decision_weight": 10}, "seeds": [0, 1]},
        {"name": "once", "model": "smollm2-135m"}]}))
    runs = sweep.load_sweep(p)["runs"]
    assert [(r["name"], r.get("setting"), r.get("set")) for r in runs] == [
        ("narrow-seed0", "narrow", {"r": 32, "seed": 0}), ("narrow-seed1", "narrow", {"r": 32, "seed": 1}),
        ("lever-seed0", "lever", {"r": 32, "decision_weight": 10, "seed": 0}),
        ("lever-seed1", "lever", {"r": 32, "decision_weight": 10, "seed": 1}), ("once", None, None)]
    # part 11's numbers: narrow's best seed beats the lever's best, but the lever's mean is higher
    rows = [{**_row("narrow-seed0", 0.52, 0.86, 0.70), "setting": "narrow", "set": {"seed": 0}},
            {**_row("narrow-seed1", 0.30, 0.80, 0.55), "setting": "narrow", "set": {"seed": 1}},
            {**_row("lever-seed0", 0.43, 0.90, 0.66), "setting": "lever", "set": {"seed": 0}},
            {**_row("lever-seed1", 0.45, 0.88, 0.66), "setting": "lever", "set": {"seed": 1}}]
    groups = {g["setting"]: g for g in sweep_report.by_setting(rows)}
    assert groups["narrow"]["seeds"] == [0, 1] and groups["narrow"]["mean"] == pytest.approx((0.69 + 0.55) / 2)
    assert groups["lever"]["min"] == pytest.approx(0.665) and groups["lever"]["max"] == pytest.approx(0.665)
    md = sweep_report.markdown(rows, None, 0.2)
    assert "Best by the mean score over seeds: **lever** (0.665, 2 seed(s))" in md
    assert "| narrow | 0, 1 | 0.620 [0.550, 0.690] | 62% | -0.045, p = 1.00 (smallest possible 0.33) |" in md
    assert "| lever | 0, 1 | 0.665 [0.665, 0.665] | 66% | – |" in md and "Best by the score:" not in md
    mixed = sweep_report.markdown(rows[2:] + [_row("once", 0.40, 0.80, 0.60)], None, 0.2)  # an unseeded setting beside
    assert "| once | recipe's | 0.600 [0.600, 0.600] | 60% | -0.065, p = 0.33 (smallest possible 0.33) |" in mixed
    assert "| category |" not in md  # rows without per-category counts (older sweep.json): no category table
    cats = [{"near_miss": [15, 24], "multi_turn": [27, 29]}, {"near_miss": [12, 24], "multi_turn": [12, 29]},
            {"near_miss": [20, 24], "multi_turn": [19, 29]}, {"near_miss": [21, 24], "multi_turn": [20, 29]}]
    by_cat = sweep_report.markdown([{**r, "val_categories": c} for r, c in zip(rows, cats)], None, 0.2)
    assert "| category | n | narrow: right, mean [min, max] | lever: right, mean [min, max] |" in by_cat
    assert "| multi_turn | 29 | 19.5 [12, 27] | 19.5 [19, 20] |" in by_cat
    assert "| near_miss | 24 | 13.5 [12, 15] | 20.5 [20, 21] |" in by_cat
    one_each = sweep_report.markdown(rows[:1] + rows[2:3], None, 0.2)  # one seed each: the better seed-0 run wins
    assert "Best by the mean score over seeds: **narrow** (0.690, 1 seed(s))" in one_each


@pytest.mark.parametrize("runs, message", [
    ([{"name": "a", "model": "smollm2-135m", "seeds": [0, 0]}], "distinct integers"),
    ([{"name": "a", "model": "smollm2-135m", "seeds": []}], "distinct integers"),
    ([{"name": "a", "model": "smollm2-135m", "seeds": [0], "set": {"seed": 3}}], "seeds or set.seed, not both"),
    ([{"name": "a", "model": "smollm2-135m", "seeds": [0]}, {"name": "a-seed0", "model": "smollm2-135m"}],
     "run names repeat"),
])
def test_bad_seeds_are_refused(tmp_path, runs, message):
    import yaml

    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"runs": runs}))
    with pytest.raises(ValueError, match=message):
        sweep.load_sweep(p)


def test_seeds_and_successive_halving_are_refused_together(tmp_path):
    p = _spec_file(tmp_path, [{"name": "a", "model": "smollm2-135m", "steps": 80, "seeds": [0, 1]}],
                   {"method": "successive_halving", "eta": 2, "min_steps": 20})
    with pytest.raises(ValueError, match="seeds and successive halving"):
        sweep.load_sweep(p)


def test_a_rows_category_counts_come_from_the_evaluators_aggregate():
    from llamatune.evals.toolcall import aggregate

    item = {"expects_call": True, "name_correct": True, "attempted": True, "format_valid": True, "clarified": False,
            "llm_calls": 2}
    items = [{**item, "category": "single_call", "correct": c} for c in (True, True, False)]
    items += [{**item, "category": "near_miss", "expects_call": False, "attempted": False, "correct": True,
               "llm_calls": 1}]
    assert sweep._categories({"aggregate": aggregate(items)}) == {"near_miss": [1, 1], "single_call": [2, 3]}
