"""BFCL v4 in the project: converters and BFCL-semantics scoring on real BFCL rows (tests/fixtures/bfcl_v4_sample.json,
Apache-2.0, copied unchanged from the bfcl-eval 2026.3.23 wheel), and the eval's run / cache / results / limit on a
fake wheel built from those rows and a fake generator. Offline and fast; the agreement with BFCL's own checker is
``make bfcl-agreement`` (an isolated environment), not this file."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from llamatune.evals import bfcl, bfcl_data, bfcl_score, toolcall
from llamatune.generate import Generator

FIXTURE = Path(__file__).parent / "fixtures" / "bfcl_v4_sample.json"
RAW = {r["id"]: r for r in json.loads(FIXTURE.read_text(encoding="utf-8"))["rows"]}


def row(bfcl_id: str) -> dict:
    raw = RAW[bfcl_id]
    return bfcl_data.convert_row(raw, raw["category"])


def score(bfcl_id: str, output) -> dict:
    r = row(bfcl_id)
    out = output if isinstance(output, str) else json.dumps(output)
    return bfcl_score.score_output(out, r["expected"], r["tools"], r["category"])


def call(name, **args):
    return {"name": name, "parameters": args}


# --- converters ---------------------------------------------------------------------------------------------

def test_float_becomes_number_with_bfcl_format_and_note():
    tool = row("irrelevance_0")["tools"][0]
    assert tool == {"type": "function", "function": {
        "name": "determine_body_mass_index", "description": "Calculate body mass index given weight and height.",
        "parameters": {"type": "object", "properties": {
            "weight": {"type": "number", "format": "float",
                       "description": "Weight of the individual in kilograms. This is a float type value."},
            "height": {"type": "number", "format": "float",
                       "description": "Height of the individual in meters. This is a float type value."}},
            "required": ["weight", "height"]}}}


def test_array_items_and_tuple_are_cast_but_items_get_no_float_note():
    props = row("simple_python_13")["tools"][0]["function"]["parameters"]["properties"]
    assert props["interval"] == {"type": "array", "items": {"type": "number"}, "description": RAW["simple_python_13"][
        "function"][0]["parameters"]["properties"]["interval"]["description"]}
    coord = row("simple_python_83")["tools"][0]["function"]["parameters"]["properties"]["coord1"]
    assert coord == {"type": "array", "description": "The first coordinate as (latitude, longitude).",
                     "items": {"type": "number"}}


def test_dict_with_properties_and_list_of_dicts_recurse():
    props = row("simple_python_89")["tools"][0]["function"]["parameters"]["properties"]
    assert props["conditions"]["type"] == "object"
    assert {k: v["type"] for k, v in props["conditions"]["properties"].items()} == {"department": "string",
                                                                                     "school": "string"}
    fn = row("simple_python_96")["tools"][0]["function"]
    assert fn["name"] == "database_query"  # BFCL's FC conversion: no "." in function names
    items = fn["parameters"]["properties"]["conditions"]["items"]
    assert items["type"] == "object" and items["required"] == ["field", "operation", "value"]
    assert items["properties"]["operation"] == {"type": "string", "description": "The operation to be performed.",
                                                "enum": ["<", ">", "=", ">=", "<="]}


def test_any_becomes_string_and_the_source_doc_is_untouched():
    before = json.dumps(RAW["simple_python_109"])
    assert row("simple_python_109")["tools"][0]["function"]["parameters"]["properties"]["data"]["type"] == "string"
    assert json.dumps(RAW["simple_python_109"]) == before


def test_ground_truth_becomes_expected():
    assert row("simple_python_0")["expected"] == {
        "name": "calculate_triangle_area", "bfcl_name": "calculate_triangle_area",
        "arguments": {"base": 10, "height": 5},
        "possible": {"base": [10], "height": [5], "unit": ["units", ""]}, "optional": ["unit"]}
    # "" accepted, but the schema requires it: the example call must still give it
    assert row("simple_python_17")["expected"]["arguments"] == {"number": 450, "formatted": True}
    # a dict argument: its accepted values per key resolved to one correct dict
    assert row("simple_python_89")["expected"]["arguments"]["conditions"] == {"department": "Science",
                                                                             "school": "Bluebird High School"}
    par = row("parallel_0")["expected"]
    assert [(c["name"], c["arguments"]) for c in par] == [("spotify_play", {"artist": "Taylor Swift", "duration": 20}),
                                                          ("spotify_play", {"artist": "Maroon 5", "duration": 15})]
    assert row("irrelevance_0")["expected"] is None and row("live_irrelevance_120-9-0")["tools"] == []


def test_live_rows_keep_their_system_turn_and_bfcl_id():
    r = row("live_simple_58-27-0")
    assert r["id"] == "live_simple_58-27-0" and [m["role"] for m in r["messages"]] == ["system", "user"]
    p = bfcl.prompt_of(r)
    assert p["messages"] == r["messages"] and p["tools"] == r["tools"]


def test_icl_prompt_adds_the_project_examples_to_the_system_turn():
    p = bfcl.prompt_of(row("simple_python_0"), icl=2)
    assert p["messages"][0]["role"] == "system" and "Example 2:" in p["messages"][0]["content"]
    assert p["messages"][1] == {"role": "user", "content": RAW["simple_python_0"]["question"][0][0]["content"]}


def test_out_of_scope_categories_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="out of scope"):
        bfcl_data.load_raw("multi_turn_base", wheel="unused")


# --- scoring (BFCL's semantics) -----------------------------------------------------------------------------

def test_simple_call_right_and_optional_argument_may_be_omitted_or_given():
    assert score("simple_python_0", call("calculate_triangle_area", base=10, height=5))["reason"] == "ok"
    assert score("simple_python_0", call("calculate_triangle_area", base=10, height=5, unit="units"))["correct"]
    assert score("simple_python_0", call("calculate_triangle_area", base=10, height=5, unit="cm"))["reason"].startswith(
        "wrong_value: unit='cm'")


@pytest.mark.parametrize("args, reason", [
    ({"base": "10", "height": 5}, "wrong_type: base='10' is str, expected int"),
    ({"base": 10.0, "height": 5}, "wrong_type: base=10.0 is float, expected int"),  # a float is not an integer
    ({"base": 10}, "missing_argument: calculate_triangle_area needs 'height'"),
    ({"base": 10, "height": 5, "color": "red"}, "unexpected_argument: color='red' was not asked for"),
])
def test_simple_call_wrong_for_the_stated_reason(args, reason):
    s = score("simple_python_0", call("calculate_triangle_area", **args))
    assert not s["correct"] and s["reason"] == reason


def test_bool_is_not_int_and_int_is_accepted_for_float():
    s = score("simple_python_17", call("get_prime_factors", number=450, formatted=1))
    assert s["reason"] == "wrong_type: formatted=1 is int, expected bool"
    assert score("simple_python_0", call("calculate_triangle_area", base=10, height=5))["correct"]
    # float items: BFCL does not convert ints inside a list, so [1, 3] is the wrong type for array<float>
    assert score("simple_python_13", call("calculate_area_under_curve", function="x**2", interval=[1, 3]))[
        "reason"].startswith("wrong_type: an item of interval")
    ok = call("calculate_area_under_curve", function="x**2", interval=[1.0, 3.0])
    assert score("simple_python_13", ok)["correct"]
    # an int for a top-level float is converted, as BFCL does: irrelevance_0's schema has weight: float
    want = {"name": "determine_body_mass_index", "possible": {"weight": [70.0], "height": [1.8]}}
    got = bfcl_score.ToolCall("determine_body_mass_index", {"weight": 70, "height": 1.8})
    assert bfcl_score.call_reason(got, want, row("irrelevance_0")["tools"]) is None


def test_strings_compare_after_bfcl_standardisation():
    # standardize_string drops spaces and ,./-_*^ and lowercases: "X^2" equals the accepted "x**2"
    assert score("simple_python_13", call("calculate_area_under_curve", function="X^2", interval=[1.0, 3.0]))["correct"]
    assert not score("simple_python_13", call("calculate_area_under_curve", function="x^3", interval=[1.0, 3.0]))[
        "correct"]


def test_function_names_are_the_converted_ones():
    assert score("simple_python_1", call("math_factorial", number=5))["correct"]
    assert score("simple_python_1", call("math.factorial", number=5))["reason"] == \
        "wrong_tool: math.factorial, expected math_factorial"


def test_dict_argument_checked_key_by_key_against_its_accepted_values():
    ok = call("db_fetch_records", database_name="StudentDB", table_name="students",
              conditions={"department": "science", "school": "Bluebird HS"})
    assert score("simple_python_89", ok)["correct"]
    extra = call("db_fetch_records", database_name="StudentDB", table_name="students",
                 conditions={"department": "Science", "school": "Bluebird HS", "year": "2024"})
    assert score("simple_python_89", extra)["reason"].startswith("wrong_value: conditions=")


def test_list_of_dicts_keeps_its_order():
    conds = [{"field": "age", "operation": ">", "value": "25"}, {"field": "job", "operation": "=", "value": "engineer"}]
    assert score("simple_python_96", call("database_query", table="user", conditions=conds))["correct"]
    assert not score("simple_python_96", call("database_query", table="user", conditions=conds[::-1]))["correct"]


def test_parallel_calls_match_in_any_order_but_all_must_be_there():
    a = call("spotify_play", artist="Taylor Swift", duration=20)
    b = call("spotify_play", artist="Maroon 5", duration=15)
    assert score("parallel_0", [b, a])["correct"]
    s = score("parallel_0", [a])
    assert not s["correct"] and s["reason"] == "wrong_count: 1 calls, 2 expected"
    s = score("parallel_0", [a, call("spotify_play", artist="Maroon 5", duration=20)])
    assert s["reason"].startswith("unmatched_call: no output call fits expected call 1 (spotify_play)")


def test_multiple_needs_the_right_one_of_several_functions():
    assert score("multiple_0", call("triangle_properties_get", side1=5, side2=4, side3=3))["correct"]
    assert score("multiple_0", call("math_triangle_area_heron", side1=5, side2=4, side3=3))["reason"].startswith(
        "wrong_tool")


def test_irrelevance_is_right_without_a_call_even_a_broken_one():
    assert score("irrelevance_0", "The area is 25 square meters.")["correct"]
    assert score("irrelevance_0", '{"name": "determine_body_mass_index", "parameters": {')["correct"]  # decoder fails
    s = score("irrelevance_0", call("determine_body_mass_index", weight=70, height=1.8))
    assert not s["correct"] and s["reason"].startswith("called_tool: determine_body_mass_index")
    assert score("live_irrelevance_120-9-0", "Hello!")["correct"]


def test_a_call_needed_but_prose_or_garbage_given():
    assert score("simple_python_0", "The area is 25.")["reason"].startswith("no_call")
    broken = '{"name": "calculate_triangle_area", "parameters": {"base": 10,'
    assert score("simple_python_0", broken)["reason"].startswith("format_invalid")


# --- the run: fake wheel, fake model ------------------------------------------------------------------------

@pytest.fixture
def fake_wheel(tmp_path) -> Path:
    """A zip laid out like the bfcl-eval wheel, holding the fixture rows."""
    path = tmp_path / "bfcl_eval-fake.whl"
    by_cat: dict[str, list] = {}
    for r in RAW.values():
        by_cat.setdefault(r["category"], []).append(r)
    with zipfile.ZipFile(path, "w") as zf:
        for cat, rows in by_cat.items():
            zf.writestr(f"bfcl_eval/data/BFCL_v4_{cat}.json", "".join(
                json.dumps({k: r[k] for k in ("id", "question", "function")}) + "\n" for r in rows))
            if cat not in bfcl_data.IRRELEVANCE_CATEGORIES:
                zf.writestr(f"bfcl_eval/data/possible_answer/BFCL_v4_{cat}.json", "".join(
                    json.dumps({"id": r["id"], "ground_truth": r["ground_truth"]}) + "\n" for r in rows))
    bfcl_data._raw.cache_clear()
    return path


class FakeGenerator(Generator):
    """Answers from the expected calls of the rows (right on AST items, a call on irrelevance items)."""

    def __init__(self, rows):
        self.by_user = {r["messages"][-1]["content"]: r for r in rows}
        self.seen = []

    def generate(self, messages, max_tokens=512, temperature=0.0, tools=None):
        r = self.by_user[messages[-1]["content"]]
        self.seen.append(r["id"])
        if r["expected"] is None:
            return json.dumps(call(tools[0]["function"]["name"], x=1)) if tools else "No."
        wants = r["expected"] if isinstance(r["expected"], list) else [r["expected"]]
        return json.dumps([call(w["name"], **w["arguments"]) for w in wants])


def test_run_writes_bfcl_ids_records_summary_and_resumes_from_cache(tmp_path, fake_wheel, monkeypatch):
    cats = ["simple_python", "parallel", "irrelevance", "live_simple", "live_irrelevance"]
    rows = bfcl_data.load_rows(cats, wheel=fake_wheel)
    fake = FakeGenerator(rows)
    monkeypatch.setattr(toolcall, "_load", lambda *a, **k: fake)
    out = tmp_path / "res.json"
    res = bfcl.evaluate("fake-model", out, cats, template="smollm2", wheel=fake_wheel)
    assert res["kind"] == "bfcl" and res["bfcl_version"] == "2026.3.23"
    assert [i["id"] for i in res["items"]] == [r["id"] for r in rows]
    by = {i["id"]: i for i in res["items"]}
    assert by["simple_python_0"]["correct"] and by["parallel_0"]["correct"]
    assert by["irrelevance_0"]["reason"].startswith("called_tool") and by["live_irrelevance_120-9-0"]["correct"]
    s = res["summary"]
    assert s["by_category"]["simple_python"]["n"] == 8 and s["by_category"]["simple_python"]["value"] == 1.0
    assert s["non_live_ast"]["value"] == 1.0 and s["non_live_ast"]["categories"] == ["simple_python", "parallel"]
    assert s["irrelevance"]["value"] == 0.5  # irrelevance 0/1, live_irrelevance 1/1, each weighted by its size (1)
    assert json.loads(out.read_text())["items"][0]["output"]
    # a rerun answers from <out>.generations.jsonl and loads no model
    monkeypatch.setattr(toolcall, "_load", lambda *a, **k: pytest.fail("model loaded although everything is cached"))
    again = bfcl.evaluate("fake-model", out, cats, template="smollm2", wheel=fake_wheel)
    assert [i["correct"] for i in again["items"]] == [i["correct"] for i in res["items"]]
    # --compare works on the results (McNemar + paired bootstrap, as eval toolcall)
    cmp = toolcall.compare(out, out)
    assert cmp["overall"]["n"] == len(rows) and cmp["overall"]["mcnemar"]["b01"] == 0


def test_limit_is_a_seeded_nested_sample_per_category(fake_wheel):
    full = [r["id"] for r in bfcl_data.load_rows(["simple_python"], wheel=fake_wheel)]
    three = [r["id"] for r in bfcl_data.load_rows(["simple_python"], limit=3, seed=1, wheel=fake_wheel)]
    five = [r["id"] for r in bfcl_data.load_rows(["simple_python"], limit=5, seed=1, wheel=fake_wheel)]
    assert len(three) == 3 and set(three) < set(five) < set(full)
    assert three == [i for i in full if i in three]  # BFCL's order kept
    assert three == [r["id"] for r in bfcl_data.load_rows(["simple_python"], limit=3, seed=1, wheel=fake_wheel)]
    assert len(bfcl_data.load_rows(["simple_python", "parallel"], limit=3, wheel=fake_wheel)) == 4  # parallel has 1


def test_live_summary_is_weighted_by_full_category_size():
    items = [{"category": "live_simple", "correct": True}] * 2 + [{"category": "live_multiple", "correct": False}] * 2
    s = bfcl.summarize(items, {"live_simple": 258, "live_multiple": 1053})
    assert s["live_ast"]["value"] == pytest.approx(258 / (258 + 1053))
    assert s["live_ast"]["low"] <= s["live_ast"]["value"] <= s["live_ast"]["high"]
    table = bfcl.markdown_table([{"summary": s}], ["m"])
    assert "| n | 2 | 2 | 4 |" in table and "| m | 100.0 [34.2, 100.0] | 0.0 [0.0, 65.8] |" in table


def test_cli_registers_eval_bfcl():
    from llamatune.cli import build_parser

    args = build_parser(["eval", "bfcl"]).parse_args(["eval", "bfcl", "--model", "m.gguf", "--limit", "40",
                                                       "--categories", "simple_python,irrelevance"])
    assert args._module == "llamatune.evals.bfcl" and args.limit == 40 and args.seed == 0


def test_fixture_rows_are_the_wheels_rows_when_it_is_cached():
    wheel = bfcl_data.pypi.cache_dir() / "wheels" / bfcl_data.WHEEL_NAME
    if not wheel.exists():
        pytest.skip("bfcl-eval wheel not cached (make install fetches it)")
    bfcl_data._raw.cache_clear()
    for bid, raw in RAW.items():
        (real,) = [r for r in bfcl_data.load_raw(raw["category"], wheel) if r["id"] == bid]
        assert real == {k: v for k, v in raw.items() if k != "category"}


@pytest.mark.parametrize("head, prose", [
    ("Sure, here", True), ("Hello!", True), ("I c", True), ("The area is", True),
    ('{"name"', False), ("[{", False), ("  \n{", False), ("```json", False), ("<|python_tag|>", False),
    ("get_weather(", False), ("get_weather", False), ("math.factorial (", False), ("The", False), ("x", False),
])
def test_prose_cut_only_where_no_continuation_can_be_a_call(head, prose):
    assert bfcl.cannot_be_a_call(head) is prose
    if prose:  # whatever the model would have written next, the parser reads no call and BFCL's verdict is "no call"
        for tail in ('{"name": "f", "parameters": {}}', ' f(x=1)', "[f(x=1)]", ""):
            assert not bfcl_score.parse_output(head + tail).calls


def test_default_out_names_the_model_and_the_icl():
    got = bfcl.default_out("runs/demo/gguf/smollm2-135m-base-f16.gguf")
    assert got == Path("results/bfcl/smollm2-135m-base-f16.json")
    assert bfcl.default_out("runs/x/merged/", icl=2) == Path("results/bfcl/merged-icl2.json")


@pytest.mark.slow
def test_scorer_agrees_with_bfcls_own_checker_on_synthetic_edits(tmp_path):
    """BFCL's ast_checker (in the isolated .venv-bfcl of `make bfcl-venv`) and the project's scorer give the same
    verdict on the ground truth and systematic edits of it, for every row of two categories."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    py = repo / ".venv-bfcl" / "bin" / "python"
    if not py.exists():
        pytest.skip("no .venv-bfcl (make bfcl-venv)")
    env = {**__import__("os").environ, "PYTHONPATH": str(repo)}
    syn = tmp_path / "synthetic.json"
    subprocess.run([sys.executable, "bench/bfcl_synthetic.py", "--out", str(syn), "--categories",
                    "simple_python,parallel,irrelevance"], cwd=repo, env=env, check=True)
    out = tmp_path / "agreement.json"
    subprocess.run([str(py), "bench/bfcl_agreement.py", str(syn), "--out", str(out), "--md", str(tmp_path / "a.md")],
                   cwd=repo, env=env, check=True)
    res = json.loads(out.read_text())
    assert res["n"] > 5000 and res["checker"]["rate"] == 1.0


def test_summary_interval_contains_its_estimate_at_zero_and_one():
    none = [{"category": c, "correct": False} for c in ("simple_python", "multiple", "parallel") for _ in range(10)]
    s = bfcl.summarize(none, {})["non_live_ast"]
    assert (s["value"], s["low"]) == (0.0, 0.0) and 0 < s["high"] < 0.2
    s = bfcl.summarize([{**i, "correct": True} for i in none], {})["non_live_ast"]
    assert (s["value"], s["high"]) == (1.0, 1.0) and 0.8 < s["low"] < 1


def test_constrained_outputs_that_do_not_parse_are_counted_by_cause():
    """A call opened where no function is offered has no grammar (the model's decision, left visible); one whose
    closer never came was cut by the token budget; the rest are 'other'. Text answers and parsed calls are none."""
    tool = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    tools = {"none": [], "cut": tool, "odd": tool, "text": tool, "good": tool}
    outputs = {"none": '<tool_call>[\n{"name": "arguments": {}}\n]</tool_call>',
               "cut": '<tool_call>[\n{"name": "f", "arguments": {"x": [1, 1, 1, 1',
               "odd": '<tool_call>[\n{"name": "f" "arguments": {}}\n]</tool_call>',
               "text": "No function here can do that.",
               "good": '<tool_call>[\n{"name": "f", "arguments": {}}\n]</tool_call>'}
    want = [{"name": "f", "possible": {}}]
    items = [{"id": k, "output": v, **bfcl_score.score_output(v, want, tools[k], "simple_python")}
             for k, v in outputs.items()]
    assert [i["id"] for i in items if i["attempted"] and not i["format_valid"]] == ["none", "cut", "odd"]
    assert bfcl.malformed_causes(items, tools, "smollm2") == {"no_tools_offered": 1, "unclosed": 1, "other": 1}
