"""Calls valid by construction in the decoding loop (issue 27): a lazy call grammar leaves text answers byte-identical,
a grammar active from the first token makes even the random tiny model write a valid call, the agent decoding under
its tools' grammar never reports an invalid call, and ``--constrain`` runs of the evals keep their own cache entries.
Real GGUFs: the tiny one (random weights on the Llama 3.2 tokenizer) by default, SmolLM2-135M f16 in the slow tests."""

from __future__ import annotations

import json

import pytest

from tests.conftest import requires

pytestmark = requires("llama_cpp")

HEAD = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
TAIL = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
ASKS = ["Hello", "What is the capital of France?", "Weather in Oslo?", "Tell me about cats"]


@pytest.fixture(scope="module")
def tools():
    from llamatune.tools import all_tools

    return [t.schema for t in all_tools().values()]


@pytest.fixture(scope="module")
def units(tools):
    """A tool without free strings: the random tiny model, held to its grammar, ends its call (a free string, or a
    list of parallel calls, it would continue forever)."""
    return [t for t in tools if t["function"]["name"] == "convert_units"]


def one_call(tools):
    """The grammar of exactly one bare JSON call (Llama 3.2's form without the tag), active from the first token."""
    from llamatune.grammar import CallSyntax, call_grammar

    return call_grammar(tools, CallSyntax(form="object", arguments_key="parameters"))


@pytest.fixture(scope="module")
def dec(tiny_gguf):
    from llamatune.runtime import open_decoder

    d = open_decoder(str(tiny_gguf["f16"]), n_seq=2, n_ctx=512, n_threads=1)
    yield d
    d.close()
    d.llm.close()


def _ids(dec, ask):
    return dec.llm.tokenize((HEAD + ask + TAIL).encode(), add_bos=False, special=True)


def _valid(text, tools) -> bool:
    from llamatune.toolcall import parse_output, validate_call

    parsed = parse_output(text)
    return bool(parsed.calls) and parsed.format_valid and not any(validate_call(c, tools) for c in parsed.calls)


def test_a_lazy_grammar_leaves_a_text_answer_byte_identical(dec, tools):
    """Prose never reaches the call opener: the grammar, checked on every token, changes none."""
    from llamatune.decode import Request
    from llamatune.grammar import grammar_for

    g = grammar_for(tools, "llama-3.2")
    reqs = [Request(_ids(dec, a), max_tokens=24, tag=("raw", a)) for a in ASKS]
    # close_reserve = the budget: the closing rule is consulted on every token, and must leave prose alone too
    reqs += [Request(_ids(dec, a), max_tokens=24, grammar=g, close_reserve=24, tag=("lazy", a)) for a in ASKS]
    out = {s.request.tag: s for s in dec.generate(reqs)}
    for a in ASKS:
        raw, lazy = out["raw", a], out["lazy", a]
        assert (lazy.ids, lazy.text.encode(), lazy.finish) == (raw.ids, raw.text.encode(), raw.finish)
        assert lazy.constrained == 0 and not raw.text.lstrip().startswith(("{", "<|python_tag|>"))


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_a_grammar_active_from_the_first_token_gives_a_valid_call(dec, units, temperature):
    """The random tiny model under a grammar that is on from the first token (tool_choice required) writes a call
    that parses and validates against the offered tools; greedy, and sampled (the chain's pick among the allowed)."""
    from llamatune.decode import Request, sampler_factory

    g = one_call(units)
    reqs = [Request(_ids(dec, a), max_tokens=200, grammar=g, lazy=False, sampler=sampler_factory(temperature, seed=i))
            for i, a in enumerate(ASKS[:2])]
    for seq in dec.generate(reqs):
        assert seq.finish == "stop" and seq.constrained > 0, seq.text
        assert _valid(seq.text, units), seq.text


def test_a_call_still_open_near_the_budget_is_closed_where_the_grammar_allows(dec, tools):
    """A free string never ends for the random tiny model: without the closing rule the budget cuts the call in half
    (finish "length", no call parses); with it the call closes within the reserve and validates (finish "stop")."""
    from llamatune.decode import Request

    weather = [t for t in tools if t["function"]["name"] == "get_current_weather"]
    g = one_call(weather)
    ids = _ids(dec, ASKS[2])
    cut, closed = dec.generate([Request(ids, max_tokens=40, grammar=g, lazy=False, close_reserve=0, tag="cut"),
                                Request(ids, max_tokens=40, grammar=g, lazy=False, close_reserve=8, tag="closed")])
    assert cut.finish == "length" and not _valid(cut.text, weather), cut.text
    assert closed.finish == "stop" and _valid(closed.text, weather), closed.text
    assert 32 < len(closed.ids) <= 40 and closed.ids[:32] == cut.ids[:32]  # the same until the reserve


def test_a_call_cut_before_its_required_arguments_closes_with_them(dec):
    """The random tiny model never ends its first list of numbers: without the rule the budget cuts the call; with it
    the call closes with every required argument, those it never reached given their least values."""
    from llamatune.decode import Request

    g = one_call([FIT])
    ids = _ids(dec, ASKS[1])
    cut, closed = dec.generate([Request(ids, max_tokens=48, grammar=g, lazy=False, close_reserve=0, tag="cut"),
                                Request(ids, max_tokens=48, grammar=g, lazy=False, close_reserve=64, tag="closed")])
    assert cut.finish == "length" and not _valid(cut.text, [FIT]), cut.text
    assert closed.finish == "stop" and _valid(closed.text, [FIT]) and len(closed.ids) <= 48, closed.text
    args = json.loads(closed.text)["parameters"]
    assert list(args)[:4] == ["values", "weights", "mode", "opts"] and args["opts"] == {"n": 0}, closed.text


def test_closing_text_reads_what_a_call_left_open():
    """The closing rule's target: the string, then objects and lists innermost first, then the template's closer;
    prose before the opener and brackets inside strings do not count; after a backslash nothing can close yet."""
    from llamatune.sampling import closing_text, closing_tokens

    open_call = 'Sure {see} <tool_call>[\n{"name": "f", "arguments": {"q": "a {b [c'
    assert closing_text(open_call, "<tool_call>", "</tool_call>") == '"}}]</tool_call>'
    assert closing_text('{"name": "f", "parameters": {"xs": [1, 2', None, None) == "]}}"
    assert closing_text('{"name": "f", "parameters": {"q": "say \\"hi\\" ', None, None) == '"}}'
    assert closing_text('{"name": "f", "parameters": {"q": "x\\', None, None) is None
    assert closing_text('<tool_call>[{"name": "f", "arguments": {}}]', "<tool_call>", "</tool_call>") == "</tool_call>"
    in_arg = '<tool_call>[{"name": "f", "arguments": {"q": "see <tool_call>[x'  # an opener inside a string
    assert closing_text(in_arg, "<tool_call>", "</tool_call>") == '"}}]</tool_call>'
    by_text = {'"': [1], '"}': [2], '"}}': [3], "}": [4], "x": [5]}
    assert closing_tokens('"}}]', by_text) == [(3, 3), (2, 2), (1, 1)]  # longest first; "}" does not start it


FIT = {"type": "function", "function": {"name": "fit", "description": "Fit a model.", "parameters": {
    "type": "object", "required": ["values", "weights", "mode", "opts"], "properties": {
        "values": {"type": "array", "items": {"type": "number"}},
        "weights": {"type": "array", "items": {"type": "number"}},
        "mode": {"type": "string", "enum": ["fast", "slow"]}, "note": {"type": "string"},
        "opts": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}}}


def test_the_closing_text_writes_the_required_keys_a_call_still_lacks(dec, units):
    """With the grammar's schemas the closing text gives each open object the required keys it lacks (schema order,
    the least value each allows) and a key its value, so the grammar lets it close: every such text is accepted by
    llama.cpp's own grammar; a key, a tool name or an enum value half written is finished as the schema offers.
    Without the name of an offered tool it stays the plain closing text."""
    from llamatune.grammar import SMOLLM2, call_grammar
    from llamatune.sampling import closing_text

    g = call_grammar([FIT, *units], SMOLLM2)
    schemas = [s for _, s in json.loads(g.schemas)]
    head, rest = '<tool_call>[\n{"name": "fit", "arguments": {', ', "mode": "fast", "opts": {"n": 0}}}]</tool_call>'
    cases = {
        '"values": [1, 2.5': '], "weights": []' + rest,
        '"values": [1,': '0], "weights": []' + rest,
        '"values": [1], "weights":': "[]" + rest,
        '"values"': ': [], "weights": []' + rest,
        '"values": [1],': '"weights": []' + rest,
        '"values": [1], "weights": [2], "mode": "slow", "opts": {': '"n": 0}}}]</tool_call>',
        '"values": [1], "weights": [2], "mode": "fast", "opts": {"n": 3}, "note": "a [b': '"}}]</tool_call>',
        '"values": [1], "wei': 'ghts": []' + rest,  # a key half written: the property it starts
        '"values": [1], "weights": [2], "mode": "sl': 'ow", "opts": {"n": 0}}}]</tool_call>',  # an enum value
    }
    for written, target in cases.items():
        assert closing_text(head + written, "<tool_call>", "</tool_call>", schemas) == target, written
        assert g.accepts(dec.vocab, head + written + target), written + target
    name = '<tool_call>[\n{"name": "fi'  # a tool's name half written: the offered one it starts, then its arguments
    target = 't", "arguments": {"values": [], "weights": []' + rest
    assert closing_text(name, "<tool_call>", "</tool_call>", schemas) == target
    assert g.accepts(dec.vocab, name + target)
    assert closing_text(head + '"values": [1', "<tool_call>", "</tool_call>") == "]}}]</tool_call>"  # no schemas
    other = '<tool_call>[\n{"name": "nope", "arguments": {"values": [1'
    assert closing_text(other, "<tool_call>", "</tool_call>", schemas) == "]}}]</tool_call>"


def _char_closer():
    """The closing rule over a vocabulary of single characters (token = code point), end of generation = 0."""
    from llamatune.sampling import Closer

    c = Closer.__new__(Closer)
    c.eog, c.piece = 0, lambda t: chr(t).encode()
    c.by_text = {chr(t): [t] for t in range(33, 127)}
    c.plain = set(c.by_text)
    c.longest = 1
    return c


def test_the_closing_rule_waits_until_a_call_could_not_end_in_time():
    """Nothing while the call can still end; its closing text once the tokens left are what closing takes (+2, +5
    before a key or value); a list of calls closes after a whole call when another as long would not fit."""
    from llamatune.grammar import SMOLLM2, call_grammar

    c = _char_closer()
    ids = lambda text: [ord(ch) for ch in text]  # noqa: E731
    in_value = '<tool_call>[{"name": "f", "arguments": {"q": "abc'
    target = '"}}]</tool_call>'
    assert c(ids(in_value), SMOLLM2, len(target) + 3) is None
    eog, tokens, text, room = c(ids(in_value), SMOLLM2, len(target) + 2)
    assert (eog, text, tokens[0], room) == (0, target, (1, ord('"')), False)  # no token to spare on a space
    before_key = '<tool_call>[{"name": "f", "arguments": {'
    assert c(ids(before_key), SMOLLM2, len("}}]</tool_call>") + 7)[2] == "}}]</tool_call>"
    assert c(ids(before_key), SMOLLM2, len("}}]</tool_call>") + 8) is None
    fit = call_grammar([FIT], SMOLLM2)  # the schemas' required keys count: the rule starts that much earlier
    runaway = '<tool_call>[{"name": "fit", "arguments": {"values": [1, 2'
    target = '], "weights": [], "mode": "fast", "opts": {"n": 0}}}]</tool_call>'
    assert c(ids(runaway), fit, len(target) + 2)[2] == target
    assert c(ids(runaway), fit, len(target) + 3) is None
    assert c(ids(runaway), fit, 1000, started=True)[2] == target  # once begun, closing does not wait again
    one_call = '<tool_call>[{"name": "f", "arguments": {"q": "abc"}}'  # 41 characters after the opener
    call = len(one_call) - len("<tool_call>[")
    assert c(ids(one_call), SMOLLM2, len("]</tool_call>") + 2 + call + 2)[2:] == ("]</tool_call>", True)  # "\n]"
    assert c(ids(one_call), SMOLLM2, len("]</tool_call>") + 2 + call + 3) is None


@pytest.mark.slow  # ~10 s: the random model's every token is refused, a full-vocabulary (128k) grammar pass each
def test_the_grammar_sampler_survives_a_kv_pause(tiny_gguf, dec, units):
    """A sequence paused for room in the KV cache keeps its grammar state: it resumes to the call it writes alone."""
    from llamatune.decode import Request
    from llamatune.runtime import open_decoder

    g = one_call(units)
    filler = " Please answer briefly and in plain words, thinking of the units involved." * 6  # ~80 tokens each
    reqs = [Request(_ids(dec, a + filler), max_tokens=60, grammar=g, lazy=False) for a in ASKS[:3]]
    alone = []
    for r in reqs:
        dec.clear()
        alone.append(dec.generate([r])[0])
    d = open_decoder(str(tiny_gguf["f16"]), n_seq=3, n_ctx=256, unified=True, n_threads=1)  # cannot hold all three
    try:
        out = d.generate(reqs)
        assert d.n_paused >= 1
    finally:
        d.close()
        d.llm.close()
    assert [s.ids for s in out] == [s.ids for s in alone]
    assert all(s.finish == "stop" and _valid(s.text, units) for s in out), [s.text for s in out]


class _ForcedFirstCall:
    """The tiny model, its first call of each turn under the grammar from the first token (as a model that decided
    to call would be), later calls lazily: what the agent does with a constrained call."""

    def __init__(self, model):
        self.m, self.n = model, 0
        self.name, self.template, self.n_ctx, self.supports_grammar = model.name, model.template, model.n_ctx, True

    def __getattr__(self, name):
        return getattr(self.m, name)

    def complete(self, prompt, *, grammar=None, **kw):
        self.n += 1
        return self.m.complete(prompt, grammar=grammar, lazy=self.n % 2 == 0, **kw)


def test_a_constrained_agent_turn_on_a_real_gguf_never_reports_an_invalid_call(tiny_gguf):
    from llamatune.agent import Agent
    from llamatune.runtime import LlamaCppModel
    from llamatune.tools import http
    from llamatune.tools.fakes import FakeServices

    model = LlamaCppModel(str(tiny_gguf["f16"]), n_ctx=2048, n_threads=1)
    http.clear_cache()
    try:
        with FakeServices():
            forced = _ForcedFirstCall(model)
            agent = Agent(forced, mode="chat", tools=["convert_units"], max_new_tokens=160)
            assert agent.grammar is not None and Agent(forced, constrain=False).grammar is None
            events = list(agent.run([], "How many feet is 3 metres?"))
    finally:
        model.close()
    kinds = [e.kind for e in events]
    assert "invalid_call" not in kinds and "tool_call" in kinds, kinds
    assert events[-1].data["constrained_tokens"] > 0


def test_an_eval_constrain_run_keeps_its_own_cache_entries(tiny_gguf, tmp_path):
    from llamatune.evals import toolcall
    from tests.test_toolcall_eval import _short_test_set

    _short_test_set(tmp_path / "data", 3)
    data, out = tmp_path / "data" / "eval.jsonl", tmp_path / "r.json"
    gguf = str(tiny_gguf["f16"])
    raw = toolcall.evaluate(gguf, data, out, max_tokens=6, n_threads=1, batch=2)
    cache = out.with_suffix(".generations.jsonl")
    keys = [json.loads(x)["key"] for x in cache.read_text().splitlines()]
    con = toolcall.evaluate(gguf, data, out, max_tokens=6, n_threads=1, batch=2, constrain=True)
    rows = [json.loads(x) for x in cache.read_text().splitlines()]
    assert len(rows) == 2 * len(keys) and not {r["key"] for r in rows[len(keys):]} & set(keys)
    assert all("constrained_tokens" in r for r in rows[len(keys):])
    assert "constrained" not in raw and con["constrained"] is True
    assert con["constrained_tokens"] == sum(i["constrained_tokens"] for i in con["items"])
    assert toolcall.evaluate(gguf, data, out, max_tokens=6, n_threads=1, constrain=True)["items"] == con["items"]
    assert len(cache.read_text().splitlines()) == len(rows)  # a rerun decodes nothing


def test_a_constrained_eval_reuses_raw_outputs_that_opened_no_call(tiny_gguf, tmp_path):
    """``reuse``: an item whose raw output shows no trigger of its grammar keeps that output (the lazy grammar would
    not have acted: decoding it again gives the same text); an item whose raw output shows one is decoded again."""
    from llamatune.evals import toolcall
    from llamatune.grammar import grammar_for
    from tests.test_toolcall_eval import _short_test_set

    _short_test_set(tmp_path / "data", 3)
    data, gguf = tmp_path / "data" / "eval.jsonl", str(tiny_gguf["f16"])
    run = lambda name, **kw: toolcall.evaluate(gguf, data, tmp_path / name, max_tokens=6, n_threads=1,  # noqa: E731
                                               batch=2, **kw)
    raw, full = run("raw.json"), run("full.json", constrain=True)
    tools = {r["id"]: r["tools"] for r in map(json.loads, data.read_text().splitlines())}
    assert not any(grammar_for(tools[i["id"]], raw["template"]).may_trigger(i["output"]) for i in raw["items"])
    reused = run("reused.json", constrain=True, reuse=tmp_path / "raw.json")
    assert [i["output"] for i in reused["items"]] == [i["output"] for i in full["items"]]
    assert reused["reused"] == len(full["items"]) and reused["constrained_tokens"] == 0
    # a raw file whose first output opened a call and whose others are marked: the first is decoded again
    rows = [json.loads(x) for x in (tmp_path / "raw.generations.jsonl").read_text().splitlines()]
    first = full["items"][0]["id"]
    for r in rows:
        r["output"] = '<|python_tag|>{"name": "x"' if r["id"] == first else f"kept {r['id']}"
    (tmp_path / "marked.generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    again = run("again.json", constrain=True, reuse=tmp_path / "marked.json")
    assert again["reused"] == len(rows) - 1
    assert {i["id"]: i["output"] for i in again["items"]} == {
        i["id"]: i["output"] if i["id"] == first else f"kept {i['id']}" for i in full["items"]}


def test_generate_cached_keys_and_records_the_constrain_setting(tmp_path):
    """BFCL's cache (``generate_cached``): a constrained answer is another entry, recording the tokens changed."""
    from llamatune.generate import Generator, generate_cached
    from llamatune.model_spec import parse_spec

    class Fake(Generator):
        backend, template = "fake", "smollm2"

        def __init__(self):
            self.spec, self.seen, self.constrained = parse_spec(str(tmp_path / "m.gguf")), [], {}

        def generate_each(self, conversations, max_tokens=512, temperature=0.0, constrain=False):
            self.seen.append(constrain)
            for i, _ in enumerate(conversations):
                self.constrained[i] = 3 if constrain else 0
                yield i, "constrained" if constrain else "raw"

    (tmp_path / "m.gguf").write_bytes(b"GGUF fake")
    prompts = [{"id": "a", "messages": [{"role": "user", "content": "hi"}], "tools": []}]
    gen, cache, records = Fake(), tmp_path / "c.jsonl", {}
    assert generate_cached(gen, prompts, cache, progress=False) == {"a": "raw"}
    assert generate_cached(gen, prompts, cache, progress=False, constrain=True, records=records) == {"a": "constrained"}
    assert generate_cached(gen, prompts, cache, progress=False, constrain=True) == {"a": "constrained"}
    assert gen.seen == [False, True] and records["a"]["constrained_tokens"] == 3 and records["a"]["constrained"]


def test_the_space_setting_and_flags_switch_constraining():
    from llamatune.space_models import ServingLimits

    assert ServingLimits().constrain is True
    assert ServingLimits.from_settings({"constrain": False}).constrain is False
    assert ServingLimits.from_settings({"constrain": False}, constrain=True).constrain is True
    with pytest.raises(ValueError, match="constrain.*true or false"):
        ServingLimits.from_settings({"constrain": "no"}, "x.yaml: settings")
    import argparse

    from llamatune import terminal

    p = argparse.ArgumentParser()
    terminal.add_arguments(p)
    assert p.parse_args(["--model", "m.gguf"]).constrain is True
    assert p.parse_args(["--model", "m.gguf", "--no-constrain"]).constrain is False


@pytest.mark.slow
def test_smollm2_constrained_agent_calls_are_valid_and_text_is_unchanged():
    """SmolLM2-135M-Instruct (f16, untuned): the bench's tool prompts through the constrained agent report no
    invalid call; its no-tool prompts get the same text with and without the lazy grammar."""
    import sys

    from tests.conftest import REPO

    sys.path.insert(0, str(REPO / "bench"))
    from agent import NO_TOOL, TOOL
    from decode_batch import smollm2_f16

    from llamatune.agent import Agent
    from llamatune.runtime import LlamaCppModel
    from llamatune.tools import http
    from llamatune.tools.fakes import FakeServices

    model = LlamaCppModel(str(smollm2_f16()), n_ctx=4096, n_threads=2, chat_template="smollm2")
    http.clear_cache()
    try:
        with FakeServices():
            for mode, q in TOOL:
                events = list(Agent(model, mode=mode, max_new_tokens=96).run([], q))
                assert "invalid_call" not in [e.kind for e in events], (q, [e.data for e in events])
            for mode, q in NO_TOOL:
                texts = [list(Agent(model, mode=mode, max_new_tokens=48, constrain=c).run([], q))[-1].data["text"]
                         for c in (False, True)]
                assert texts[0] == texts[1], q
    finally:
        model.close()
