"""The call grammar (llamatune/grammar.py), checked by llama.cpp's own grammar sampler on a real vocabulary (the tiny
model's: the Llama 3.2 tokenizer): a text is accepted when every token of it is allowed in turn and the generation
may then end. Valid calls of the project's seven tools and of real BFCL schemas pass; a missing required key, an
unknown key, a wrong type, an unoffered name and a second call where one is allowed are refused; lazily, prose is
never touched."""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path

import pytest

from llamatune import grammar
from llamatune.grammar import GEMMA_3, LLAMA_3_2, PRESETS, SMOLLM2, CallSyntax, call_grammar
from llamatune.toolcall import ToolCall, validate_call
from tests.conftest import requires

pytestmark = requires("llama_cpp")

FIXTURE = Path(__file__).parent / "fixtures" / "bfcl_v4_sample.json"


@pytest.fixture(scope="module")
def vocab(tiny_gguf):
    import llama_cpp

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # the lazy sampler logs every token at DEBUG
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(tiny_gguf["f16"]).encode(), params)
    assert model
    yield llama_cpp.llama_model_get_vocab(model)
    llama_cpp.llama_model_free(model)


@pytest.fixture(scope="module")
def tools():
    from llamatune.tools import all_tools

    return [t.schema for t in all_tools().values()]


def render(syntax: CallSyntax, calls: list[tuple[str, dict]], as_list: bool | None = None) -> str:
    """Calls written the way the templates write JSON (``tojson``: ", " and ": ", no ASCII escaping)."""
    objs = [{syntax.name_key: name, syntax.arguments_key: args} for name, args in calls]
    as_list = syntax.form == "list" or len(objs) > 1 if as_list is None else as_list
    body = json.dumps(objs if as_list else objs[0], ensure_ascii=False)
    return f"{syntax.opener or ''}{body}{syntax.closer or ''}"


SAMPLE = {"string": ['Zürich, "CH"', "Oslo"], "integer": [3, -12], "number": [2.5, 7, 1e-09], "boolean": [True]}


def variants(tool: dict) -> list[dict]:
    """Valid arguments of ``tool``: required only, everything, each optional alone, every enum value."""
    params = tool["function"]["parameters"]
    props, required = params["properties"], params.get("required", [])

    def value(spec, i=0):
        values = spec["enum"] if "enum" in spec else SAMPLE[spec["type"]]
        return values[i % len(values)]

    order = [k for k in props if k in required] + [k for k in props if k not in required]
    out = [{k: value(props[k]) for k in required}]
    for i in range(3):
        out.append({k: value(props[k], i) for k in order})
    out += [{**{k: value(props[k]) for k in required}, opt: value(props[opt])} for opt in props if opt not in required]
    for name, spec in props.items():
        base = {k: value(props[k]) for k in order if k in required or k == name}
        out += [{**base, name: v} for v in spec.get("enum", [])]
    return out


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_valid_call_of_the_project_tools_is_accepted(vocab, tools, preset):
    syntax = PRESETS[preset]
    g = call_grammar(tools, syntax)
    assert g.tools == tuple(sorted(t["function"]["name"] for t in tools)) and len(g.tools) == 7 and g.fallbacks == ()
    checked = 0
    for tool in tools:
        for args in variants(tool):
            call = ToolCall(tool["function"]["name"], args)
            assert validate_call(call, tools) is None, (call, validate_call(call, tools))
            text = render(syntax, [(call.name, args)])
            assert g.accepts(vocab, text), text
            checked += 1
    assert checked > 40
    if syntax is LLAMA_3_2:  # the opener is optional there, and a single call may be a list of one
        assert g.accepts(vocab, '{"name": "calculate", "parameters": {"expression": "2+2"}}')
        assert g.accepts(vocab, '<|python_tag|>[{"name": "calculate", "parameters": {"expression": "2+2"}}]')


WEATHER = ("get_weather_forecast", {"location": "Oslo", "days": 3, "unit": "celsius"})
BAD = {
    "missing required key": ("get_weather_forecast", {"days": 3}),
    "unknown key beside a real one": ("get_weather_forecast", {"location": "Oslo", "units": "celsius"}),
    "integer given as a string": ("get_weather_forecast", {"location": "Oslo", "days": "3"}),
    "integer given as a float": ("get_weather_forecast", {"location": "Oslo", "days": 3.5}),
    "string given as a number": ("get_wikipedia_summary", {"title": 42}),
    "number given as a boolean": ("convert_units", {"value": True, "from_unit": "km", "to_unit": "m"}),
    "value outside the enum": ("get_current_weather", {"location": "Oslo", "unit": "kelvin"}),
    "unoffered name": ("get_weather", {"location": "Oslo"}),
    "name of a project tool not offered here": ("calculate", {"expression": "1+1"}),
    "no arguments object": ("get_weather_forecast", None),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_calls_are_refused(vocab, tools, preset, case):
    syntax = PRESETS[preset]
    offered = [t for t in tools if t["function"]["name"] != "calculate"]
    g = call_grammar(offered, syntax)
    name, args = BAD[case]
    text = render(syntax, [(name, args)])
    if args is None:
        text = text.replace(f', "{syntax.arguments_key}": null', "")
    else:  # invalid by the project's own validator too
        assert validate_call(ToolCall(name, args), offered) is not None
    assert not g.accepts(vocab, text), text
    assert g.accepts(vocab, render(syntax, [WEATHER]))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_text_that_is_not_a_well_formed_call_is_refused(vocab, tools, preset):
    syntax = PRESETS[preset]
    g = call_grammar(tools, syntax)
    good = render(syntax, [WEATHER])
    raw_newline = good.replace('"Oslo"', '"Os\nlo"')  # a JSON string holds no raw control character...
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw_newline.removeprefix(syntax.opener or "").removesuffix(syntax.closer or ""))
    for text in (raw_newline, good + " thanks", good[:-3], good.replace('"days": 3', '"days": 03'),
                 good.replace(", ", ",\n    ")):  # pretty-printed JSON is not what the templates write
        assert not g.accepts(vocab, text), text
    assert g.accepts(vocab, good.replace('"Oslo"', '"Os\\nlo \\u00e9"'))  # escapes are fine


def test_no_closer_stands_inside_an_argument(vocab, tools):
    """SmolLM2's closer starts "</": its strings never hold a raw "</" (JSON writes it "<\\/"), so the first
    </tool_call> is the call's own; "<" alone is fine. Templates without such a closer keep "</" in strings."""
    for syntax in (SMOLLM2, LLAMA_3_2):
        g = call_grammar(tools, syntax)
        inside = render(syntax, [("get_wikipedia_summary", {"title": "a</tool_call>b"})])
        assert g.accepts(vocab, inside) is (syntax is not SMOLLM2), inside
        for title in ("a<\\/tool_call>b", "x < y << z", "<b>bold<\\/b>", "a <", "<<"):
            text = render(syntax, [("get_wikipedia_summary", {"title": "T"})]).replace('"T"', f'"{title}"')
            assert json.loads(text.removeprefix(syntax.opener or "").removesuffix(syntax.closer or ""))
            assert g.accepts(vocab, text), text


def test_may_trigger_finds_every_place_the_lazy_grammar_could_begin(tools):
    smol, llama = call_grammar(tools, SMOLLM2), call_grammar(tools, LLAMA_3_2)
    for text in ("<tool_call>[", 'Sure. <tool_call>[{"name": "f"', "<tool_call>"):
        assert smol.may_trigger(text), text
    for text in ('<|python_tag|>{"name": "f"', '{"name": "f", "parameters": {}}', ' [{"name"', "<|python_tag|>"):
        assert llama.may_trigger(text), text
    for text in ("It is 12°C in Oslo.", "Use {braces} or <b>tags</b>.", 'Say {"name": "f"} later'):
        assert not smol.may_trigger(text) and not llama.may_trigger(text), text


def test_several_calls_only_where_the_syntax_allows_them(vocab, tools):
    two = [WEATHER, ("calculate", {"expression": "6*7"})]
    for syntax in (SMOLLM2, LLAMA_3_2, GEMMA_3):
        assert call_grammar(tools, syntax).accepts(vocab, render(syntax, two))
    single = CallSyntax(form="object", arguments_key="parameters")  # one call per turn
    g = call_grammar(tools, single)
    one = render(single, [WEATHER])
    as_list = render(single, [WEATHER], True)
    for text in (render(single, two), one + render(single, two[1:]), one + "\n" + one, as_list):
        assert not g.accepts(vocab, text), text
    single_list = CallSyntax(opener="<tool_call>", closer="</tool_call>", form="list", parallel=False)
    g = call_grammar(tools, single_list)
    assert g.accepts(vocab, render(single_list, [WEATHER]))
    assert not g.accepts(vocab, render(single_list, two))
    assert not g.accepts(vocab, render(SMOLLM2, [])), "an empty list is not a call"


def test_the_syntax_object_is_checked():
    for bad in (dict(form="tuple"), dict(form="object", parallel=True), dict(opener_optional=True),
                dict(name_key="x", arguments_key="x")):
        with pytest.raises(ValueError):
            CallSyntax(**bad)


# --- BFCL schemas --------------------------------------------------------------------------------------------

def in_grammar_order(value, schema):
    """``value`` with object keys as the converter writes them: required first, then optional, each in schema order."""
    if isinstance(value, dict) and isinstance(schema, dict) and isinstance(schema.get("properties"), dict):
        props, req = schema["properties"], schema.get("required", [])
        keys = [k for k in props if k in req] + [k for k in props if k not in req]
        return {k: in_grammar_order(value[k], props[k]) for k in keys if k in value} | {
            k: v for k, v in value.items() if k not in props}
    if isinstance(value, list) and isinstance(schema, dict) and isinstance(schema.get("items"), dict):
        return [in_grammar_order(v, schema["items"]) for v in value]
    return value


def wrong_type(value):
    return "not a number" if isinstance(value, (int, float)) and not isinstance(value, bool) else 12345


def bfcl_rows(rows):
    from llamatune.evals import bfcl_data

    for r in rows:
        if r["category"] in bfcl_data.AST_CATEGORIES:
            row = bfcl_data.convert_row(r, r["category"]) if "question" in r else r
            exp = row["expected"]
            yield row, exp if isinstance(exp, list) else [exp]


def check_bfcl(vocab, rows, syntax) -> int:
    """Every ground-truth call that fits its schema (written in grammar order) is accepted, one that does not is
    refused, and mutations of a fitting one are refused; returns how many fitting calls were checked."""
    n = 0
    for row, calls in rows:
        g = call_grammar(row["tools"], syntax)
        for call in calls:
            params = next(t for t in row["tools"] if t["function"]["name"] == call["name"])["function"]["parameters"]
            args = in_grammar_order(call["arguments"], params)
            invalid = validate_call(ToolCall(call["name"], args), row["tools"])
            if invalid:  # BFCL's answer contradicts its own schema (an enum without it, a type): refused alike
                assert f"{call['name']}.{invalid.argument}" in g.fallbacks or not g.accepts(
                    vocab, render(syntax, [(call["name"], args)])), (row["id"], args)
                continue
            assert g.accepts(vocab, render(syntax, [(call["name"], args)])), (row["id"], args)
            bad = {"unoffered name": (call["name"] + "_v2", args),
                   "unknown key": (call["name"], {**args, "zz_not_a_parameter": 1})}
            if required := [k for k in params.get("required", []) if k in args]:
                bad["missing required key"] = (call["name"], {k: v for k, v in args.items() if k != required[0]})
            if scalar := [k for k, v in args.items() if params["properties"][k].get("type") in ("string", "integer",
                                                                                                 "number", "boolean")]:
                bad["wrong type"] = (call["name"], {**args, scalar[0]: wrong_type(args[scalar[0]])})
            for why, (name, a) in bad.items():
                assert not g.accepts(vocab, render(syntax, [(name, a)])), (row["id"], why, a)
            n += 1
    return n


def test_bfcl_sample_rows_shipped_with_the_tests(vocab):
    rows = list(bfcl_rows(json.loads(FIXTURE.read_text(encoding="utf-8"))["rows"]))
    assert check_bfcl(vocab, rows, SMOLLM2) >= 12
    assert check_bfcl(vocab, rows, LLAMA_3_2) >= 12


def test_bfcl_seeded_sample_of_every_ast_category(vocab):
    """10 rows of each of BFCL's 8 AST categories (seeded), from the cached bfcl-eval wheel."""
    from llamatune.evals import bfcl_data

    rows = list(bfcl_rows(bfcl_data.load_rows(bfcl_data.AST_CATEGORIES, limit=10, seed=0)))
    assert len(rows) == 80
    assert check_bfcl(vocab, rows, SMOLLM2) >= 100


def test_what_the_converter_cannot_express_falls_back_to_any_json_value(vocab):
    params = {"type": "object", "required": ["a"], "properties": {
        "a": {"type": "any"}, "b": {"description": "no type"}, "c": "not a schema",
        "d": {"type": "integer", "enum": ["1", "2", "dontcare"]},
        "e": {"type": "array", "items": {"type": "string"}, "enum": ["x", "y"]},
        "f": {"type": "object", "description": "free-form"},
        "g": {"type": "array", "items": {"type": "tuple"}},
        "h": {"type": "string", "format": "date-time", "pattern": "^(?=x).*$", "maxLength": 3}}}
    g = call_grammar([{"type": "function", "function": {"name": "f", "parameters": params}}], GEMMA_3)
    assert g.fallbacks == ("f.a", "f.b", "f.c", "f.d", "f.e", "f.g[]")
    for a in ({"k": [1, None]}, [1, "x"], "text", -1.5e3, True, None):
        assert g.accepts(vocab, render(GEMMA_3, [("f", {"a": a, "b": a, "c": a, "g": [a]})])), a
    for args in ({"a": 1, "d": "dontcare"}, {"a": 1, "d": 2}, {"a": 1, "e": ["y", "x"]}, {"a": 1, "f": {"k": {"k": 1}}},
                 {"a": 1, "h": "long, not a date"}):
        assert g.accepts(vocab, render(GEMMA_3, [("f", args)])), args
    for args in ({"b": 1}, {"a": 1, "z": 1}, {"a": 1, "d": "3"}, {"a": 1, "e": ["z"]}, {"a": 1, "f": []}):
        assert not g.accepts(vocab, render(GEMMA_3, [("f", args)])), args


def test_malformed_tool_lists_are_named():
    with pytest.raises(ValueError, match="at least one tool"):
        call_grammar([], SMOLLM2)
    with pytest.raises(ValueError, match="non-empty string 'name'"):
        call_grammar([{"type": "function", "function": {"parameters": {}}}], SMOLLM2)
    with pytest.raises(ValueError, match="share a name"):
        call_grammar([{"name": "f"}, {"type": "function", "function": {"name": "f"}}], SMOLLM2)


def test_the_grammar_is_built_once_per_tool_set_and_syntax(tools):
    first = call_grammar(tools, SMOLLM2)
    hits = grammar._build.cache_info().hits
    other = copy.deepcopy(tools[::-1])  # another order, other descriptions: the same grammar
    for t in other:
        t["function"]["description"] = "changed"
    again = call_grammar(other, SMOLLM2)
    assert again.grammar is first.grammar and grammar._build.cache_info().hits == hits + 1
    assert call_grammar(tools, LLAMA_3_2).grammar != first.grammar
    assert call_grammar(tools[:2], SMOLLM2).grammar != first.grammar


# --- lazy activation -------------------------------------------------------------------------------------------

PROSE = ["The weather in Oslo is mild today, about 12 degrees.",
         'I cannot call a tool for that. In JSON a call looks like {"name": "f"} but I will just answer: 42.',
         "<tool_call is not a tag> and {name} is not a call; 3 < 4 > 2.",
         "Sure.\n\nHere is a list:\n- one\n- two"]


def full_vocab(n):
    import numpy as np

    arr = np.zeros(n, dtype=[("id", np.int32), ("logit", np.float32), ("p", np.float32)])
    arr["id"] = np.arange(n)
    return arr


def apply_all(smpl, arr) -> int:
    """``llama_sampler_apply`` over the whole vocabulary; how many tokens it ruled out."""
    import ctypes

    import llama_cpp

    arr["logit"] = 0.0
    data = arr.ctypes.data_as(llama_cpp.llama_token_data_p)
    llama_cpp.llama_sampler_apply(smpl, ctypes.byref(llama_cpp.llama_token_data_array(data, len(arr), -1, False)))
    return int((arr["logit"] == float("-inf")).sum())


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_lazily_prose_is_never_touched(vocab, tools, preset):
    import llama_cpp

    g = call_grammar(tools, PRESETS[preset])
    arr = full_vocab(llama_cpp.llama_vocab_n_tokens(vocab))
    for text in PROSE:
        smpl = g.sampler(vocab, lazy=True)
        try:
            for token in grammar.tokenize(vocab, text):
                assert apply_all(smpl, arr) == 0, text
                llama_cpp.llama_sampler_accept(smpl, token)
            assert apply_all(smpl, arr) == 0, text  # ... to the end, the end-of-turn included
        finally:
            llama_cpp.llama_sampler_free(smpl)


@pytest.mark.parametrize("preset, before", [("smollm2", "Let me look that up. "), ("llama-3.2", ""),
                                            ("gemma-3", "")])
def test_lazily_the_call_is_constrained_from_its_trigger(vocab, tools, preset, before):
    import llama_cpp

    syntax = PRESETS[preset]
    g = call_grammar(tools, syntax)
    good, bad = render(syntax, [WEATHER]), render(syntax, [BAD["unknown key beside a real one"]])
    assert g.accepts(vocab, before + good, lazy=True) and not g.accepts(vocab, before + bad, lazy=True)
    if syntax.opener_optional:  # the bare form triggers too, at the start of the reply
        bare = good.removeprefix(syntax.opener)
        assert g.accepts(vocab, bare, lazy=True)
        assert not g.accepts(vocab, bare.replace('"days": 3', '"days": "3"'), lazy=True)
    # after the trigger, prose is ruled out
    head = syntax.opener if syntax.opener and not syntax.opener_optional else ""
    head += "[" if syntax.form == "list" else ""
    head = before + (head or '{"name": "')
    arr = full_vocab(llama_cpp.llama_vocab_n_tokens(vocab))
    smpl = g.sampler(vocab, lazy=True)
    try:
        for token in grammar.tokenize(vocab, head):
            llama_cpp.llama_sampler_accept(smpl, token)
        assert apply_all(smpl, arr) > len(arr) - 1000  # almost every token is ruled out
    finally:
        llama_cpp.llama_sampler_free(smpl)


def takes_prefix(g, vocab, text: str) -> bool:
    """Whether the (non-lazy) grammar allows every token of ``text`` in turn (a prefix of a call)."""
    import llama_cpp

    smpl = g.sampler(vocab, lazy=False)
    try:
        for token in grammar.tokenize(vocab, text):
            if not grammar.allowed(smpl, token):
                return False
            llama_cpp.llama_sampler_accept(smpl, token)
        return True
    finally:
        llama_cpp.llama_sampler_free(smpl)


def test_trigger_words_that_are_one_token_become_trigger_tokens(vocab, tools):
    python_tag = grammar.tokenize(vocab, "<|python_tag|>")
    assert len(python_tag) == 1
    g = call_grammar(tools, LLAMA_3_2)
    assert g.trigger_words == ("<|python_tag|>",)
    assert g.trigger_tokens(lambda s: grammar.tokenize(vocab, s)) == tuple(python_tag)
    assert call_grammar(tools, SMOLLM2).trigger_tokens(lambda s: grammar.tokenize(vocab, s)) == ()  # 4 tokens here


def takes_prefix(g, vocab, text: str) -> bool:
    """Whether the (non-lazy) grammar allows every token of ``text`` in turn (a prefix of a call)."""
    import llama_cpp

    smpl = g.sampler(vocab, lazy=False)
    try:
        for token in grammar.tokenize(vocab, text):
            if not grammar.allowed(smpl, token):
                return False
            llama_cpp.llama_sampler_accept(smpl, token)
        return True
    finally:
        llama_cpp.llama_sampler_free(smpl)


TRIGGERS = {  # preset: (texts whose end fires the trigger, texts that do not)
    "smollm2": (["<tool_call>", "Let me check. <tool_call>[", '<tool_call>[{"name": "', "<tool_call>\n[ {"],
                ['<tool_call>{"name"', '<tool_call>[{"name": "x', "<tool_call>[1", "<tool_call >", "tool_call"]),
    "llama-3.2": (["<|python_tag|>", '<|python_tag|>{"name":"', ' {"name"', '[{"name": "', '\n{ "name" :'],
                  ['Hi {"name"', '{"name": "x', '{"name"}}', "[1, 2]", '{"nam": 1}', "<|python_tag|>x"]),
    "gemma-3": (['{"name"', ' {"name": "', '[{"name"'], ['{"name"}}', 'A call: {"name"', '{"name": "get_local_time"']),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_trigger_patterns_end_where_the_grammar_is_sure_to_follow(vocab, tools, preset):
    """A trigger fires only when the text ends inside the call's fixed head: llama.cpp feeds the grammar the text
    from the match (its first group) to the end of the token, and a piece the grammar refused there would abort the
    process. (The patterns are plain enough to read the same in Python's ``re`` and llama.cpp's ECMAScript.)"""
    g = call_grammar(tools, PRESETS[preset])
    fire, quiet = TRIGGERS[preset]
    for text in fire:
        match = next((m for p in g.trigger_patterns if (m := re.search(p, text))), None)
        assert match, text
        fed = text[next((match.start(i) for i in range(1, len(match.groups()) + 1) if match.group(i)), match.start()):]
        assert fed == text.lstrip().removeprefix("Let me check. ") and takes_prefix(g, vocab, fed), (text, fed)
    for text in quiet:
        assert not any(re.search(p, text) for p in g.trigger_patterns), text


def test_a_token_running_past_the_trigger_leaves_the_text_free(vocab, tools):
    g = call_grammar(tools, GEMMA_3)
    assert grammar.tokenize(vocab, '{"name"}}')[-1] != grammar.tokenize(vocab, '{"name"')[-1]  # '"}}' is one piece
    assert g.accepts(vocab, '{"name"}} is how a call starts, not a call', lazy=True)  # and the process is alive


@pytest.mark.parametrize("template", ["smollm2", "llama-3.2", "gemma-3"])
def test_the_grammar_of_a_template_accepts_the_calls_its_template_writes(vocab, tools, template):
    """The contract holds the three together: what the template (via render_calls) writes for one and for several
    calls, the grammar built from the template's call syntax accepts; an unoffered tool it refuses."""
    from llamatune.chatformat import render_calls
    from llamatune.grammar import syntax_of

    g = call_grammar(tools, syntax_of(template))
    one = [{"name": "get_current_weather", "arguments": {"location": "Oslo", "unit": "celsius"}}]
    two = one + [{"name": "convert_units", "arguments": {"value": 5, "from_unit": "km", "to_unit": "mile"}}]
    assert g.accepts(vocab, render_calls(one, template))
    assert g.accepts(vocab, render_calls(two, template))
    assert not g.accepts(vocab, render_calls([{"name": "get_stock_price", "arguments": {}}], template))
