"""The project's Gemma 3 chat template (llamatune/templates/gemma-3.jinja).

Without tools it must render exactly like Google's templates: the Gemma 2 one shipped in llama.cpp's
``models/templates`` and the Gemma 3 one (which adds system-message folding) as TRL ships it. With tools it
carries the Llama 3.2 template's tool protocol (several calls: a JSON list of its call objects), checked on exact
strings. The ``{% generation %}`` markers must
select exactly what the model writes; masks are character-based, so the Llama tokenizer serves for that check.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jinja2
import pytest

from llamatune.chat import TEMPLATES, render, template_text

from tests.conftest import WEATHER, requires

CHAT = [
    {"role": "user", "content": "  Hi there! \n"},
    {"role": "assistant", "content": "Hello. How can I help?\n"},
    {"role": "user", "content": "Tell me a joke."},
]
SYSTEM = {"role": "system", "content": "You are a pirate."}
CALL = {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
TOOL_CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    CALL,
    {"role": "tool", "content": {"temp_c": 21, "sky": "clear"}},
    {"role": "assistant", "content": "21 °C and clear."},
]
INSTRUCTION = (
    "Given the following functions, please respond with a JSON for a function call with its proper arguments that "
    "best answers the given prompt.\n\n"
    'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.'
    "Do not use variables.\n\n"
)
WEATHER_JSON = (
    '{\n    "type": "function",\n    "function": {\n        "name": "get_weather",\n'
    '        "description": "Current weather in a city.",\n        "parameters": {\n'
    '            "type": "object",\n            "properties": {\n                "city": {\n'
    '                    "type": "string"\n                }\n            },\n            "required": [\n'
    '                "city"\n            ]\n        }\n    }\n}\n\n'
)


def gemma(messages, tools=None, **kw):
    return render(messages, tools, template="gemma-3", **kw)


@pytest.fixture(scope="module")
def official_gemma2():
    pytest.importorskip("llama_cpp")
    from llamatune import pypi

    return pypi.official_template("google-gemma-2-2b-it.jinja")


@pytest.fixture(scope="module")
def official_gemma3():
    """Google's Gemma 3 template as TRL ships it (trl/chat_templates/gemma3.jinja); read without importing trl."""
    spec = importlib.util.find_spec("trl")
    if spec is None or spec.origin is None:
        pytest.skip("optional dependency missing: trl")
    path = Path(spec.origin).parent / "chat_templates" / "gemma3.jinja"
    if not path.exists():
        pytest.skip(f"{path} not in this trl version")
    return path.read_text()


def test_template_registered():
    assert TEMPLATES["gemma-3"]["bos_token"] == "<bos>" and TEMPLATES["gemma-3"]["eos_token"] == "<end_of_turn>"
    assert "{% generation %}" in template_text("gemma-3").replace("{%- generation -%}", "{% generation %}")


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_plain_chat_matches_official_gemma2(official_gemma2, n, add_generation_prompt):
    ours = gemma(CHAT[:n], add_generation_prompt=add_generation_prompt)
    theirs = render(CHAT[:n], source=official_gemma2, template="gemma-3", add_generation_prompt=add_generation_prompt)
    assert ours == theirs


@pytest.mark.parametrize("messages", [CHAT, [SYSTEM, *CHAT], [SYSTEM, *CHAT[:2]], [{"role": "system", "content": " Keep it short. \n"}, CHAT[0]]])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_and_system_folding_match_official_gemma3(official_gemma3, messages, add_generation_prompt):
    ours = gemma(messages, add_generation_prompt=add_generation_prompt)
    theirs = render(messages, source=official_gemma3, template="gemma-3", add_generation_prompt=add_generation_prompt)
    assert ours == theirs


def test_text_item_content_matches_official_gemma3(official_gemma3):
    messages = [{"role": "user", "content": [{"type": "text", "text": " What is 2+2? "}]}, {"role": "assistant", "content": [{"type": "text", "text": "4"}]}]
    assert gemma(messages) == render(messages, source=official_gemma3, template="gemma-3")


def test_exact_plain_rendering():
    assert gemma([SYSTEM, *CHAT], add_generation_prompt=True) == (
        "<bos><start_of_turn>user\nYou are a pirate.\n\nHi there!<end_of_turn>\n"
        "<start_of_turn>model\nHello. How can I help?<end_of_turn>\n"
        "<start_of_turn>user\nTell me a joke.<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_tools_call_and_result_exact():
    assert gemma(TOOL_CONV, [WEATHER]) == (
        "<bos><start_of_turn>user\nBe brief.\n\n" + INSTRUCTION + WEATHER_JSON + "Weather in Paris?<end_of_turn>\n"
        '<start_of_turn>model\n{"name": "get_weather", "parameters": {"city": "Paris"}}<end_of_turn>\n'
        '<start_of_turn>tool\n{"temp_c": 21, "sky": "clear"}<end_of_turn>\n'
        "<start_of_turn>model\n21 °C and clear.<end_of_turn>\n"
    )


def test_tools_without_system_and_generation_prompt_exact():
    assert gemma([{"role": "user", "content": "Weather in Paris?"}], [WEATHER], add_generation_prompt=True) == (
        "<bos><start_of_turn>user\n" + INSTRUCTION + WEATHER_JSON + "Weather in Paris?<end_of_turn>\n<start_of_turn>model\n"
    )


def test_tool_instruction_and_call_are_the_llama_templates():
    """The same tool protocol as llama-3.2.jinja: identical instruction + schemas, identical call JSON."""
    llama = render(TOOL_CONV[1:4], [WEATHER], template="llama-3.2", date_string="1 Jan 2025")
    ours = gemma(TOOL_CONV[1:4], [WEATHER])
    tools_block = INSTRUCTION + WEATHER_JSON + "Weather in Paris?"
    assert "<|start_header_id|>user<|end_header_id|>\n\n" + tools_block + "<|eot_id|>" in llama
    assert "<start_of_turn>user\n" + tools_block + "<end_of_turn>" in ours
    call = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    assert "<|start_header_id|>assistant<|end_header_id|>\n\n" + call + "<|eot_id|>" in llama
    assert "<start_of_turn>model\n" + call + "<end_of_turn>" in ours


def test_string_tool_results_and_string_arguments():
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "ipython", "content": "  -3 °C, snow \n"},
    ]
    out = gemma(messages, [WEATHER], add_generation_prompt=True)
    assert out.endswith(
        '<start_of_turn>model\n{"name": "get_weather", "parameters": {"city": "Oslo"}}<end_of_turn>\n'
        "<start_of_turn>tool\n-3 °C, snow<end_of_turn>\n<start_of_turn>model\n"
    )


def test_parallel_calls_are_one_model_turn_holding_a_json_list():
    rome = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}
    conv = [TOOL_CONV[1], {**CALL, "tool_calls": [*CALL["tool_calls"], rome]},
            {"role": "tool", "content": {"temp_c": 21}}, {"role": "tool", "content": "18 °C"}]
    assert gemma(conv, [WEATHER], add_generation_prompt=True).endswith(
        "Weather in Paris?<end_of_turn>\n<start_of_turn>model\n"
        '[{"name": "get_weather", "parameters": {"city": "Paris"}}, {"name": "get_weather", "parameters": {"city": "Rome"}}]'
        '<end_of_turn>\n<start_of_turn>tool\n{"temp_c": 21}<end_of_turn>\n<start_of_turn>tool\n18 °C<end_of_turn>\n'
        "<start_of_turn>model\n")


@pytest.mark.parametrize(
    "messages, tools, match",
    [
        ([SYSTEM], [WEATHER], "first user message"),
        ([CHAT[0], SYSTEM], None, "system message must come first"),
        ([{"role": "user", "content": [{"type": "image"}]}], None, "Only text content"),
    ],
)
def test_errors(messages, tools, match):
    with pytest.raises(jinja2.exceptions.TemplateError, match=match):
        gemma(messages, tools)


@requires("transformers", "tokenizers")
def test_generation_markers_select_exactly_the_model_turns():
    from llamatune.models import load_llama_tokenizer

    tok = load_llama_tokenizer("gemma-3")
    assert tok.chat_template == template_text("gemma-3")
    out = tok.apply_chat_template(
        TOOL_CONV, tools=[WEATHER], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert tok.decode(ids) == gemma(TOOL_CONV, [WEATHER])
    spans, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    if cur:
        spans.append(tok.decode(cur))
    assert spans == ['{"name": "get_weather", "parameters": {"city": "Paris"}}<end_of_turn>', "21 °C and clear.<end_of_turn>"]
