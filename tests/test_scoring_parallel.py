"""Scoring a turn of parallel calls: ``expected`` a list of ``{"name", "arguments"[, "accept"]}``, matched in any
order, in every template's call syntax; a missing, an extra, a wrong or a duplicated call is wrong."""

from __future__ import annotations

import itertools

import pytest

from llamatune.chatformat import render_calls
from llamatune.evals.scoring import expected_error, score_output
from llamatune.tools import all_tools

TOOLS = [all_tools()[n].schema for n in ("get_current_weather", "get_weather_forecast", "get_local_time")]
OSLO = {"name": "get_current_weather", "arguments": {"location": "Oslo"}}
ROME = {"name": "get_current_weather", "arguments": {"location": "Rome"}, "accept": {"location": ["Roma"]}}
TIME = {"name": "get_local_time", "arguments": {"timezone_name": "Europe/Rome"}}
EXPECTED = [OSLO, ROME, TIME]
TEMPLATES = ["llama-3.2", "gemma-3", "smollm2"]


def out(calls, template="smollm2"):
    return render_calls([{"name": c["name"], "arguments": c["arguments"]} for c in calls], template)


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_every_order_is_correct(template, order):
    got = score_output(out([EXPECTED[i] for i in order], template), EXPECTED, TOOLS, "parallel")
    assert got["correct"] and got["reason"] == "ok" and got["name_correct"] and got["llm_calls"] == 2


def test_accepted_spellings_and_defaults_count_per_call():
    roma = {**ROME, "arguments": {"location": "Roma"}}
    oslo_c = {**OSLO, "arguments": {"location": "oslo", "unit": "celsius"}}  # the default unit, written out
    assert score_output(out([roma, oslo_c]), [OSLO, ROME], TOOLS, "parallel")["correct"]


@pytest.mark.parametrize("calls, reason", [
    ([OSLO, ROME], "missing_call: 2 call(s), 3 expected"),
    ([OSLO, ROME, TIME, OSLO], "extra_call: 4 calls, 3 expected"),
    ([OSLO, OSLO, TIME], "wrong_value: location='Oslo', expected 'Rome'"),  # the same call twice is not both
    ([OSLO, {**ROME, "name": "get_weather_forecast"}, TIME], "wrong_tool: no call of get_current_weather left"),
    ([OSLO, {**ROME, "arguments": {"location": "Paris"}}, TIME], "wrong_value: location='Paris'"),
    ([OSLO, ROME, {**TIME, "arguments": {}}], "missing_argument"),  # schema-invalid
])
def test_missing_extra_and_wrong_calls_are_wrong(calls, reason):
    got = score_output(out(calls), EXPECTED, TOOLS, "parallel")
    assert not got["correct"] and got["reason"].startswith(reason), got["reason"]


def test_text_or_a_broken_list_is_wrong():
    assert score_output("It is sunny in both.", EXPECTED, TOOLS, "parallel")["reason"].startswith("no_call")
    broken = out(EXPECTED)[:-20]
    got = score_output(broken, EXPECTED, TOOLS, "parallel")
    assert got["reason"].startswith("format_invalid") and not got["format_valid"]


def test_one_expected_call_keeps_its_old_shape_and_a_list_of_one_is_the_same():
    for exp in (OSLO, [OSLO]):
        assert score_output(out([OSLO]), exp, TOOLS, "single_call")["correct"]
        assert score_output(out([OSLO, ROME]), exp, TOOLS, "single_call")["reason"].startswith("multiple_calls")
    assert not score_output(out([OSLO, ROME]), None, TOOLS, "no_tool")["correct"]


@pytest.mark.parametrize("expected, error", [
    (None, None), (OSLO, None), ([OSLO, ROME], None),
    ([], "empty list"), ({"arguments": {}}, "must be"), ([OSLO, "x"], "expected[1]"),
    ({"name": "f", "arguments": []}, "must be objects"),
])
def test_expected_shapes_are_checked(expected, error):
    got = expected_error(expected)
    assert (got is None) if error is None else (error in got)


def test_eval_toolcall_reads_items_of_parallel_calls_and_names_a_bad_one(tmp_path):
    import json

    from llamatune.evals.toolcall import read_items

    msgs = [{"role": "user", "content": "Weather in Oslo and Rome?"}, {"role": "assistant", "content": "x"}]
    row = {"id": "p", "messages": msgs, "tools": TOOLS, "expected": [OSLO, ROME], "category": "parallel"}
    (tmp_path / "val.jsonl").write_text(json.dumps(row) + "\n" + json.dumps({**row, "expected": []}) + "\n")
    with pytest.raises(ValueError, match=r"val.jsonl:2: field 'expected' must be null or .*empty list"):
        read_items(tmp_path / "val.jsonl", ("id", "messages", "tools", "expected", "category"))
    (tmp_path / "val.jsonl").write_text(json.dumps(row) + "\n")
    assert read_items(tmp_path / "val.jsonl", ("id", "expected"))[0]["expected"] == [OSLO, ROME]
