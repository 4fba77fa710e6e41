"""Contrastive pairs (README part 10): a single-call row and its question twin differ in one slot, share their tools,
come only from training phrasings that are not near a held-out clarify phrasing, and leave every other row as it was;
the probe's clarify items are phrasings no training row uses."""

import json
import re
from collections import Counter

import pytest

from llamatune.data import funccall_pairs as pairs
from llamatune.data import funccall_rows as fr
from llamatune.data.funccall import PROBE_FAMILIES, probe_rows
from llamatune.data.funccall_more import unmask
from llamatune.toolcall import ToolCall, validate_call

ARGS = ("train", 1200, 0, fr.DEFAULT_PROPORTIONS)


def _user(row: dict) -> str:
    return [m["content"] for m in row["messages"] if m["role"] == "user"][-1]


@pytest.fixture(scope="module")
def paired():
    plain = fr.strip_private(fr.build_split(*ARGS, style=fr.train_style(), val_fraction=0.2))
    with_pairs = fr.strip_private(fr.build_split(*ARGS, style=fr.train_style(pairs=0.5), val_fraction=0.2))
    return plain, with_pairs


def test_pairs_replace_as_many_single_calls_as_clarify_rows_and_leave_the_rest(paired):
    plain, rows = paired
    changed = [i for i, (a, b) in enumerate(zip(plain, rows)) if a != b]
    clarify = sum(r["category"] == "clarify" for r in plain)
    assert len(rows) == len(plain) and [r["id"] for r in rows] == [r["id"] for r in plain]
    assert Counter(r["category"] for r in rows) == Counter(r["category"] for r in plain)
    assert len(changed) == 2 * round(0.5 * clarify)
    assert Counter(rows[i]["category"] for i in changed) == {"single_call": len(changed) // 2,
                                                             "clarify": len(changed) // 2}
    assert fr.build_split(*ARGS, style=fr.train_style(pairs=0.0), val_fraction=0.2) == \
        fr.build_split(*ARGS, style=fr.train_style(), val_fraction=0.2)


def _derived(call: str, ask: str) -> str | None:
    """Which slot the question side ``ask`` changed in ``call``: the bare ambiguous name, or no source unit."""
    for amb, readings in pairs.slot_data.AMBIGUOUS_PLACES.items():
        if any(r in call and ask == call.replace(r, amb) for r in readings):
            return "ambiguous"
    words = [w for ws in pairs.slot_data.UNIT_WORDS.values() for w in ws]
    return "unit" if any(ask == call.replace(" " + w, "", 1) != call for w in words) else None


def _twins(plain, rows):
    changed = [i for i, (a, b) in enumerate(zip(plain, rows)) if a != b]
    calls = [rows[i] for i in changed if rows[i]["category"] == "single_call"]
    out = []
    for ask in (rows[i] for i in changed if rows[i]["category"] == "clarify"):
        match = [c for c in calls if c["tools"] == ask["tools"] and _derived(_user(c), _user(ask))]
        assert match, _user(ask)  # every question has its call
        out.append((match[0], ask))
    return out


def test_a_pair_differs_in_the_one_slot_and_shares_tools_and_system_prompt(paired):
    kinds = Counter()
    for call_row, ask_row in _twins(*paired):
        assert call_row["tools"] == ask_row["tools"] and call_row["template_id"] == ask_row["template_id"]
        assert [m for m in call_row["messages"] if m["role"] == "system"] == \
            [m for m in ask_row["messages"] if m["role"] == "system"]
        assert ask_row["expected"] is None and "tool_calls" not in ask_row["messages"][-1]
        assert ("masked" in call_row) == ("masked" in ask_row)  # masked alike
        call_row = unmask(call_row)
        tool = call_row["messages"][-1]["tool_calls"][0]["function"]["name"]
        assert call_row["expected"]["name"] == tool and tool in pairs.KINDS
        assert validate_call(ToolCall(tool, call_row["expected"]["arguments"]), call_row["tools"]) is None
        kind = _derived(_user(call_row), _user(ask_row))
        assert kind == pairs.KINDS[tool]
        kinds[kind] += 1
        if kind == "unit":
            assert call_row["expected"]["arguments"]["from_unit"] not in ("celsius", "fahrenheit")
        else:
            assert call_row["expected"]["arguments"]["location"] in _user(call_row)  # the reading, not the bare name
    n = sum(kinds.values())
    assert min(kinds["ambiguous"], kinds["unit"]) >= n / 4, kinds  # a reason first, then one of its phrasings


def test_a_pairs_call_replaces_a_single_call_of_its_own_tool(paired):
    """The pairs change no tool's share of the single calls (part 10's first build, which drew the call side freely,
    moved the converter's share from 27 to 41 rows, and the model with it)."""
    tools = [Counter(unmask(r)["expected"]["name"] for r in rows if r["category"] == "single_call") for rows in paired]
    assert tools[0] == tools[1]


def test_no_pair_phrasing_is_near_a_held_out_clarify_phrasing():
    split = fr.splits.split_for(0.2, 0.2)
    single = {t: [f for f in fams if split.get(f) == "train"] for t, fams in fr.phrasebook.SINGLE.items()}
    usable = pairs.eligible(single, split)
    held = pairs.held_out_clarify(split)
    assert {"cl-ambiguous", "cl-nounit"} <= {f for f, s in split.items() if s == "test"}
    assert "Convert {value} to {dst}." in held and "Please express {value} in {dst}." in held  # test; unused
    for tool, fam, phrasing in usable:
        assert split[fam] == "train" and not fam.endswith(("-de", "-fr", "-es", "-no"))
        ask = pairs.ask_phrasing(tool, phrasing)
        assert max(pairs.similarity(ask, h) for h in held) < pairs.NEAR_DUPLICATE, phrasing
    # the test's own phrasings are the cases the rule exists for: cu-convert's first phrasing becomes the test's
    assert ("convert_units", "cu-convert", "Convert {value} {src} to {dst}.") not in usable
    assert pairs.similarity("Convert {value} to {dst}.", "Convert {value} to {dst}.") == 1.0
    assert {t for t, _, _ in usable} == set(pairs.KINDS)


def test_pair_prompts_never_equal_a_validation_or_test_prompt(paired):
    _, rows = paired
    held = fr.build_split("val", 400, 0, fr.DEFAULT_PROPORTIONS, val_fraction=0.2) + \
        fr.build_split("test", 400, 0, fr.DEFAULT_PROPORTIONS) + probe_rows()
    held_prompts = {_user(r).lower() for r in held}
    for call_row, ask_row in _twins(*paired):
        assert _user(call_row).lower() not in held_prompts and _user(ask_row).lower() not in held_prompts


def test_pairs_are_training_rows_only_and_a_share():
    with pytest.raises(ValueError, match="training rows"):
        fr.build_split("val", 10, 0, style=fr.replace(fr.EVAL_STYLE, pairs=0.5), val_fraction=0.2)
    with pytest.raises(ValueError, match="pairs must be a share"):
        fr.train_style(pairs=1.5)


def test_the_probe_asks_for_a_place_or_unit_in_phrasings_no_training_row_uses(paired):
    rows = probe_rows()
    assert len(rows) == 48 and Counter(r["template_id"] for r in rows) == {"cl-nounit-c": 30, "cl-ambiguous-c": 18}
    assert set(PROBE_FAMILIES) == {r["template_id"] for r in rows}
    assert len({_user(r) for r in rows}) == len(rows) and all(r["expected"] is None for r in rows)
    assert len({r["id"] for r in rows}) == len(rows)
    for train in paired:
        assert not {f for r in train for f in r["families"]} & set(PROBE_FAMILIES)
        assert not {_user(r) for r in rows} & {_user(r) for r in train}
    assert json.loads(json.dumps(rows)) == rows
    assert Counter(r["template_id"] for r in probe_rows(100)) == {"cl-nounit-c": 82, "cl-ambiguous-c": 18}  # 3 x 6
