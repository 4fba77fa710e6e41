"""``llamatune serve``: llama-cpp-python's OpenAI-compatible server with the project's chat handler, asked through the
real ``openai`` client (and smolagents) on 127.0.0.1.

One server (in this process, on the tiny GGUF) serves the module. The shape tests swap the handler's decoder for a
:class:`llamatune.llm.ScriptedModel` (the random tiny model writes garbage, so whether a call comes back is scripted);
the prompts it records are compared with the project's own rendering. The end-to-end tests decode with the real GGUF.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import REPO, requires

pytestmark = [requires("llama_cpp", "openai", "fastapi", "uvicorn")]

WEATHER = {"type": "function", "function": {
    "name": "get_current_weather", "description": "Current weather in a place.",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}
FORECAST = {"type": "function", "function": {
    "name": "get_weather_forecast", "description": "Forecast for the next days.",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["location"]}}}
OSLO = [{"role": "user", "content": "What's the weather in Oslo?"}]
CALL = '{"name": "get_current_weather", "parameters": {"location": "Oslo"}}'  # the llama-3.2 template's call


class ThreadServer:
    """An ASGI app on 127.0.0.1 under uvicorn in a thread."""

    def __init__(self, app):
        import uvicorn

        from llamatune.evals.llamacpp_server import free_port

        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)

    def close(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def served(tiny_gguf):
    from llamatune.chat import model_template
    from llamatune.endpoint import build_app
    from llamatune.runtime import LlamaCppModel

    path = tiny_gguf["f16"]
    model = LlamaCppModel(str(path), n_ctx=1024, n_threads=1, chat_template=model_template(path), name="tiny")
    app = build_app(model)
    srv = ThreadServer(app)
    srv.handler, srv.model = app.state.chat_handler, model
    yield srv
    srv.close()
    model.close()


@pytest.fixture
def client(served):
    from openai import OpenAI

    yield OpenAI(base_url=served.base_url, api_key="none", max_retries=0)
    served.handler.model = served.model  # every test starts on the real model


@pytest.fixture
def script(served):
    """``script(outputs)``: the server's decoder answers these outputs in turn; returns the scripted model."""
    from llamatune.llm import ScriptedModel

    def use(outputs, n_ctx=None):
        fake = ScriptedModel(outputs, template=served.model.template, n_ctx=n_ctx or served.model.n_ctx)
        served.handler.model = fake
        return fake

    return use


def rendered(messages, tools, template):
    from llamatune.chat import render

    return render(messages, tools, template=template, add_generation_prompt=True)


def test_a_call_comes_back_as_tool_calls_and_the_prompt_is_the_templates(client, script, served):
    fake = script([CALL])
    r = client.chat.completions.create(model="tiny", messages=OSLO, tools=[WEATHER])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_current_weather"
    assert isinstance(call.function.arguments, str) and json.loads(call.function.arguments) == {"location": "Oslo"}
    assert fake.prompts == [rendered(OSLO, [WEATHER], served.model.template)]
    assert r.usage.prompt_tokens == fake.count_tokens(fake.prompts[0]) and r.model == "tiny"


def test_text_comes_back_as_content(client, script):
    script(["  It is sunny in Oslo."])
    choice = client.chat.completions.create(model="tiny", messages=OSLO, tools=[WEATHER]).choices[0]
    assert (choice.message.content, choice.message.tool_calls, choice.finish_reason) == \
        ("It is sunny in Oslo.", None, "stop")


def test_several_calls_come_back_as_several_tool_calls(client, script):
    script([f'[{CALL}, {{"name": "get_weather_forecast", "parameters": {{"location": "Paris", "days": 2}}}}]'])
    calls = client.chat.completions.create(model="tiny", messages=OSLO, tools=[WEATHER, FORECAST]).choices[0]\
        .message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == \
        [("get_current_weather", {"location": "Oslo"}), ("get_weather_forecast", {"location": "Paris", "days": 2})]
    assert len({c.id for c in calls}) == 2


def test_output_that_fails_to_parse_as_a_call_is_text(client, script):
    script(['{"name": "get_current_weather", "parameters": '])  # cut off: an attempted call, malformed
    choice = client.chat.completions.create(model="tiny", messages=OSLO, tools=[WEATHER]).choices[0]
    assert choice.message.tool_calls is None and choice.message.content.startswith('{"name"')


def _stream(client, **kw):
    chunks = list(client.chat.completions.create(model="tiny", stream=True, **kw))
    deltas = [c.choices[0].delta for c in chunks]
    return deltas, chunks[-1].choices[0].finish_reason


def test_streaming_sends_text_as_decoded_and_a_call_as_tool_calls_deltas(client, script):
    script(["It is sunny and mild in Oslo today.", CALL])
    deltas, finish = _stream(client, messages=OSLO, tools=[WEATHER])
    texts = [d.content for d in deltas if d.content]
    assert deltas[0].role == "assistant" and finish == "stop"
    assert len(texts) > 3 and "".join(texts) == "It is sunny and mild in Oslo today."  # piece by piece
    deltas, finish = _stream(client, messages=OSLO, tools=[WEATHER])
    assert finish == "tool_calls" and not any(d.content for d in deltas)  # a call is held, never shown as text
    (tc,) = [t for d in deltas for t in d.tool_calls or []]
    assert (tc.index, tc.type, tc.function.name, json.loads(tc.function.arguments)) == \
        (0, "function", "get_current_weather", {"location": "Oslo"}) and tc.id.startswith("call_")


def test_a_two_step_conversation_sends_the_tool_result_back(client, script, served):
    from llamatune.protocol import tool_result_message

    fake = script([CALL, "It is 4.2 °C in Oslo."])
    messages = list(OSLO)
    first = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER]).choices[0]
    messages.append(first.message)  # the openai object, as the documented snippet does
    call = first.message.tool_calls[0]
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": "4.2 °C"})})
    second = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER]).choices[0]
    assert (second.message.content, second.finish_reason) == ("It is 4.2 °C in Oslo.", "stop")
    # the tool turn is the template's, in the agent's envelope, matched to its call by id
    expect = [*OSLO, {"role": "assistant", "tool_calls": [{"type": "function", "function": {
        "name": "get_current_weather", "arguments": {"location": "Oslo"}}}]},
        tool_result_message("get_current_weather", {"temperature": "4.2 °C"})]
    assert fake.prompts[1] == rendered(expect, [WEATHER], served.model.template)


def test_tool_choice_none_shows_no_tool_and_returns_text(client, script, served):
    fake = script([CALL])
    choice = client.chat.completions.create(model="tiny", messages=OSLO, tools=[WEATHER], tool_choice="none").choices[0]
    assert (choice.message.content, choice.message.tool_calls, choice.finish_reason) == (CALL, None, "stop")
    assert fake.prompts == [rendered(OSLO, None, served.model.template)]


def test_a_named_tool_choice_shows_only_that_tool(client, script, served):
    fake = script([CALL, "No idea."])
    named = {"type": "function", "function": {"name": "get_current_weather"}}
    choice = client.chat.completions.create(model="tiny", messages=OSLO, tools=[FORECAST, WEATHER],
                                            tool_choice=named).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls[0].function.name == "get_current_weather"
    assert fake.prompts == [rendered(OSLO, [WEATHER], served.model.template)]
    # a model that takes no grammar (this scripted one) and answers in text: returned as text, not an invented call
    choice = client.chat.completions.create(model="tiny", messages=OSLO, tools=[WEATHER], tool_choice=named).choices[0]
    assert (choice.message.content, choice.finish_reason) == ("No idea.", "stop")


def _call_1(**extra):
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_current_weather", "arguments": '{"location": "Oslo"}'}, **extra}]}


BAD = [  # (what the client sends beside model, the field the 400 names)
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0]"),
    ({"messages": [*OSLO, {"role": "tool", "tool_call_id": "call_9", "content": "12"}]}, "messages[1].tool_call_id"),
    ({"messages": [*OSLO, _call_1(), {"role": "tool", "content": "12"}]}, "messages[2].tool_call_id"),
    ({"messages": [*OSLO, _call_1(), {"role": "tool", "tool_call_id": "call_1", "content": "1"},
                   {"role": "tool", "tool_call_id": "call_1", "content": "2"}]}, "messages[3].tool_call_id"),
    ({"messages": [*OSLO, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
    ({"messages": OSLO, "tools": [{"type": "function", "function": {"description": "no name"}}]},
     "tools[0].function.name"),
    ({"messages": OSLO, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
     "tools[0].function.parameters.type"),
    ({"messages": OSLO, "tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": "string"}}}}]}, "tools[0].function.parameters.properties"),
    ({"messages": OSLO, "tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {}, "required": ["a"]}}}]}, "tools[0].function.parameters.required"),
    ({"messages": OSLO, "tools": [{"type": "retrieval"}]}, "tools[0]"),
    ({"messages": OSLO, "tools": [WEATHER, WEATHER]}, "tools"),
    ({"messages": OSLO, "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
    ({"messages": OSLO, "tool_choice": "sometimes"}, "tool_choice"),
    ({"messages": OSLO, "n": 2}, "n"),
    ({"messages": OSLO, "logprobs": True}, "logprobs"),
]


@pytest.mark.parametrize("stream", [False, True])
def test_bad_requests_get_a_400_naming_the_field_and_the_server_keeps_serving(client, script, stream):
    import openai

    for body, field in BAD:
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="tiny", stream=stream, **body)
        assert err.value.status_code == 400 and err.value.param == field, (body, err.value.body)
        assert err.value.type == "invalid_request_error" and field in err.value.message
    script(["Still here."])
    assert client.chat.completions.create(model="tiny", messages=OSLO).choices[0].message.content == "Still here."


def test_a_body_that_is_not_json_and_a_prompt_over_the_context_are_400s(client, served, script):
    import openai
    import requests

    r = requests.post(served.base_url + "/chat/completions", data=b"{not json", timeout=10)
    assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]
    long = [{"role": "user", "content": "word " * 2000}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=long)
    assert err.value.code == "context_length_exceeded" and "1024" in err.value.message
    with pytest.raises(openai.APIError, match="exceed context window of 1024"):
        list(client.chat.completions.create(model="tiny", messages=long, stream=True))
    script(["Still here."])
    assert client.chat.completions.create(model="tiny", messages=OSLO).choices[0].message.content == "Still here."


def test_the_real_tiny_gguf_end_to_end(client, served):
    """The real decoder: a well-formed answer, the same streamed as whole, usage counted by the model's tokenizer."""
    r = client.chat.completions.create(model="tiny", messages=OSLO, tools=[WEATHER], max_completion_tokens=12)
    choice = r.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert (choice.message.tool_calls is not None) == (choice.finish_reason == "tool_calls")
    assert r.usage.prompt_tokens == served.model.count_tokens(rendered(OSLO, [WEATHER], served.model.template))
    assert 1 <= r.usage.completion_tokens <= 12
    deltas, finish = _stream(client, messages=OSLO, tools=[WEATHER], max_tokens=12)
    assert finish == choice.finish_reason
    if choice.message.tool_calls is None:
        assert "".join(d.content or "" for d in deltas) == choice.message.content


def test_the_documented_snippet_runs_against_the_server_and_is_on_the_model_card(client, script, served, tmp_path):
    from llamatune.endpoint import client_example
    from llamatune.model_card import model_card

    def answer(prompt):  # the tool result the snippet sent back, read from the rendered prompt
        return "It is " + re.search(r'"temperature_c": (\d+)', prompt).group(1) + " °C in Oslo."

    script([CALL, answer])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(client_example("tiny", served.base_url), {})
    assert out.getvalue() == "It is 12 °C in Oslo.\n"
    card = model_card(tmp_path, kind="gguf", repos={"gguf": "me/tiny-GGUF"}, gguf_files=["tiny-q4_k_m.gguf"])
    assert client_example("tiny-q4_k_m") in card and "llamatune serve tiny-q4_k_m.gguf --port 8000" in card


def test_resolve_gguf_takes_a_file_or_a_directory_s_one_or_f16_gguf(tmp_path):
    from llamatune.endpoint import resolve_gguf

    with pytest.raises(FileNotFoundError, match="no .gguf file"):
        resolve_gguf(tmp_path)
    (tmp_path / "gguf").mkdir()
    q8 = tmp_path / "gguf" / "m-q8_0.gguf"
    q8.write_bytes(b"")
    assert resolve_gguf(tmp_path) == q8 and resolve_gguf(q8) == q8
    (tmp_path / "gguf" / "m-q4_k_m.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match="holds 2 GGUFs; name one"):
        resolve_gguf(tmp_path)
    (tmp_path / "gguf" / "m-f16.gguf").write_bytes(b"")
    assert resolve_gguf(tmp_path) == tmp_path / "gguf" / "m-f16.gguf"


def test_llamatune_serve_starts_despite_stray_server_variables(tiny_gguf, tmp_path):
    """The command itself, in a subprocess whose environment holds what ``llama_cpp.server`` would read as its
    settings (``CACHE`` a directory, ``N_CTX``, ``SEED`` junk): they change nothing."""
    import requests

    from llamatune.evals.llamacpp_server import free_port

    port = free_port()
    env = dict(os.environ, CACHE=str(tmp_path), N_CTX="junk", SEED="junk", CONFIG_FILE=str(tmp_path / "none.json"),
               PYTHONPATH=str(REPO))
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "llamatune", "serve", str(tiny_gguf["f16"]), "--port", str(port),
                             "--n-ctx", "512", "--threads", "1"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url, deadline = f"http://127.0.0.1:{port}/v1", time.monotonic() + 60
        while True:
            assert proc.poll() is None, open(tmp_path / "serve.log").read()
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + "/models", timeout=1).ok:
                    break
            assert time.monotonic() < deadline, "llamatune serve did not answer"
            time.sleep(0.2)
        assert [m["id"] for m in requests.get(url + "/models", timeout=5).json()["data"]] == ["tiny-f16"]
        r = requests.post(url + "/chat/completions", json={"messages": OSLO, "max_tokens": 4}, timeout=60).json()
        assert r["choices"][0]["finish_reason"] in ("stop", "length") and r["usage"]["completion_tokens"] <= 4
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_what_clients_send_in_the_wild_is_accepted_and_rendered_as_the_template_does(client, script, served):
    """Text parts, a developer turn, names, an assistant's empty content and refusal beside its calls, a tool result
    as text parts, a strict tool without parameters, and request fields this server does not use."""
    from llamatune.protocol import tool_result_message

    fake = script(["Done."])
    ping = {"type": "function", "function": {"name": "ping", "description": "Ping.", "strict": True}}
    messages = [{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                {"role": "user", "name": "ann", "content": [{"type": "text", "text": "Weather "},
                                                            {"type": "text", "text": "in Oslo?"}]},
                {**_call_1(), "content": "", "refusal": None},
                {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "sunny"}]}]
    r = client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER, ping],
                                       parallel_tool_calls=False, max_completion_tokens=5, user="u1")
    assert r.choices[0].message.content == "Done."
    expect = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Oslo?"},
              {"role": "assistant", "tool_calls": [{"type": "function", "function": {
                  "name": "get_current_weather", "arguments": {"location": "Oslo"}}}]},
              tool_result_message("get_current_weather", "sunny")]
    ping_rendered = {"type": "function", "function": {"name": "ping", "description": "Ping.",
                                                      "parameters": {"type": "object", "properties": {}}}}
    assert fake.prompts == [rendered(expect, [WEATHER, ping_rendered], served.model.template)]


def test_special_tokens_in_request_text_reach_the_model_as_text(client, script, served):
    fake = script(["ok"])
    client.chat.completions.create(model="tiny",
                                   messages=[{"role": "user", "content": "hi<|eot_id|><|start_header_id|>"}])
    ids = served.model.tokenize(fake.prompts[0])
    specials = {served.model.tokenize(t)[0] for t in ("<|eot_id|>", "<|start_header_id|>")}
    assert sum(i in specials for i in ids) == len(re.findall(r"<\|eot_id\|>|<\|start_header_id\|>", rendered(
        [{"role": "user", "content": "hi"}], None, served.model.template)))  # only the template's own


@requires("smolagents")
def test_smolagents_runs_a_weather_question_through_the_endpoint(client, script, served):
    """smolagents' OpenAI-compatible model class and its tool-calling agent, against this endpoint, with the offline
    Open-Meteo fake behind the tool: the scripted model calls the weather tool, then answers (smolagents'
    ``final_answer`` tool) with the temperature it reads in the rendered tool result."""
    from smolagents import OpenAIServerModel, ToolCallingAgent, tool

    from llamatune.tools.fakes import FakeServices
    from llamatune.tools.weather import get_current_weather as project_weather

    @tool
    def get_current_weather(location: str) -> dict:
        """Get the current weather for a city.

        Args:
            location: The city, e.g. "Oslo".
        """
        return project_weather(location=location)

    def final(prompt):
        temperature = re.findall(r"'temperature': '([^']+)'", prompt)[-1]  # smolagents' observation text
        return json.dumps({"name": "final_answer", "parameters": {"answer": f"{temperature} in Oslo"}})

    fake = script([CALL, final], n_ctx=32768)  # smolagents' system prompt is long; the scripted model counts words
    model = OpenAIServerModel(model_id="tiny", api_base=served.base_url, api_key="none",
                              client_kwargs={"max_retries": 0})
    agent = ToolCallingAgent(tools=[get_current_weather], model=model, max_steps=3, verbosity_level=0)
    with FakeServices() as services:
        answer = agent.run("What's the weather in Oslo?")
    assert answer == "4.2°C in Oslo" and services.count("forecast") == 1 and fake.calls == 2
    assert '"name": "get_current_weather"' in fake.prompts[0]  # the tool schemas smolagents sent, in the template


def test_a_conversation_the_template_refuses_is_a_400_naming_messages(client, script, served):
    """Two calls in one assistant turn: whatever the template says (Llama 3.2's writes one call per turn), the
    endpoint says it too, as a 400, not a 500."""
    import openai

    from llamatune.chat import render

    two = {"role": "assistant", "tool_calls": [
        {"id": f"c{i}", "type": "function", "function": {"name": "get_current_weather", "arguments": "{}"}}
        for i in (1, 2)]}
    messages = [*OSLO, two, *({"role": "tool", "tool_call_id": f"c{i}", "content": "x"} for i in (1, 2))]
    script(["ok"])
    try:
        render([*OSLO, {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {}}}] * 2}],
               [WEATHER], template=served.model.template)
    except Exception as exc:
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER])
        assert err.value.param == "messages" and str(exc) in err.value.message
    else:
        assert client.chat.completions.create(model="tiny", messages=messages, tools=[WEATHER]).choices[0]\
            .message.content == "ok"


UNIT = {"type": "function", "function": {  # no free string: the random tiny model, held to the grammar, ends its call
    "name": "set_unit", "description": "Set the temperature unit.",
    "parameters": {"type": "object", "properties": {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["unit"]}}}
DARK = {"type": "function", "function": {
    "name": "set_dark_mode", "description": "Dark mode on or off.",
    "parameters": {"type": "object", "properties": {"on": {"type": "boolean"}}, "required": ["on"]}}}


@pytest.mark.parametrize("tools, choice", [([DARK], "required"),
                                           ([UNIT, DARK], {"type": "function", "function": {"name": "set_dark_mode"}})])
def test_required_and_named_tool_choice_make_the_real_model_call(client, served, tools, choice):
    """On the real tiny GGUF (random weights, which never write a call by themselves): ``required`` and a named
    function put the call grammar on from the first token, so the reply is a valid call (to the named one). (With
    several tools offered, ``required`` lets it start a list of parallel calls, which the random model never ends.)"""
    free = client.chat.completions.create(model="tiny", messages=OSLO, tools=tools, max_completion_tokens=40)
    assert free.choices[0].message.tool_calls is None  # auto: the lazy grammar leaves the model's text alone
    r = client.chat.completions.create(model="tiny", messages=OSLO, tools=tools, tool_choice=choice,
                                       max_completion_tokens=120).choices[0]
    assert r.finish_reason == "tool_calls", r.message.content
    call = r.message.tool_calls[0].function
    assert call.name == "set_dark_mode" and isinstance(json.loads(call.arguments)["on"], bool)
    assert served.model.stats["constrained"] > 0
