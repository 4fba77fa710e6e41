"""The project's Llama 3.2 template renders exactly like Meta's official one (read from the llama-cpp-python
sdist at test time), and its generation markers select exactly the assistant's tokens."""

import json

import pytest

from llamatune import pypi
from llamatune.chat import render, template_text
from llamatune.chatformat import render_calls

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string", "description": "City, e.g. Oslo"},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["location"],
        },
    },
}
CALL = {"role": "assistant", "tool_calls": [{"type": "function", "function": {
    "name": "get_current_weather", "arguments": {"location": "Zürich", "unit": "celsius"}}}]}

CASES = {
    "plain": ([{"role": "user", "content": "Hello!"}], None, False),
    "system_chat": ([{"role": "system", "content": "  You are terse.  "}, {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello."}], None, False),
    "tools_call_result_answer": ([
        {"role": "system", "content": "You are a weather assistant."},
        {"role": "user", "content": "Weather in Zürich?"}, CALL,
        {"role": "ipython", "content": {"temperature": "3°C", "conditions": "fog"}},
        {"role": "assistant", "content": "It is 3°C and foggy in Zürich."}], [WEATHER], False),
    "tool_role_string_result": ([
        {"role": "user", "content": "Weather in Oslo?"}, CALL,
        {"role": "tool", "content": "3 degrees"}], [WEATHER], True),
    "multi_turn": ([
        {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And times 3?"}, {"role": "assistant", "content": "12"},
        {"role": "user", "content": "Thanks!"}], None, False),
    "generation_prompt": ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
                          None, True),
    "tools_generation_prompt": ([{"role": "user", "content": "Is it raining in Bergen?"}], [WEATHER], True),
}


@pytest.fixture(scope="module")
def official():
    return pypi.official_template("meta-llama-Llama-3.2-3B-Instruct.jinja")


@pytest.mark.parametrize("case", sorted(CASES))
def test_renders_like_official_template(case, official):
    messages, tools, gen = CASES[case]
    ours = render(messages, tools, add_generation_prompt=gen, date_string="28 Nov 2026")
    theirs = render(messages, tools, source=official, add_generation_prompt=gen, date_string="28 Nov 2026")
    assert ours == theirs


def test_documented_format_details():
    messages, tools, _ = CASES["tools_call_result_answer"]
    text = render(messages, tools, date_string="28 Nov 2026")
    assert text.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
                           "Cutting Knowledge Date: December 2023\nToday Date: 28 Nov 2026\n\nYou are a weather assistant.")
    assert '{"name": "get_current_weather", "parameters": {"location": "Zürich", "unit": "celsius"}}<|eot_id|>' in text
    assert "<|start_header_id|>ipython<|end_header_id|>\n\n{\"temperature\": \"3°C\"" in text
    assert text.count("<|eot_id|>") == 5
    assert "Environment: ipython" not in render(CASES["plain"][0], date_string="x")


PARALLEL = dict(CALL, tool_calls=[*CALL["tool_calls"], {"type": "function", "function": {
    "name": "get_current_weather", "arguments": {"location": "Oslo"}}}])


def test_parallel_calls_are_a_json_list_of_metas_call_objects(official):
    """Meta's template refuses several calls; ours writes them as a list of Meta's objects (its one deviation)."""
    messages = [{"role": "user", "content": "Weather in Zürich and Oslo?"}, PARALLEL,
                {"role": "ipython", "content": {"t": 3}}, {"role": "ipython", "content": {"t": -2}}]
    with pytest.raises(Exception, match="single tool-calls"):
        render(messages, [WEATHER], source=official, date_string="x")
    text = render(messages, [WEATHER], date_string="x", add_generation_prompt=True)
    assert text.endswith(
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '[{"name": "get_current_weather", "parameters": {"location": "Zürich", "unit": "celsius"}}, '
        '{"name": "get_current_weather", "parameters": {"location": "Oslo"}}]<|eot_id|>'
        '<|start_header_id|>ipython<|end_header_id|>\n\n{"t": 3}<|eot_id|>'
        '<|start_header_id|>ipython<|end_header_id|>\n\n{"t": -2}<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_string_arguments_are_written_as_they_are():
    msg = {"role": "assistant", "tool_calls": [{"type": "function", "function": {
        "name": "get_current_weather", "arguments": '{"location": "Oslo"}'}}]}
    text = render([{"role": "user", "content": "x"}, msg], [WEATHER], date_string="x")
    assert '{"name": "get_current_weather", "parameters": {"location": "Oslo"}}<|eot_id|>' in text


def test_generation_mask_is_exactly_the_assistant_turns():
    from llamatune.models import load_llama_tokenizer

    tok = load_llama_tokenizer()
    assert tok.chat_template == template_text("llama-3.2")
    messages, tools, _ = CASES["tools_call_result_answer"]
    out = tok.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True, date_string="28 Nov 2026")
    trained = tok.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m])
    assert trained == ('{"name": "get_current_weather", "parameters": {"location": "Zürich", "unit": "celsius"}}'
                       "<|eot_id|>It is 3°C and foggy in Zürich.<|eot_id|>")
    # and the rendered text is the same through transformers and through llamatune.chat
    assert tok.decode(out["input_ids"]) == render(messages, tools, date_string="28 Nov 2026")
    # a parallel turn is trained as a whole: the list and its end of turn
    parallel = [messages[1], PARALLEL]
    out = tok.apply_chat_template(parallel, tools=tools, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True, date_string="28 Nov 2026")
    trained = tok.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m])
    assert trained == render_calls(PARALLEL["tool_calls"], "llama-3.2") + "<|eot_id|>"
    assert tok.decode(out["input_ids"]) == render(parallel, tools, date_string="28 Nov 2026")


@pytest.mark.parametrize("name", ["llama-3.2", "gemma-3", "smollm2"])
def test_every_assistant_turn_ends_with_the_first_stop_string(name):
    """What serving and eval stop on is what the template writes after an assistant turn (one list, chat.py)."""
    from llamatune.chat import ALL_STOPS, TEMPLATES, stop_strings

    stops = stop_strings(name)
    assert stops[0] == TEMPLATES[name]["eos_token"] and set(stops) <= set(ALL_STOPS)
    for turn, reply in (({"role": "assistant", "content": "Sunny, 21°C."}, "Sunny, 21°C."),
                        (CALL, render_calls(CALL["tool_calls"], name)),
                        (PARALLEL, render_calls(PARALLEL["tool_calls"], name))):
        text = render([{"role": "user", "content": "Weather in Oslo?"}, turn], [WEATHER], template=name,
                      date_string="x")
        assert text[text.index(reply) + len(reply):].startswith(stops[0]), (name, text[-80:])


def test_a_model_directory_is_read_for_its_template_and_a_broken_file_is_named(tmp_path):
    from llamatune.chat import model_template

    (tmp_path / "config.json").write_text('{"model_type": "gemma3_text"}')
    assert model_template(tmp_path) == "gemma-3"  # no template text: the architecture decides
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template_text("llama-3.2")}))
    assert model_template(tmp_path) == "llama-3.2"  # the template text wins over the architecture
    (tmp_path / "tokenizer_config.json").write_text('{"chat_template": "{{ bos')  # torn by a killed download
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: not valid JSON"):
        model_template(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("[]")
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: expected a JSON object, got list"):
        model_template(tmp_path)
