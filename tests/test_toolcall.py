"""Tool-call parsing (every accepted form, and what is not a call) and schema validation reasons."""

import pytest

from llamatune.toolcall import ToolCall, parse_output, parse_tool_calls, validate_call
from llamatune.tools.weather import get_current_weather, get_weather_forecast

W = ToolCall("get_current_weather", {"location": "Oslo"})


@pytest.mark.parametrize("text", [
    '{"name": "get_current_weather", "parameters": {"location": "Oslo"}}',
    '{"name": "get_current_weather", "arguments": {"location": "Oslo"}}',
    '<|python_tag|>{"name": "get_current_weather", "parameters": {"location": "Oslo"}}',
    '  \n{"name": "get_current_weather", "parameters": {"location": "Oslo"}}<|eom_id|>\n',
    '```json\n{"name": "get_current_weather", "parameters": {"location": "Oslo"}}\n```',
    '[{"name": "get_current_weather", "parameters": {"location": "Oslo"}}]',
    '{"name": "get_current_weather", "arguments": "{\\"location\\": \\"Oslo\\"}"}',
    '[get_current_weather(location="Oslo")]',
    'get_current_weather(location="Oslo")',
    '<|python_tag|>get_current_weather(location="Oslo")',
    # SmolLM2's own format (model card, Ollama), and the Hermes/Qwen form of one object per tag
    '<tool_call>[\n{"name": "get_current_weather", "arguments": {"location": "Oslo"}}\n]</tool_call>',
    '<tool_call>[{"name": "get_current_weather", "arguments": {"location": "Oslo"}}]</tool_call><|im_end|>',
    '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "Oslo"}}\n</tool_call>',
    '  <tool_call>[{"name": "get_current_weather", "arguments": {"location": "Oslo"}}]',  # the closer cut by a stop
])
def test_accepted_forms(text):
    out = parse_output(text)
    assert out.calls == [W] and out.attempted and out.format_valid


def test_list_of_calls_and_pythonic_values():
    calls = parse_tool_calls('[get_current_weather(location="Oslo"), calculate(expression="1+1")]')
    assert calls == [W, ToolCall("calculate", {"expression": "1+1"})]
    assert parse_tool_calls('[f(a=1, b=2.5, c=True, d=None, e=[1, "x"])]')[0].arguments == {
        "a": 1, "b": 2.5, "c": True, "d": None, "e": [1, "x"]}


@pytest.mark.parametrize("text", [
    "It is sunny in Oslo today.",
    "",
    'Sure! Here is JSON: {"name": "get_current_weather", "parameters": {"location": "Oslo"}} as you asked.',
    "I think (as said before) that it will rain (probably).",
    "The call would be get_current_weather with Oslo.",
])
def test_prose_is_not_a_call(text):
    out = parse_output(text)
    assert out.calls == [] and not out.attempted and out.format_valid


@pytest.mark.parametrize("text, fragment", [
    ('{"name": "get_current_weather", "parameters": {"location": "Oslo"}', "malformed JSON"),
    ('{"parameters": {"location": "Oslo"}}', "needs a string 'name'"),
    ('{"name": "get_current_weather", "parameters": ["Oslo"]}', "must be an object"),
    ("[]", "empty list"),
    ('[get_current_weather("Oslo")]', "keyword arguments only"),
    ("<|python_tag|>", "no call"),
    ('<tool_call>[{"name": "get_current_weather", "arguments": {"location": "Oslo"}</tool_call>', "malformed JSON"),
    ("<tool_call></tool_call>", "malformed JSON"),
    ('<tool_call>[{"arguments": {}}]</tool_call>', "needs a string 'name'"),
    ('<tool_call>[{"name": "f", "arguments": {}}]</tool_call> Done!', "text after </tool_call>"),
    ('{"name": "f", "arguments": "{not json"}', "not valid JSON"),
])
def test_attempted_but_malformed(text, fragment):
    out = parse_output(text)
    assert out.calls == [] and out.attempted and not out.format_valid
    assert fragment in out.error


def test_parallel_calls_in_every_written_form():
    two = [W, ToolCall("get_current_weather", {"location": "Rome"})]
    for text in ['[{"name": "get_current_weather", "parameters": {"location": "Oslo"}}, '
                 '{"name": "get_current_weather", "parameters": {"location": "Rome"}}]',
                 '<tool_call>[\n{"name": "get_current_weather", "arguments": {"location": "Oslo"}},\n'
                 '{"name": "get_current_weather", "arguments": {"location": "Rome"}}\n]</tool_call>',
                 '<tool_call>{"name": "get_current_weather", "arguments": {"location": "Oslo"}}</tool_call>\n'
                 '<tool_call>{"name": "get_current_weather", "arguments": {"location": "Rome"}}</tool_call>']:
        assert parse_output(text).calls == two, text


def test_the_cards_empty_list_means_no_call():
    """SmolLM2's card asks for ``<tool_call>[]</tool_call>`` when no call is needed: not a call, not an attempt."""
    out = parse_output("<tool_call>[]</tool_call>")
    assert out.calls == [] and not out.attempted and out.format_valid
    assert parse_output("[]").attempted  # a bare empty list is still a failed attempt


def test_a_call_must_open_the_output():
    out = parse_output('Let me check. <tool_call>[{"name": "f", "arguments": {}}]</tool_call>')
    assert out.calls == [] and not out.attempted


def test_unknown_keys_are_ignored_but_name_and_args_kept():
    out = parse_output('{"name": "get_current_weather", "parameters": {"location": "Oslo"}, "id": "x1", "type": "f"}')
    assert out.calls == [W]


def test_never_raises_on_junk():
    for junk in ["{", "[", "{}}", "[f(", "<|python_tag|>{{{", None, "{\"name\": 3}", "[1, 2]", "<tool_call>",
                 "<tool_call>" * 500, "<tool_call>[" * 1000, "</tool_call>"]:
        assert parse_output(junk).calls == []
    hostile = {
        "nested brackets": "[" * 1000,                                          # RecursionError in json
        "nested objects": '{"a":' * 5000,
        "huge number": '{"name": "f", "parameters": {"x": ' + "1" * 5000 + "}}",   # int digit limit: ValueError
        "nested pythonic": "[f(x=" + "[" * 2000 + "]" * 2000 + ")]",
    }
    for what, text in hostile.items():
        out = parse_output(text)
        assert out.calls == [] and out.attempted and out.error, what
    assert parse_output('{"name": "f", "parameters": {"x": ' + "1" * 100 + "}}").calls[0].name == "f"


TOOLS = [get_current_weather.schema, get_weather_forecast.schema]


@pytest.mark.parametrize("call, kind, arg", [
    (ToolCall("get_current_weather", {"location": "Oslo"}), None, None),
    (ToolCall("get_weather_forecast", {"location": "Oslo", "days": 2, "unit": "fahrenheit"}), None, None),
    (ToolCall("get_stock_price", {"symbol": "X"}), "unknown_tool", None),
    (ToolCall("get_current_weather", {}), "missing_argument", "location"),
    (ToolCall("get_current_weather", {"location": "Oslo", "city": "Oslo"}), "unexpected_argument", "city"),
    (ToolCall("get_weather_forecast", {"location": "Oslo", "days": "2"}), "wrong_type", "days"),
    (ToolCall("get_weather_forecast", {"location": "Oslo", "days": True}), "wrong_type", "days"),
    (ToolCall("get_current_weather", {"location": "Oslo", "unit": "kelvin"}), "bad_value", "unit"),
])
def test_validator_reasons(call, kind, arg):
    reason = validate_call(call, TOOLS)
    if kind is None:
        assert reason is None
    else:
        assert reason.kind == kind and reason.argument == arg and call.name in str(reason)


def test_int_is_accepted_for_number():
    from llamatune.tools.misc import convert_units

    assert validate_call(ToolCall("convert_units", {"value": 3, "from_unit": "km", "to_unit": "m"}),
                         [convert_units.schema]) is None


@pytest.mark.parametrize("template", ["llama-3.2", "gemma-3", "smollm2"])
def test_call_round_trips_through_template_format(template):
    assert parse_tool_calls(W.to_json()) == [W] == parse_tool_calls(W.to_text(template))
