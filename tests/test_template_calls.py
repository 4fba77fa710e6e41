"""The call-syntax contract (llamatune/chatformat.py) against the templates it describes, for every template:
``render_calls`` writes exactly what the template writes for one and for several calls, the parser reads it back
to the same calls, results are wrapped as the contract says, the generation markers select the whole call turn,
and the streaming decision buffers each template's opener."""

from __future__ import annotations

import json
import re

import pytest

from llamatune.chat import TEMPLATES, render, stop_strings, template_text
from llamatune.chatformat import FORMATS, calls_message, chat_format, render_calls
from llamatune.toolcall import ToolCall, looks_like_call, parse_output
from tests.conftest import WEATHER, requires

NAMES = sorted(FORMATS)
CALLS = [ToolCall("get_weather", {"city": "Oslo"}), ToolCall("get_weather", {"city": "Rome", "unit": "celsius"}),
         ToolCall("get_time", {"zone": "Europe/Zürich"})]
USER = {"role": "user", "content": "Weather in Oslo and Rome, and the time in Zürich?"}


def call_turn(template: str, calls) -> str:
    """What the template writes for an assistant turn that makes ``calls`` (up to its end-of-turn token)."""
    fmt = chat_format(template)
    head = render([USER], [WEATHER], template=template, add_generation_prompt=True, date_string="x")
    full = render([USER, calls_message(calls)], [WEATHER], template=template, date_string="x")
    assert full.startswith(head)
    return full[len(head):].split(fmt.eos_token)[0]


def test_the_contract_is_the_template_table():
    assert set(FORMATS) == set(TEMPLATES)
    for name, fmt in FORMATS.items():
        assert stop_strings(name) == fmt.stops and TEMPLATES[name]["eos_token"] == fmt.eos_token
        assert template_text(name)  # every format has its template file
    assert chat_format("no-such-template") is FORMATS["llama-3.2"]


@pytest.mark.parametrize("template", NAMES)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_render_calls_is_what_the_template_writes_and_parses_back(template, n):
    text = render_calls(CALLS[:n], template)
    assert call_turn(template, CALLS[:n]) == text
    parsed = parse_output(text)
    assert parsed.calls == CALLS[:n] and parsed.attempted and parsed.format_valid
    # also with the model's end-of-turn token still attached, as a raw generation may have it
    assert parse_output(text + chat_format(template).eos_token).calls == CALLS[:n]


@pytest.mark.parametrize("template", NAMES)
def test_string_arguments_render_like_dicts(template):
    openai_style = [{"type": "function", "function": {"name": c.name, "arguments": json.dumps(
        c.arguments, ensure_ascii=False)}} for c in CALLS[:2]]
    assert render_calls(openai_style, template) == render_calls(CALLS[:2], template)
    assert call_turn(template, openai_style) == render_calls(CALLS[:2], template)


@pytest.mark.parametrize("template", NAMES)
def test_the_call_turn_has_the_contracts_shape(template):
    fmt = chat_format(template)
    one, two = render_calls(CALLS[:1], template), render_calls(CALLS[:2], template)
    assert one.startswith(fmt.call_open) and one.endswith(fmt.call_close)
    assert two.startswith(fmt.call_open + fmt.list_open) and two.endswith(fmt.list_close + fmt.call_close)
    assert fmt.list_sep in two and (fmt.list_open in one) == fmt.always_list
    assert f'"{fmt.args_key}": ' in one
    assert any(re.match(p, one) for p in fmt.call_triggers)  # a lazy grammar would switch on here
    assert not any(re.match(p, "The weather in Oslo is fine.") for p in fmt.call_triggers)


@pytest.mark.parametrize("template", NAMES)
def test_results_are_wrapped_as_the_contract_says(template):
    fmt = chat_format(template)
    text = render([USER, calls_message(CALLS[:2]), {"role": "tool", "content": {"t": 3}},
                   {"role": "tool", "content": "18 C"}], [WEATHER], template=template, date_string="x")
    for content in ('{"t": 3}', '"18 C"' if fmt.quotes_string_results else "18 C"):
        assert fmt.result_open + content + fmt.result_close + fmt.eos_token in text


@pytest.mark.parametrize("template", NAMES)
def test_streaming_buffers_the_templates_opener(template):
    opener = chat_format(template).opener
    for i in range(1, len(opener) + 1):
        assert looks_like_call(opener[:i], template) is not False  # never streamed to the user half-written
    assert looks_like_call(render_calls(CALLS[:2], template)[:12], template)
    assert looks_like_call("The weather", template) is False


def test_render_calls_refuses_no_calls():
    with pytest.raises(ValueError, match="at least one call"):
        render_calls([], "smollm2")


@requires("transformers", "tokenizers")
@pytest.mark.parametrize("template", NAMES)
def test_transformers_renders_parallel_turns_like_llamatune_and_trains_the_whole_turn(template):
    """The HF tokenizer's apply_chat_template (what training renders) equals llamatune.chat.render (what serving
    renders) with parallel calls, and the assistant mask covers exactly the call turn and its end of turn."""
    from llamatune.models import load_llama_tokenizer

    tok = load_llama_tokenizer(template)
    assert tok.chat_template == template_text(template)
    conv = [USER, calls_message(CALLS), *({"role": "tool", "content": {"n": i}} for i in range(3)),
            {"role": "assistant", "content": "Oslo 3 °C, Rome 18 °C; 14:05 in Zürich."}]
    out = tok.apply_chat_template(conv, tools=[WEATHER], tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True, date_string="x")
    assert tok.decode(out["input_ids"]) == render(conv, [WEATHER], template=template, date_string="x")
    spans, cur = [], []
    for i, m in zip(out["input_ids"], out["assistant_masks"]):
        if m:
            cur.append(i)
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    spans += [tok.decode(cur)] if cur else []
    eos = chat_format(template).eos_token
    assert spans == [render_calls(CALLS, template) + eos, "Oslo 3 °C, Rome 18 °C; 14:05 in Zürich." + eos]


@pytest.mark.parametrize("template", NAMES)
def test_icl_examples_write_calls_in_the_templates_syntax(template):
    """Base + ICL sees worked examples whose calls are what its template asks for, and they parse back."""
    from llamatune.data.icl import icl_examples, icl_system_prompt

    text = icl_system_prompt(5, template=template)
    fmt = chat_format(template)
    assert render_calls([{"name": "function_name", "arguments": {"argument": "value"}}], template) in text
    rows = icl_examples(5)
    calls = [m["tool_calls"] for r in rows for m in r["messages"] if m.get("tool_calls")]
    assert calls
    for tc in calls:
        written = render_calls(tc, template)
        assert "Assistant: " + written in text
        assert [c.name for c in parse_output(written).calls] == [c["function"]["name"] for c in tc]
    if fmt.call_open:
        assert '"parameters"' not in text.split("Example 1:")[1]  # no other template's call syntax
