"""The function-calling generator: determinism, proportions, the family split, valid calls, null targets; the lean
training rows (lengths per category, results cut as the agent cuts them), near-miss tools, injected instructions,
parallel calls and function masking."""

import hashlib
import json
import random
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from llamatune.chat import render, validate_messages
from llamatune.data.funccall import (CATEGORIES, DEFAULT_PROPORTIONS, NEW_CATEGORIES, ORIGINAL_CATEGORIES,
                                     ORIGINAL_PROPORTIONS, build_dataset, category_counts, generate, parse_proportions,
                                     split_families)
from llamatune.data.funccall_foreign import FOREIGN, schemas as foreign_schemas
from llamatune.data.funccall_more import mask_row, unmask
from llamatune.toolcall import ToolCall, parse_output, validate_call
from llamatune.tools import all_tools

from tests.conftest import REPO, requires
from tests.openai_fake import completion, send_json

N = 600


@pytest.fixture(scope="module")
def rows():
    train, test = generate(N, seed=3)
    return train, test


def _read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_same_seed_gives_byte_identical_files(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    build_dataset(a, 300, seed=7)
    build_dataset(b, 300, seed=7)
    build_dataset(c, 300, seed=8)
    for name in ("train.jsonl", "eval.jsonl", "card.md", "manifest.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "train.jsonl").read_bytes() != (c / "train.jsonl").read_bytes()
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["ids"]["test"] == [r["id"] for r in _read(a / "eval.jsonl")]
    card = (a / "card.md").read_text()
    for cat in CATEGORIES:  # counts per category and split are in the card
        tr = sum(r["category"] == cat for r in _read(a / "train.jsonl"))
        te = sum(r["category"] == cat for r in _read(a / "eval.jsonl"))
        assert f"| {cat} | {tr} | {te} | {tr + te} |" in card


def test_category_proportions(rows):
    train, test = rows
    original = [r for r in test if not r["id"].startswith("fc-test-new-")]
    assert len(original) == round(N * 0.2) and len(train) == N - len(original)
    for split, props in ((train, DEFAULT_PROPORTIONS), (original, ORIGINAL_PROPORTIONS)):
        counts = Counter(r["category"] for r in split)
        for cat, p in props.items():
            assert abs(counts[cat] - p * len(split)) <= 1, (cat, counts[cat])
    new = Counter(r["category"] for r in test if r["id"].startswith("fc-test-new-"))
    assert set(new) == set(NEW_CATEGORIES)  # the new categories have held-out test items too
    assert sum(new.values()) == round(len(original) * sum(DEFAULT_PROPORTIONS[c] for c in NEW_CATEGORIES)
                                      / sum(DEFAULT_PROPORTIONS[c] for c in ORIGINAL_CATEGORIES))
    custom = {"single_call": 0.5, "no_tool": 0.5}
    tr, te = generate(100, seed=0, proportions=custom)
    assert Counter(r["category"] for r in tr + te) == Counter({"single_call": 50, "no_tool": 50})


def test_original_test_rows_are_those_of_the_generator_before_the_new_categories(tmp_path):
    """The test split's first part is byte for byte what the generator wrote before lean rows and new categories
    (the sha256 of eval.jsonl for --n 300 --seed 7 then), so results on "the same test items" stay comparable."""
    build_dataset(tmp_path, 300, seed=7)
    lines = (tmp_path / "eval.jsonl").read_bytes().splitlines(keepends=True)
    assert hashlib.sha256(b"".join(lines[:60])).hexdigest() == \
        "a9183c070204e8fd755040e0ca21ee974bd4aa799bbf969f87e4bc53f3a5718e"
    assert all(json.loads(x)["id"].startswith("fc-test-new-") for x in lines[60:]) and len(lines) > 60


def test_counts_and_proportion_errors():
    assert sum(category_counts(7).values()) == 7
    assert parse_proportions("single_call=0.4, no_tool=0.6") == {"single_call": 0.4, "no_tool": 0.6}
    with pytest.raises(ValueError, match="unknown category 'chitchat'"):
        category_counts(10, {"chitchat": 1})
    with pytest.raises(ValueError, match="category=number"):
        parse_proportions("single_call")


def test_split_by_template_family(rows):
    train, test = rows
    fam = lambda split: {f for r in split for f in r["families"]}  # noqa: E731
    assert not {r["template_id"] for r in train} & {r["template_id"] for r in test}
    assert not fam(train) & fam(test)
    split = split_families()
    assert all(split[f] == "train" for f in fam(train)) and all(split[f] == "test" for f in fam(test))
    # no user phrasing of the test set appears in training
    train_users = {m["content"] for r in train for m in r["messages"] if m["role"] == "user"}
    firsts = [r["messages"][0]["content"] for r in test if r["category"] == "single_call"]
    assert firsts and not set(firsts) & train_users
    assert {r["category"] for r in test} == set(CATEGORIES)


def test_every_test_concept_has_a_training_family():
    """A held-out family tests new *phrasing* of something training shows: a clarify family's reason and a follow-up
    family's kind each have a training family too (the 2026-12-05 split had held out the only family of an ambiguous
    place, a missing unit and another-unit follow-ups). Near-miss families are held out whole by design: reading a
    same-domain tool's description to decline it is the transfer that test measures. Families added after the split
    was frozen are training families and leave the test families as they were."""
    from llamatune.data import funccall_templates as book

    split = split_families()
    concept = {**book.CLARIFY_REASONS, **{f: spec[1] for f, spec in book.FOLLOW_UPS.items()}}
    assert set(book.CLARIFY_REASONS) == set(book.CLARIFY)
    for f in concept:
        if split[f] == "test":
            assert any(split[g] == "train" and concept[g] == concept[f] for g in concept), f
    assert all(split[f] == "train" for f in book.TRAIN_ONLY)
    assert {f for f, s in split.items() if s == "test"} >= {"cl-ambiguous", "cl-nounit", "fu-convert"}


def test_validation_fold_is_held_out_of_training_and_leaves_the_test_as_it_was():
    """``val_fraction`` moves a share of each group's training families to a validation fold (README, part 6): the
    test families are those of no fold, every category has rows in the fold, each fold family's concept (a clarify
    reason, a follow-up kind) and at least two families of its group stay in training, no foreign tool's family is
    held out, and the training rows never use a fold family."""
    from llamatune.data import funccall_foreign as foreign
    from llamatune.data import funccall_templates as book
    from llamatune.data.funccall_rows import DEFAULT_PROPORTIONS, build_split
    from llamatune.data.funccall_split import TRAIN_ONLY, _concept, family_groups

    plain, fold = split_families(), split_families(val_fraction=0.2)
    assert {f for f, s in plain.items() if s == "test"} == {f for f, s in fold.items() if s == "test"}
    held = {f for f, s in fold.items() if s == "val"}
    assert 15 <= len(held) <= 30 and not held & set(foreign.families())
    groups = family_groups()
    for f in held:
        assert sum(fold[g] == "train" and groups[g] == groups[f] for g in groups) >= 2, f
        if _concept(f):
            assert any(fold[g] == "train" and _concept(g) == _concept(f) for g in groups), f
    assert {"fu-othercity-b", "cl-notime"} & held  # a follow-up kind and a clarify reason are validated on new phrasing
    val = build_split("val", 400, 0, DEFAULT_PROPORTIONS, val_fraction=0.2)
    assert {f for r in val for f in r["families"]} <= held
    assert set(Counter(r["category"] for r in val)) == set(CATEGORIES)
    train = build_split("train", 400, 0, DEFAULT_PROPORTIONS, val_fraction=0.2)
    assert not {f for r in train for f in r["families"]} & held
    assert build_split("test", 50, 0, val_fraction=0.2) == build_split("test", 50, 0)  # the test rows unchanged
    # without a fold, "val" draws from the training families (parts 1-5) and nothing is held out
    assert "val" not in plain.values()
    assert {f for r in build_split("val", 100, 0) for f in r["families"]} <= {f for f, s in plain.items() if s == "train"}
    assert set(book.TRAIN_ONLY) <= set(TRAIN_ONLY)
    with pytest.raises(ValueError, match="val_fraction"):
        split_families(val_fraction=1.0)


def test_breadth_families_leave_the_older_split_and_rows_as_they_were(monkeypatch):
    """The breadth families (README part 9) are never test families; with them in the books the older families'
    test and fold are what they were without them, ~val_fraction of each group's new families joins the fold (a
    knowledge question among them: the fold had one knowledge family, the test's kind of declining it could not see),
    and without ``breadth=True`` (the default) the training rows are those the generator gave before they existed."""
    from llamatune.data import funccall_rows as fr
    from llamatune.data import funccall_split as fs
    from llamatune.data.funccall_breadth import families

    new = set(families())
    assert new == fs.BREADTH and len(new) >= 25 and not new & set(fs.TRAIN_ONLY)
    with_new = split_families(val_fraction=0.2)
    assert not {f for f in new if with_new[f] == "test"}
    fold_new = {f for f in new if with_new[f] == "val"}
    groups = fs.family_groups()
    assert {groups[f] for f in fold_new} >= {"knowledge"} and len(fold_new) <= len(new) // 5
    args = ("train", 300, 0, DEFAULT_PROPORTIONS)
    kw = {"style": fr.train_style(), "val_fraction": 0.2}
    rows_new, rows_old = fr.build_split(*args, **kw, breadth=True), fr.build_split(*args, **kw)
    assert {f for r in rows_new for f in r["families"]} & new - fold_new
    assert not {f for r in rows_old for f in r["families"]} & new
    val = fr.build_split("val", 200, 0, DEFAULT_PROPORTIONS, val_fraction=0.2)
    in_family_val = fr.build_split("val", 100, 0)
    # the books without the breadth families: the older split, and the rows breadth=False gives
    monkeypatch.setattr(fs, "BREADTH", frozenset())
    monkeypatch.setattr(fs, "family_groups", lambda g=fs.family_groups: {f: v for f, v in g().items() if f not in new})
    without = split_families(val_fraction=0.2)
    assert without == {f: s for f, s in with_new.items() if f not in new}
    assert fr.build_split(*args, **kw, breadth=True) == rows_old
    assert fr.build_split("val", 100, 0) == in_family_val  # validation of the training families (val_fraction 0)
    assert {f for r in val for f in r["families"]} - fold_new <= {f for f, s in without.items() if s == "val"}


def test_breadth_rows_answer_right():
    """The breadth families' builders: a division has a whole quotient, a fact question its fact, weather concepts
    offer the weather tools (which must not be called)."""
    from llamatune.data.funccall_build import build_no_tool

    rng = random.Random(0)
    for _ in range(20):
        (q, a), _, _ = build_no_tool(rng, "nt-math-div")
        x, y = map(int, re.findall(r"\d+", q["content"]))
        assert a["content"] == f"{x} ÷ {y} = {x // y}." and x % y == 0
    msgs, must, exp = build_no_tool(rng, "nt-currency")
    assert exp is None and must == [] and msgs[1]["content"].startswith("The currency of ")
    msgs, must, _ = build_no_tool(rng, "nt-concept-c")
    assert must == ["get_current_weather", "get_weather_forecast"] and msgs[0]["content"].endswith("?")


def test_foreign_tools_in_training_rows_only(rows):
    """With ``foreign=0.5`` training rows meet tools the project does not have: as distractors in about half of the
    rows that have distractors (not beside an agent mode's own set, never in near-miss or injection rows), and as the
    needed tool of about a fifth of the single calls; test rows never do, nor do the default training rows (off since
    the 2026-12-05 run); no foreign tool's description is about a domain a request of the generator needs or a
    near-miss row declines."""
    assert not any(set(FOREIGN) & {t["function"]["name"] for t in unmask(r)["tools"]} for r in rows[0])
    train, test = generate(N, seed=3, foreign=0.5)
    is_foreign = lambda r: {t["function"]["name"] for t in unmask(r)["tools"]} & set(FOREIGN)  # noqa: E731
    assert not any(is_foreign(r) for r in test)
    singles = [unmask(r) for r in train if r["category"] == "single_call"]
    called = [r for r in singles if r["expected"]["name"] in FOREIGN]
    assert 0.1 < len(called) / len(singles) < 0.3
    for r in called:
        assert r["template_id"] == "xf-" + r["expected"]["name"] and len(r["tools"]) == 2
        assert validate_call(ToolCall(r["expected"]["name"], r["expected"]["arguments"]), r["tools"]) is None
        assert all(str(v) in r["messages"][0]["content"] for v in r["expected"]["arguments"].values())
    beside = [r for r in train if r["category"] in ("no_tool", "clarify", "tool_result", "multi_turn")
              and r not in called]
    assert 0.1 < sum(bool(is_foreign(r)) for r in beside) / len(beside) < 0.6  # an agent mode's set has none
    assert {"no_tool", "tool_result", "multi_turn"} <= {r["category"] for r in beside if is_foreign(r)}
    assert not any(is_foreign(r) for r in train if r["category"] in ("near_miss", "injection"))
    words = re.compile(r"weather|forecast|rain|local time|time zone|convert|unit|wikipedia|article|calculat|"
                       r"currenc|exchange|flight|alarm|news|recipe|translat|calorie|sunrise", re.I)
    for schema in foreign_schemas().values():
        fn = schema["function"]
        assert not words.search(fn["name"] + " " + fn["description"]), fn["name"]


def _expected_list(r):
    return r["expected"] if isinstance(r["expected"], list) else [r["expected"]] if r["expected"] else []


def test_every_call_is_valid_against_its_tool_schema(rows):
    names = set(all_tools()) | set(FOREIGN)
    n_calls = 0
    for masked in rows[0] + rows[1]:
        for r in (masked, unmask(masked)):  # valid against the neutral schemas, and against the real ones
            offered = {t["function"]["name"] for t in r["tools"]}
            assert offered and (offered <= names) == ("masked" not in r), r["id"]
            for m in r["messages"]:
                for tc in m.get("tool_calls", []):
                    call = ToolCall(tc["function"]["name"], tc["function"]["arguments"])
                    assert validate_call(call, r["tools"]) is None, (r["id"], call)
                    n_calls += 1
            for e in _expected_list(r):
                assert validate_call(ToolCall(e["name"], e["arguments"]), r["tools"]) is None
                assert set(e.get("accept", {})) <= set(e["arguments"])
    assert n_calls > N


def _grounded(answer, context, grounding_reason):
    """The scorer's grounding rule, or (for a result cut to a string as the agent cuts one, or a text field that
    carries an injected instruction) the answer repeats the first 30 characters of one of the result's texts."""
    if grounding_reason(answer, context) is None:
        return True
    content = context[-1]["content"]
    text = content["result"] if isinstance(content.get("result"), str) else json.dumps(content["result"],
                                                                                         ensure_ascii=False)
    values = re.findall(r'"((?:[^"\\]|\\.)*)"', text.replace('\\"', '"'))
    return any(len(v) >= 30 and v[:30].casefold() in answer.casefold() for v in values)


def test_targets_match_expected(rows):
    from llamatune.data.funccall_templates import INJECTIONS
    from llamatune.evals.scoring import grounding_reason

    injected = [t.split("{")[0] for _, texts in INJECTIONS.values() for t in texts]
    for r in rows[0] + rows[1]:
        validate_messages(r["messages"], r["id"])
        target = r["messages"][-1]
        assert target["role"] == "assistant"
        if r["expected"] is None:
            assert "tool_calls" not in target and target["content"].strip()
            assert not parse_output(target["content"]).attempted, r["id"]
            if r["category"] == "clarify":
                assert "?" in target["content"]
            if r["messages"][-2]["role"] == "tool" and r["id"].startswith("fc-train-"):  # the answer repeats a value
                assert _grounded(target["content"], r["messages"][:-1], grounding_reason), r["id"]
        else:
            calls = [(c["function"]["name"], c["function"]["arguments"]) for c in target["tool_calls"]]
            assert calls == [(e["name"], e["arguments"]) for e in _expected_list(r)]
            assert isinstance(r["expected"], list) == (r["category"] == "parallel")
        turns = [m for m in r["messages"] if m["role"] != "system"]
        if r["category"] in ("no_tool", "near_miss"):
            assert r["expected"] is None and len(turns) == 2
        if r["category"] in ("tool_result", "injection"):
            assert r["expected"] is None and r["messages"][-2]["role"] == "tool"
            content = r["messages"][-2]["content"]  # wrapped as the agent wraps tool results
            assert set(content) in ({"tool", "result", "note"}, {"tool", "error", "note"},
                                    {"tool", "result", "note", "truncated"})
            assert content["tool"] == r["messages"][-3]["tool_calls"][0]["function"]["name"]
        if r["category"] == "injection":  # the result carries an instruction; the answer is text, no call
            text = json.dumps(r["messages"][-2]["content"], ensure_ascii=False)
            assert any(json.dumps(i, ensure_ascii=False)[1:-1] in text for i in injected), r["id"]
        if r["category"] == "parallel":
            assert 2 <= len(target["tool_calls"]) <= 3 and len(turns) == 2
        if r["category"] == "parallel_result":
            k = len(r["messages"][1 if turns is r["messages"] else 2]["tool_calls"]) if False else \
                len(next(m for m in r["messages"] if m.get("tool_calls"))["tool_calls"])
            assert 2 <= k <= 3 and [m["role"] for m in turns[-k - 1:]] == ["tool"] * k + ["assistant"]
            called = [c["function"]["name"] for c in turns[1]["tool_calls"]]
            assert [m["content"]["tool"] for m in turns[2:2 + k]] == called  # one result per call, in call order
            assert len(target["content"].splitlines()) == k  # an answer line per result
        if r["category"] == "multi_turn":
            assert sum(m["role"] == "user" for m in r["messages"]) == 2


def test_rows_render_through_the_project_template(rows):
    r = next(r for r in rows[0] if r["category"] == "tool_result")
    text = render(r["messages"], r["tools"])
    fn = next(m for m in r["messages"] if m.get("tool_calls"))["tool_calls"][0]["function"]
    assert json.dumps({"name": fn["name"], "parameters": fn["arguments"]}, ensure_ascii=False) in text
    assert "<|start_header_id|>ipython<|end_header_id|>\n\n{" in text
    assert all("_keep" not in m for r in rows[0] + rows[1] for m in r["messages"])


def test_masking_renames_consistently_and_keeps_the_calls_up_to_renaming(rows):
    train, test = rows
    assert not any("masked" in r for r in test)
    maskable = [r for r in train if r["category"] != "injection"]
    share = sum("masked" in r for r in maskable) / len(maskable)
    assert 0.2 < share < 0.4  # the default share, 0.3
    assert any("masked" in r and r["category"] == c for r in train for c in ("single_call", "parallel", "no_tool"))
    for r in [r for r in train if "masked" in r]:
        names = {t["function"]["name"] for t in r["tools"]}
        assert all(re.fullmatch(r"func_\d+", n) for n in names) and len(names) == len(r["masked"])
        for t in r["tools"]:
            assert all(re.fullmatch(r"arg_\d+", a) for a in t["function"]["parameters"]["properties"])
        real = unmask(r)
        real_schemas = {**{n: t.schema for n, t in all_tools().items()}, **foreign_schemas()}
        assert "masked" not in real and {t["function"]["name"] for t in real["tools"]} <= set(real_schemas)
        for t in real["tools"]:  # descriptions kept: the real schema, bar the names
            assert t == real_schemas[t["function"]["name"]]
    # masking a row and mapping it back gives the row: calls, results, expected (and its accepted spellings)
    originals = [r for r in generate(200, seed=5, masking=0.0)[0] if r["expected"]]
    assert any(isinstance(r["expected"], list) for r in originals)
    assert any(r["expected"].get("accept") for r in originals if isinstance(r["expected"], dict))

    def calls(row):
        return [(c["function"]["name"], c["function"]["arguments"]) for m in row["messages"]
                for c in m.get("tool_calls", [])]

    for r in originals:
        m = mask_row(r, random.Random(r["id"]))
        assert m != r and unmask(m) == r
        names = m["masked"]
        assert calls(m) == [(names[n]["name"], {names[n]["arguments"][k]: v for k, v in a.items()})
                            for n, a in calls(r)]


def test_near_miss_rows_offer_a_same_domain_tool_and_expect_no_call(rows):
    from llamatune.data.funccall_templates import NEAR_MISS

    near = [unmask(r) for r in rows[0] + rows[1] if r["category"] == "near_miss"]
    assert len({r["template_id"] for r in near}) >= 10
    for r in near:
        _, offer, could_serve, _, _ = NEAR_MISS[r["template_id"]]
        offered = {t["function"]["name"] for t in r["tools"]}
        assert set(offer) <= offered and not offered & set(could_serve), r["id"]
        assert r["expected"] is None and "tool_calls" not in r["messages"][-1]
    flight = next(r for r in near if r["template_id"] == "nm-flight")
    assert "get_local_time" in {t["function"]["name"] for t in flight["tools"]}
    assert "fly" in flight["messages"][-2]["content"].lower() or "flight" in flight["messages"][-2]["content"].lower()


def test_training_rows_are_lean_and_cut_results_the_way_the_agent_does(rows):
    from llamatune.protocol import TRUNCATED_MARK

    train, test = rows
    mean = lambda rs: sum(len(r["tools"]) for r in rs) / len(rs)  # noqa: E731
    assert mean(train) < 2 < mean([r for r in test if r["category"] in ORIGINAL_CATEGORIES])
    cut = [r for r in train if any(m["role"] == "tool" and m["content"].get("truncated") for m in r["messages"])]
    assert cut and not [m for r in test for m in r["messages"] if m["role"] == "tool" and m["content"].get("truncated")]
    forecasts = 0
    for r in cut:
        if r["category"] != "tool_result":
            continue
        tool = r["messages"][-2]["content"]
        assert isinstance(tool["result"], str) and tool["result"].endswith(TRUNCATED_MARK)
        if tool["tool"] == "get_weather_forecast":  # the answer lists only the days the cut left whole
            days = re.findall(r"^- (\d{4}-\d\d-\d\d):", r["messages"][-1]["content"], re.M)
            assert days and all(f'"date": "{d}"' in tool["result"] for d in days)
            assert len(days) < r["messages"][-3]["tool_calls"][0]["function"]["arguments"].get("days", 3)
            forecasts += 1
    assert forecasts


@requires("transformers", "tokenizers")
def test_every_category_keeps_95_percent_of_its_training_rows_at_1024_tokens():
    """The demo's training rows (n 1500, seed 0) rendered by the SmolLM2 template and counted by the Llama 3.2
    tokenizer (the fast suite's stand-in for SmolLM2's, which counts within ±10% of it on these rows): every category
    keeps ≥ 95% of its rows at 1024 tokens, and at 768 all but parallel_result (two or three whole weather results
    and both weather schemas: 87-94% of its rows fit 768)."""
    from jinja2 import TemplateError

    from llamatune.data.lengths import by_category, min_kept_share, row_tokens
    from llamatune.models import load_llama_tokenizer

    train, _ = generate(1500, 0)
    tok = load_llama_tokenizer("smollm2")
    table = by_category(train, [row_tokens(r, tok, "smollm2") for r in train])
    parallel = next(r for r in train if r["category"] == "parallel")
    try:  # a template of one call per turn cannot render parallel calls: those rows are the only ones it refuses
        render(parallel["messages"], parallel["tools"], template="smollm2")
    except TemplateError:
        assert {c for c, t in table.items() if t["unrenderable"] and c != "all"} == {"parallel", "parallel_result"}
        assert table["parallel"]["unrenderable"] == table["parallel"]["generated"]
        table = {c: t for c, t in table.items() if c not in ("parallel", "parallel_result")}
    assert set(table) >= {*ORIGINAL_CATEGORIES, "near_miss", "injection", "all"}
    assert min_kept_share(table, 1024) >= 0.95, {c: t["kept"] for c, t in table.items()}
    assert min_kept_share({c: t for c, t in table.items() if c != "parallel_result"}, 768) >= 0.95, \
        {c: t["kept"] for c, t in table.items()}


@pytest.mark.slow
@requires("transformers")
def test_kept_shares_with_smollm2s_own_tokenizer():
    """The same demo rows counted by SmolLM2's own tokenizer (the embedded model, built once per cache)."""
    from transformers import AutoTokenizer

    from llamatune.data.lengths import measure, min_kept_share
    from llamatune.smollm2 import smollm2_hf_dir

    train, _ = generate(1500, 0)
    table = measure(train, AutoTokenizer.from_pretrained(smollm2_hf_dir()), "smollm2")
    table = {c: t for c, t in table.items() if not t["unrenderable"]}  # parallel rows need a template of several calls
    assert min_kept_share(table, 1024) >= 0.95, {c: t["kept"] for c, t in table.items()}
    assert min_kept_share({c: t for c, t in table.items() if c != "parallel_result"}, 768) >= 0.95


def test_rows_seen_by_training():
    from llamatune.data.lengths import by_category, seen_by_training

    rows = [{"category": "a"}] * 6 + [{"category": "b"}] * 4
    table = by_category(rows, [100] * 6 + [300, 300, 300, 900], limits=(512,))
    assert table["b"]["kept"]["512"] == 3 and table["all"]["kept_tokens"]["512"] == 1500
    seen = seen_by_training(table, 512, steps=3, batch=2)
    assert seen["a"] == {"seen": 4, "distinct": 4} and seen["b"] == {"seen": 2, "distinct": 2}
    packed = seen_by_training(table, 512, steps=3, batch=2, packed=True)  # 512 / (1500 / 9) rows a sequence
    assert packed["all"]["seen"] == round(6 * 512 * 9 / 1500) and packed["a"]["distinct"] == 6
    measured = seen_by_training(table, 512, steps=1, batch=2, packed=True, sequences=4)  # 9 rows in 4 packs
    assert measured["all"] == {"seen": round(2 * 9 / 4), "distinct": round(2 * 9 / 4)}
    assert seen_by_training(table, 512, steps=2, batch=2, packed=True, sequences=4)["all"]["distinct"] == 9


@requires("trl")
def test_pack_count_is_the_trainers_best_fit_decreasing():
    from llamatune.data.lengths import pack_count

    assert pack_count([600, 500, 400, 100], 1024) == 2  # 600+400, 500+100
    assert pack_count([1024, 1, 1], 1024) == 2 and pack_count([], 1024) == 0
    assert pack_count([300] * 10, 1024) == 4  # three rows a pack


class _FakeOpenAI(BaseHTTPRequestHandler):
    calls = 0

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls += 1
        text = body["messages"][-1]["content"]
        reply = "Quick question: " + text if type(self).calls % 5 else "Something else entirely."
        send_json(self, 200, completion(body["model"], reply, len(text.split()), len(reply.split())))

    def log_message(self, *a):
        pass


@requires("openai")
def test_paraphrase_through_an_openai_compatible_server_is_cached(tmp_path):
    server = HTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v1"
    try:
        meta = build_dataset(tmp_path, 20, seed=1, paraphrase_endpoint=url, paraphrase_model="fake")
        first = _FakeOpenAI.calls
        assert first > 0 and meta["paraphrase"]["used"] > 0
        assert meta["paraphrase"]["rejected"] > 0  # replies that drop the slot values are not used
        train = _read(tmp_path / "train.jsonl")
        assert any(m["content"].startswith("Quick question: ") for r in train for m in r["messages"] if m["role"] == "user")
        assert not any("Quick question" in json.dumps(r) for r in _read(tmp_path / "eval.jsonl"))
        before = (tmp_path / "train.jsonl").read_bytes()
        build_dataset(tmp_path, 20, seed=1, paraphrase_endpoint=url, paraphrase_model="fake")
        assert _FakeOpenAI.calls == first  # all from the cache
        assert (tmp_path / "train.jsonl").read_bytes() == before
    finally:
        server.shutdown()


def test_cli_writes_the_dataset(tmp_path):
    from llamatune.cli import main

    assert main(["data", "funccall", "--out", str(tmp_path), "--n", "50", "--seed", "2"]) == 0
    test = _read(tmp_path / "eval.jsonl")
    assert len(_read(tmp_path / "train.jsonl")) == 40 and len(test) == 15  # 10 of the original categories, 5 new
    assert sum(r["id"].startswith("fc-test-new-") for r in test) == 5


def test_icl_examples_come_from_training_families_only():
    from llamatune.data.icl import icl_examples, icl_system_prompt

    split = split_families()
    ex = icl_examples(7, seed=0)
    assert len(ex) == 7 and {r["category"] for r in ex} == set(ORIGINAL_CATEGORIES)
    assert all(split[f] == "train" for r in ex for f in r["families"])
    text = icl_system_prompt(3)
    assert text.count("Example ") == 3 and '"parameters"' in text
    assert icl_system_prompt(0) == ""


def test_agent_system_prompt_on_training_rows_of_agent_tool_sets(rows):
    from llamatune.protocol import MODES, SYSTEM_PROMPTS
    from llamatune.data.funccall import agent_system_prompt

    train, test = rows
    assert not any(m["role"] == "system" for r in test for m in r["messages"])
    train = [unmask(r) for r in train]  # a masked row keeps the prompt of its real tools' mode
    moded = [r for r in train if agent_system_prompt([t["function"]["name"] for t in r["tools"]])]
    with_system = [r for r in moded if r["messages"][0]["role"] == "system"]
    assert 0.3 < len(with_system) / len(moded) < 0.7
    for r in with_system:
        assert r["messages"][0]["content"].startswith(tuple(SYSTEM_PROMPTS[m] for m in MODES if MODES[m]))
    others = [r for r in train if r not in moded]
    assert others and not any(r["messages"][0]["role"] == "system" for r in others)


@requires("trl", "peft")
def test_funccall_recipes_validate():
    """Both FuncCall recipes load and every key is a RECIPE_KEYS / SFTConfig / LoraConfig field."""
    from llamatune.recipe import load_recipe, split_recipe

    big = load_recipe(REPO / "FuncCall" / "recipes" / "llama-3.2-3b-lora.yaml")
    extra, sft, lora = split_recipe(big)
    assert lora["r"] == 16 and lora["lora_alpha"] == 16 and len(lora["target_modules"]) == 7
    assert sft["num_train_epochs"] == 1 and sft["assistant_only_loss"] is True  # 1,000 rows x 1 epoch
    assert extra["dataset_path"] == "data/funccall" and extra["chat_template"] == "llama-3.2"
    tiny = load_recipe(REPO / "FuncCall" / "recipes" / "tiny-cpu.yaml")
    extra, sft, _ = split_recipe(tiny)
    assert extra["model_name_or_path"] == "tiny" and sft["eval_strategy"] == "no"
