"""`llamatune demo`: the report from hand-made results, the data split and the sweep file (fast), and the whole
pipeline on the default embedded model in smoke mode, interrupted in training and resumed (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from llamatune import demo, demo_data, demo_report
from llamatune.evals.scoring import score_output
from llamatune.evals.toolcall import _write_results
from tests.conftest import requires

ROOT = Path(__file__).resolve().parent.parent
CALL = {"name": "get_current_weather", "arguments": {"location": "Paris"}}
TOOLS = [{"type": "function", "function": {"name": "get_current_weather", "parameters": {
    "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}]
GOOD_CALL = '{"name": "get_current_weather", "parameters": {"location": "Paris"}}'


def _results(path: Path, outputs: list[tuple[str, str, dict | None]]) -> None:
    items = [{"id": f"t{i}", "category": cat, **score_output(out, exp, TOOLS, cat), "output": out}
             for i, (cat, out, exp) in enumerate(outputs)]
    _write_results(items, path, model=str(path.stem), icl=0)


def _fake_demo(tmp_path: Path) -> Path:
    res = tmp_path / "results"
    base = [("single_call", "It is sunny.", CALL)] * 6 + [("no_tool", GOOD_CALL, None)] * 4
    tuned = [("single_call", GOOD_CALL, CALL)] * 5 + [("single_call", "no idea", CALL)] + \
            [("no_tool", "Hello there!", None)] * 4
    _results(res / "base.json", base)
    _results(res / "icl.json", base[:5] + tuned[5:])
    _results(res / "tuned.json", tuned)
    (tmp_path / "stages.json").write_text(json.dumps({"data": 1.0, "train": 10.0, "eval_base": 2.5}))
    return tmp_path


def test_report_from_results(tmp_path):
    out = _fake_demo(tmp_path)
    report = demo_report.write_report(out, meta={"n_test": 10, "steps": 3})
    saved = json.loads((out / "report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    for system in ("base", "icl", "tuned"):
        for metric in ("tool_accuracy", "irrelevance_accuracy", "calls_per_turn"):
            m = saved[system][metric]
            assert m["low"] <= m["value"] <= m["high"], (system, metric, m)
    assert saved["base"]["tool_accuracy"]["value"] == 0 and saved["tuned"]["tool_accuracy"]["value"] == 5 / 6
    assert saved["base"]["irrelevance_accuracy"]["value"] == 0 and saved["tuned"]["irrelevance_accuracy"]["value"] == 1
    assert saved["base"]["calls_per_turn"]["value"] == pytest.approx(1.4)  # 4 of 10 turns call: 2 LLM calls each
    mc = saved["comparisons"]["tuned vs base"]["mcnemar"]
    assert (mc["b01"], mc["b10"]) == (9, 0) and mc["p_value"] < 0.01
    assert saved["stage_seconds"] == {"data": 1.0, "train": 10.0, "eval_base": 2.5}
    md = (out / "report.md").read_text()
    assert "| tuned (LoRA) | 90% " in md and "| no_tool |" in md and "| 14 |" in md  # total seconds
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert "raw output opened no call" not in md  # no constrained rows
    items = json.loads((out / "results" / "tuned.json").read_text())["items"]
    _write_results(items, out / "results" / "tuned_constrained.json", model="tuned", icl=0, constrained=True, reused=7)
    md = demo_report.markdown(demo_report.build(out, meta={"n_test": 10}))
    assert "| tuned + constrained | 90% " in md and "keep it, as the lazy grammar would not have acted on it " \
        "(tuned + constrained 7 of 10); the rest were decoded again." in md


def test_report_tables_the_new_categories_grounding_and_the_rows_training_saw(tmp_path):
    out = _fake_demo(tmp_path)
    res = out / "results"
    result = ("tool_result", "It is 21 degrees in Paris.", None)
    _results(res / "tuned.json", [("single_call", GOOD_CALL, CALL), result, ("tool_result", GOOD_CALL, None)])
    for s, outs in (("base", ["It is sunny.", "Hello"]), ("icl", [GOOD_CALL, "Hello"]), ("tuned", [GOOD_CALL, "Hi!"])):
        _results(res / f"new_{s}.json", [("parallel", outs[0], CALL), ("near_miss", outs[1], None)])
    table = {c: {"generated": g, "unrenderable": 0, "mean_tokens": 400.0, "kept": {"1024": k},
                 "kept_tokens": {"1024": 400 * k}} for c, g, k in (("single_call", 10, 10), ("tool_result", 6, 5),
                                                                  ("all", 16, 15))}
    (out / "data").mkdir()
    (out / "data" / "demo_data.json").write_text(json.dumps({"by_category": table, "max_length": 1024, "n_packs": 6,
                                                             "val_ids": ["v1"], "mix": {"single_call": 0.6,
                                                                                        "tool_result": 0.4}}))
    (out / "tuned").mkdir()
    (out / "tuned" / "run.json").write_text(json.dumps({
        "precision": {"compute": "bfloat16", "reason": "CPU with native bf16 (amx_bf16): bfloat16"},
        "data": {"train_rows": 15, "train_sequences": 5}, "effective_batch_size": 2, "global_step": 3}))
    report = demo_report.write_report(out, meta={"n_test_new": 2, "decode_batch": 8, "steps": 3})
    assert report["tuned"]["grounded"]["k"] == 1 and report["tuned"]["grounded"]["n"] == 2  # the tool_result items
    new = report["new"]["systems"]
    assert new["base"]["accuracy"]["value"] == 0.5 and new["tuned"]["accuracy"]["value"] == 1.0
    assert "tuned vs base" in report["new"]["comparisons"]
    tr = report["training"]  # 15 rows in 5 packs (the trainer's count), 2 packs a step, 3 steps: 18 rows, 15 distinct
    assert tr["rows_per_step"] == 6.0 and tr["epochs"] == 1.2 and tr["measured_by"].startswith("tuned/run.json")
    assert tr["seen"]["all"] == {"seen": 18, "distinct": 15} and tr["seen"]["tool_result"]["distinct"] == 5
    md = (out / "report.md").read_text()
    assert "## New categories" in md and "| near_miss |" in md and "grounded answers after a tool result" in md
    assert "bfloat16" in md and "Decode batch: 8" in md and "**15 distinct rows seen**" in md
    assert "(the demo model's mix, chosen on the validation fold): single_call 0.6, tool_result 0.4." in md
    card = (out / "data" / "card.md").read_text()
    assert "seen by training" in card and "| tool_result | 6 |" in card and "val_ids" not in json.dumps(report["meta"])


def test_report_without_results_names_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="results"):
        demo_report.build(tmp_path)


def test_stratified_subset_covers_every_category():
    rows = [{"id": f"r{i:03d}", "category": c} for i, c in enumerate(["a"] * 50 + ["b"] * 30 + ["c"] * 2)]
    got = demo_data.stratified(rows, 10)
    assert len(got) == 10 and {r["category"] for r in got} == {"a", "b", "c"}
    assert got == demo_data.stratified(list(reversed(rows)), 10)  # deterministic, whatever the input order
    rows = [{"id": f"r{i:03d}", "category": c} for i, c in enumerate("a" * 98 + "b" * 45 + "c" * 45 + "d" * 27 + "e" * 25)]
    assert len(demo_data.stratified(rows, 120)) == 120  # rounding the quotas down would give 119
    assert len(demo_data.stratified(rows[:3], 10)) == 3


def test_stratified_spread_takes_a_categorys_quota_round_robin_over_its_families():
    """Part 8: the fold's no-tool items were 26 of 31 from one family, so the fold could not see a regression in the
    others; with ``spread`` a family that has many rows no longer fills its category's quota."""
    rows = [{"id": f"m{i:03d}", "category": "no_tool", "template_id": "nt-math-word"} for i in range(60)]
    rows += [{"id": f"{f}{i}", "category": "no_tool", "template_id": f"nt-{f}"} for f in ("symbol", "poem") for i in range(2)]
    rows += [{"id": f"s{i:03d}", "category": "single_call", "template_id": "cw"} for i in range(40)]
    plain = Counter(r["template_id"] for r in demo_data.stratified(rows, 24, seed=1) if r["category"] == "no_tool")
    spread = demo_data.stratified(rows, 24, seed=1, spread="template_id")
    fams = Counter(r["template_id"] for r in spread if r["category"] == "no_tool")
    assert sum(fams.values()) == sum(plain.values()) == 15  # the same quota: 24 × 64/104 rows
    assert fams == {"nt-math-word": 11, "nt-symbol": 2, "nt-poem": 2}  # every row of the small families first
    assert plain["nt-math-word"] > 11 and spread == demo_data.stratified(list(reversed(rows)), 24, seed=1, spread="template_id")


def _run_demo(out: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llamatune", "demo", "--smoke", "--out", str(out)],
                          cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, capture_output=True, text=True,
                          timeout=1800)


@pytest.mark.slow
@requires("llama_cpp", "torch", "transformers", "trl", "peft")
def test_demo_smoke_interrupted_in_training_resumes(tmp_path):
    out = tmp_path / "demo"
    first = _run_demo(out, **{demo.CRASH_ENV: "1"})
    assert first.returncode == 3, first.stdout[-3000:] + first.stderr[-3000:]
    assert "[demo] stage train: running" in first.stdout
    assert (out / "tuned" / "checkpoint-1").is_dir() and not (out / "tuned" / "adapter").exists()

    second = _run_demo(out)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "[demo] stage data: done (cached" in second.stdout
    run = json.loads((out / "tuned" / "run.json").read_text())
    assert run["status"] == "done" and run["resumed_from"] == "checkpoint-1" and run["global_step"] == demo.SMOKE["steps"]

    report = json.loads((out / "report.json").read_text())
    for system in ("base", "icl", "tuned"):
        assert {"tool_accuracy", "irrelevance_accuracy", "calls_per_turn", "by_category"} <= set(report[system])
        assert report[system]["n"] == demo.SMOKE["n_test"]
    assert {"data", "train", "export_base", "export_tuned", "eval_base", "eval_icl", "eval_tuned", "eval_new_base",
            "eval_new_icl", "eval_new_tuned"} <= set(report["stage_seconds"])
    for system in ("base", "icl", "tuned"):  # the new categories' test items, evaluated like the others
        assert report["new"]["systems"][system]["n"] == demo.SMOKE["n_test_new"]
        assert report[system]["decode_batch"] == report["meta"]["decode_batch"] > 1  # batched decoding
    assert report["training"]["rows_per_step"] > 0 and report["training"]["precision"]["compute"]
    quant = demo.MODELS[demo.DEFAULTS["model"]]["serve"]
    for name in ("base", "tuned"):  # the GGUF that is evaluated and served passes every fidelity check
        assert report["fidelity"][name]["served"] == quant and report["fidelity"][name]["served_pass"], report["fidelity"]
    assert (out / "report.md").read_text().startswith("# `llamatune demo`")
    assert (out / "report.png").stat().st_size > 0 and (out / "tuned" / "loss.png").exists()
    assert "space/app.py --models-dir" in second.stdout

    from llama_cpp import Llama

    from llamatune.chat import TEMPLATES

    model = demo.DEFAULTS["model"]
    ggufs = sorted((out / "gguf").glob("*.gguf"))
    assert [g.name for g in ggufs] == [f"{model}-base-{quant}.gguf", f"{model}-funccall-{quant}.gguf"]
    from llamatune.chat import template_text
    from llamatune.chat import model_template
    from llamatune.gguf_meta import read_gguf_metadata

    template = demo.MODELS[model]["template"]
    end_of_turn = TEMPLATES[template]["eos_token"].encode()
    for g in ggufs:  # the template training rendered is the one the GGUF embeds and serving detects
        assert read_gguf_metadata(g)["tokenizer.chat_template"] == template_text(template)
        assert model_template(g) == template
        llm = Llama(model_path=str(g), n_ctx=256, n_threads=2, verbose=False)
        try:
            assert len(llm.tokenize(end_of_turn, add_bos=False, special=True)) == 1  # one special token
            assert llm.token_eos() in llm.tokenize(end_of_turn, add_bos=False, special=True)
            assert len(llm.create_completion("The capital of France is", max_tokens=2)["choices"][0]["text"]) > 0
        finally:
            llm.close()


def test_a_tuned_run_of_another_recipe_or_data_is_set_aside_not_reused(tmp_path):
    """An edited recipe (or new rows) after a finished demo: the old run is moved aside and kept, so the train stage
    trains again instead of reporting the old adapter under the new recipe (or failing to resume it)."""
    data, run = tmp_path / "data", tmp_path / "tuned"
    data.mkdir()
    (data / "train.jsonl").write_text('{"messages": []}\n')
    model = demo.DEFAULTS["model"]
    recipe = demo.demo_recipe(data, run, 80, 1024, model)
    from llamatune.distributed import data_hashes, set_aside_stale

    def finished(recipe):
        run.mkdir()
        (run / "run.json").write_text(json.dumps({"status": "done", "recipe": recipe, "data": data_hashes(data)}))

    assert set_aside_stale(run, recipe, data) is None  # nothing there yet
    finished(recipe)
    assert set_aside_stale(run, demo.demo_recipe(data, run, 80, 1024, model), data) is None and run.exists()

    edited = demo.demo_recipe(data, run, 80, 1024, model, ["--learning_rate=0.001"])
    aside = set_aside_stale(run, edited, data)
    assert aside is not None and not run.exists() and json.loads((aside / "run.json").read_text())["recipe"] == recipe

    finished(recipe)
    (data / "train.jsonl").write_text('{"messages": [1]}\n')  # new rows, same recipe
    assert set_aside_stale(run, recipe, data) is not None and not run.exists()


@requires("transformers")
def test_demo_data_prompts_are_distinct_and_unseen(tmp_path, tiny_model_dir):
    from llamatune.data.funccall import CATEGORIES, NEW_CATEGORIES, ORIGINAL_CATEGORIES

    info = demo_data.make_data(tmp_path, 300, 30, 200, 2048, str(tiny_model_dir), "llama-3.2", n_test_new=16)
    rows = {name: [json.loads(x) for x in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
            for name in ("train", "val", "eval", "eval_new")}
    keys = {name: [demo_data.prompt_key(r) for r in rs] for name, rs in rows.items()}
    generated = {demo_data.prompt_key(json.loads(x)) for x in (tmp_path / "full" / "train.jsonl").read_text().splitlines()}
    assert len(rows["eval"]) == info["n_test"] == 30 and len(rows["eval_new"]) == info["n_test_new"] == 16
    assert len(rows["val"]) == info["n_val"] == 200  # enough to tell settings apart
    for name in ("val", "eval", "eval_new"):
        assert len(set(keys[name])) == len(keys[name]), f"a {name} prompt appears twice"
        assert not set(keys[name]) & (set(keys["train"]) | generated), f"a {name} prompt equals a training prompt"
    assert not set(keys["val"]) & (set(keys["eval"]) | set(keys["eval_new"]))
    families = json.loads((tmp_path / "full" / "manifest.json").read_text())["families"]
    for name in ("eval", "eval_new"):
        assert {f for r in rows[name] for f in r["families"]} <= set(families["test"])
    # validation: the validation fold, template families held out of training as the test's are
    assert {f for r in rows["val"] for f in r["families"]} <= set(families["val"]) and families["val"]
    assert not {f for r in rows["train"] for f in r["families"]} & set(families["val"])
    assert {r["category"] for r in rows["eval"]} == set(ORIGINAL_CATEGORIES)
    assert {r["category"] for r in rows["eval_new"]} == set(NEW_CATEGORIES)
    assert {r["category"] for r in rows["val"]} == set(CATEGORIES)  # stratified over every category
    assert not any("masked" in r or r["messages"][0]["role"] == "system" for r in rows["val"])  # dressed as the test
    table = info["by_category"]  # rows generated, kept and mean tokens per category, for the report
    assert table["all"]["generated"] == info["n_train_generated"] and table["all"]["kept"]["2048"] == info["n_train"]
    assert set(table) == {*CATEGORIES, "all"}
    assert demo_data.data_done(tmp_path, 300, 30, 200, 2048, "llama-3.2", n_test_new=16)
    assert not demo_data.data_done(tmp_path, 300, 30, 200, 2048, "smollm2", n_test_new=16)  # another template: rebuilt
    assert not demo_data.data_done(tmp_path, 300, 30, 200, 2048, "llama-3.2")  # another number of new test items
    assert not demo_data.data_done(tmp_path, 300, 30, 200, 2048, "llama-3.2", n_test_new=16, val_fraction=0)  # no fold


@requires("transformers")
def test_the_demo_models_mix_and_breadth_change_only_the_training_rows(tmp_path, tiny_model_dir):
    """A demo model's category mix (README part 8 tried demo-mix.yaml's mix-calls): the training rows follow its
    shares, with the breadth families (part 9, rejected on the fold) or contrastive pairs (part 10) it uses them,
    while the validation and test items are the same prompts as with the generator's defaults."""
    from llamatune.data.funccall_split import BREADTH

    mix = {"single_call": 0.27, "no_tool": 0.10, "tool_result": 0.08, "clarify": 0.12, "multi_turn": 0.14,
           "near_miss": 0.09, "injection": 0.03, "parallel": 0.10, "parallel_result": 0.07}
    assert demo.MODELS["smollm2-135m"]["mix"] is None  # the default shares: what the family-spread fold chose
    assert demo.MODELS["smollm2-135m"]["breadth"] is False  # the breadth families left out: part 9's fold chose it
    files = {}
    assert demo.MODELS["smollm2-135m"]["pairs"] is None  # no contrastive pairs: part 10's fold rejected them
    for name, m, breadth, pairs in (("default", None, False, None), ("mix", mix, False, None),
                                    ("wide", None, True, None), ("pairs", None, False, 0.5)):
        demo_data.make_data(tmp_path / name, 300, 30, 40, 2048, str(tiny_model_dir), "llama-3.2", mix=m, n_test_new=8,
                       breadth=breadth, pairs=pairs)
        files[name] = {f: (tmp_path / name / f"{f}.jsonl").read_text() for f in ("train", "val", "eval", "eval_new")}
    for f in ("val", "eval", "eval_new"):
        assert files["mix"][f] == files["default"][f], f"{f}.jsonl depends on the training mix"
        assert files["wide"][f] == files["default"][f], f"{f}.jsonl depends on the breadth families"
        assert files["pairs"][f] == files["default"][f], f"{f}.jsonl depends on the contrastive pairs"
    assert files["pairs"]["train"] != files["default"]["train"]
    assert demo_data.data_done(tmp_path / "pairs", 300, 30, 40, 2048, "llama-3.2", n_test_new=8, pairs=0.5)
    assert not demo_data.data_done(tmp_path / "pairs", 300, 30, 40, 2048, "llama-3.2", n_test_new=8)
    fams = {k: {f for x in v["train"].splitlines() for f in json.loads(x)["families"]} for k, v in files.items()}
    assert fams["wide"] & BREADTH and not fams["default"] & BREADTH
    assert demo_data.data_done(tmp_path / "wide", 300, 30, 40, 2048, "llama-3.2", n_test_new=8, breadth=True)
    assert not demo_data.data_done(tmp_path / "wide", 300, 30, 40, 2048, "llama-3.2", n_test_new=8)
    counts = {k: Counter(json.loads(x)["category"] for x in v["train"].splitlines()) for k, v in files.items()}
    n = sum(counts["mix"].values())
    assert counts["mix"]["single_call"] > counts["default"]["single_call"]  # 0.27 against the default 0.20
    assert counts["mix"]["tool_result"] < counts["default"]["tool_result"]  # 0.08 against 0.16
    assert abs(counts["mix"]["clarify"] / n - mix["clarify"]) < 0.03
    info = json.loads((tmp_path / "mix" / "demo_data.json").read_text())
    assert info["mix"] == mix and demo_data.data_done(tmp_path / "mix", 300, 30, 40, 2048, "llama-3.2", mix, n_test_new=8)
    assert not demo_data.data_done(tmp_path / "mix", 300, 30, 40, 2048, "llama-3.2", n_test_new=8)  # the default: rebuilt


def test_the_report_says_which_template_families_and_mix_trained_the_model():
    from llamatune.data.lengths import by_category
    from llamatune.demo_report import _training_lines

    table = by_category([{"category": "no_tool"}, {"category": "single_call"}], [100, 200], [512])
    for breadth, says in ((False, "breadth families of part 9 left out"), (True, "breadth families of part 9 included")):
        text = "\n".join(_training_lines({"meta": {"by_category": table, "max_length": 512, "breadth": breadth,
                                                    "mix": {"no_tool": 0.5, "single_call": 0.5}}}))
        assert says in text and "no_tool 0.5, single_call 0.5" in text
    assert "breadth" not in "\n".join(_training_lines({"meta": {"by_category": table, "max_length": 512}}))
    text = "\n".join(_training_lines({"meta": {"by_category": table, "max_length": 512, "pairs": 0.5}}))
    assert "Contrastive pairs (part 10): 0.5 of the clarify rows" in text
    assert "Contrastive" not in "\n".join(_training_lines({"meta": {"by_category": table, "max_length": 512,
                                                                      "pairs": None}}))


def test_demo_test_items_of_the_original_categories_do_not_depend_on_the_new_ones():
    """The demo's test items are drawn from the original categories only: the new categories' rows (which come after
    them in eval.jsonl) change neither the pool nor the pick."""
    from llamatune.data.funccall import NEW_CATEGORIES

    rows = [{"id": f"fc-test-{i:05d}", "category": c} for i, c in enumerate(["single_call"] * 40 + ["no_tool"] * 30)]
    new = [{"id": f"fc-test-new-{i:05d}", "category": "parallel"} for i in range(30)]

    assert demo_data.stratified([r for r in rows + new if r["category"] not in NEW_CATEGORIES], 20) == \
        demo_data.stratified(rows, 20)
    weighted = demo_data.stratified(rows + new, 20, weights={"single_call": 0.5, "no_tool": 0.25, "parallel": 0.25})
    assert Counter(r["category"] for r in weighted) == Counter({"single_call": 10, "no_tool": 5, "parallel": 5})


def test_demo_refuses_to_mix_models_in_one_directory(tmp_path):
    (tmp_path / "demo_model.txt").write_text("gemma-3-270m\n")
    with pytest.raises(ValueError, match="holds a demo of gemma-3-270m"):
        demo.run_demo(tmp_path, **{**demo.DEFAULTS, "model": "smollm2-135m"})
    with pytest.raises(ValueError, match="tunes one of"):
        demo.run_demo(tmp_path / "x", **{**demo.DEFAULTS, "model": "gpt-5"})


def test_the_successive_halving_sweep_file_searches_the_demo_recipe_on_validation():
    from llamatune import sweep

    spec = sweep.load_sweep(ROOT / "FuncCall" / "recipes" / "demo-sha.yaml")
    assert spec["search"]["rungs"][-1] == demo.DEFAULTS["steps"] and len(spec["search"]["rungs"]) >= 2
    assert spec["base"]["max_length"] == demo.DEFAULTS["max_length"] and spec["base"]["n_val"] >= 200
    assert {r["model"] for r in spec["runs"]} == {demo.DEFAULTS["model"]} and len(spec["runs"]) >= 4


def test_sweep_file_is_checked_and_tabled(tmp_path):
    from llamatune import sweep, sweep_report

    spec = sweep.load_sweep(ROOT / "FuncCall" / "recipes" / "demo-sweep.yaml")
    assert {r["model"] for r in spec["runs"]} == set(demo.MODELS) and spec["base"]["n_val"] > 0
    bad = tmp_path / "s.yaml"
    bad.write_text("runs:\n  - {name: a, model: smollm2-135m, stpes: 3}\n")
    with pytest.raises(ValueError, match=r"s.yaml: runs\[0\]: unknown keys \['stpes'\]"):
        sweep.load_sweep(bad)
    bad.write_text("runs:\n  - {name: a, model: nope}\n")
    with pytest.raises(ValueError, match="needs a name and a model"):
        sweep.load_sweep(bad)
    m = lambda v: {"value": v, "low": max(0, v - 0.1), "high": min(1, v + 0.1)}  # noqa: E731
    val = lambda a: {"accuracy": m(a), "tool_accuracy": m(a), "irrelevance_accuracy": m(a),  # noqa: E731
                     "calls_per_turn": {"value": 1.5}}
    rows = [{"name": "slow", "model": "smollm2-135m", "steps": 9, "set": {"learning_rate": 1e-3}, "mix": None,
             "val": val(0.8), "base_val": val(0.2), "train_seconds": 90, "eval_seconds": 5, "n_val": 10},
            {"name": "fast", "model": "smollm2-135m", "steps": 3, "set": {}, "mix": {"no_tool": 0.5},
             "val": val(0.8), "base_val": val(0.2), "train_seconds": 30, "eval_seconds": 5, "n_val": 10}]
    md = sweep_report.markdown(rows)
    assert "| slow | smollm2-135m | 9 | learning_rate=0.001 | 80% [70, 90]" in md
    assert "recipe as is; mix no_tool=0.5" in md and "| *untuned base* | smollm2-135m | 0 |" in md
    assert "Best by the score: **fast**" in md  # a tie goes to the cheaper setting
    assert "items of the training template families" in md
    assert "items of the validation fold (template families held out of training, 0.2 of each group's)" in \
        sweep_report.markdown(rows, None, 0.2)


def test_sweep_only_runs_the_named_settings_and_tables_every_scored_one(tmp_path, monkeypatch):
    from llamatune import sweep

    spec = tmp_path / "s.yaml"
    spec.write_text("runs:\n  - {name: old, model: smollm2-135m, steps: 3}\n  - {name: new, model: smollm2-135m}\n"
                    "  - {name: never, model: smollm2-135m}\n")
    out = tmp_path / "out"
    for d in ("old", "base-smollm2-135m"):  # 'old' was trained, exported and scored by an earlier invocation
        (out / d / "adapter").mkdir(parents=True)
        (out / d / "gguf").mkdir()
        (out / d / "val.json").write_text("{}")
    (out / "old" / "adapter" / "adapter_model.safetensors").write_bytes(b"x")
    (out / "old" / "run.json").write_text('{"status": "done"}')
    (out / "old" / "fidelity.json").write_text("{}")
    (out / "old" / "gguf" / "m-q8_0.gguf").write_bytes(b"x")
    called = []
    m = {"value": 0.5, "low": 0.4, "high": 0.6}
    row = {"accuracy": m, "tool_accuracy": m, "irrelevance_accuracy": m, "calls_per_turn": {"value": 1.0}}
    monkeypatch.setattr(sweep, "run_setting", lambda o, b, r: called.append(r["name"]) or {
        "name": r["name"], "model": r["model"], "steps": 3, "set": {}, "mix": None, "val": row, "base_val": row,
        "train_seconds": 1, "eval_seconds": 1, "n_val": 4})
    rows = sweep.run_sweep(spec, out, only=["new"])
    assert called == ["old", "new"] and [r["name"] for r in rows] == ["old", "new"]  # 'never' has no result
    assert "| old |" in (out / "sweep.md").read_text() and "| never |" not in (out / "sweep.md").read_text()


def test_a_failed_fidelity_check_of_the_served_quant_stops_the_demo(tmp_path, monkeypatch):
    import llamatune.export as export_mod
    from llamatune.export import FidelityError

    out = tmp_path / "tuned"
    (out / "gguf").mkdir(parents=True)
    (out / "gguf" / "m-q8_0.gguf").write_bytes(b"x")
    reports = {"f16": {"pass": False, "failures": ["top-1 agreement 0.90 < 0.99"]}, "q8_0": {"pass": True}}
    (out / "fidelity.json").write_text(json.dumps({"reports": reports}))
    monkeypatch.setattr(export_mod, "export", lambda *a, **k: {"fidelity": reports, "fidelity_path": "f.json"})
    with pytest.raises(FidelityError, match=r"m: the f16 GGUF the demo evaluates and serves failed.*0.90 < 0.99"):
        demo.run_export(out, out, "m", False, "smollm2", "f16")
    assert demo.run_export(out, out, "m", False, "smollm2", "q8_0")["fidelity"] is reports  # q8_0 passed
    assert demo.run_export(out, out, "m", False, "smollm2")["fidelity"] is reports  # nothing required: reported
    # a rerun does not take the failed export as done
    assert not demo.export_done(out, "f16") and demo.export_done(out, "q8_0") and demo.export_done(out)
    (out / "fidelity.json").write_text('{"reports": {"f16": ')  # torn
    assert not demo.export_done(out, "f16")
