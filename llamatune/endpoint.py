"""``llamatune serve``: a GGUF behind an OpenAI-compatible Chat Completions endpoint that returns ``tool_calls``.

    llamatune serve runs/demo/gguf/smollm2-135m-funccall-f16.gguf --port 8000
    # any OpenAI client: base_url="http://127.0.0.1:8000/v1", api_key="none" (or --api-key KEY)

The HTTP layer is llama-cpp-python's own server (``llama_cpp.server.app.create_app``: its routes, SSE streaming,
OpenAI error bodies, one generation at a time). This module adds:

* :class:`ChatHandler`, set as the model's ``Llama.chat_handler`` (chat format ``llamatune-<template>``): the request's
  messages and tools rendered by the project's template (:func:`llamatune.chat.render`, the template detected from
  the GGUF by :func:`llamatune.chat.model_template`), decoded by the project's runtime
  (:class:`llamatune.runtime.LlamaCppModel`, greedy, KV prefix reuse), the output read by the one parser
  (:func:`llamatune.toolcall.parse_output`): calls come back as ``tool_calls`` (ids, arguments as a JSON string,
  ``finish_reason: "tool_calls"``), text as ``content``. Streamed, prose goes out as it is decoded and output that
  starts like a call (:func:`llamatune.toolcall.looks_like_call`, the agent's rule) is held and sent as ``tool_calls``
  deltas. Request sampling parameters (temperature, top_p, seed…) are not used: decoding is the runtime's.
* a check in front of the route (:class:`CheckRequests`): a bad request (unknown role, malformed tool schema, a tool
  message answering no call…) gets an OpenAI-style 400 naming the field (:mod:`llamatune.endpoint_request`)
  before llama-cpp-python's own request model sees it; the server keeps serving.

``tool_choice`` (:meth:`ChatHandler.decode`, with the call grammar of :func:`llamatune.grammar.grammar_for`):
``auto``, calls decoded under the tools' lazy grammar (free until the template's call opener: whether to call stays
the model's; ``--no-constrain``: free); ``none``, no tool shown, no grammar, the output is text; ``required``, the
grammar of every offered tool active from the first token (the reply is a call); a named function, only that tool
shown and its grammar active from the first token (the reply is a call to it).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from llamatune.chat import render, stop_strings
from llamatune.endpoint_request import RequestError, check_request, template_messages, tool_plan
from llamatune.toolcall import looks_like_call, parse_output


def _template_error(exc: Exception) -> RequestError:
    return RequestError("messages", f"the chat template cannot render this conversation: {exc}")


class ChatHandler:
    """A llama-cpp-python chat handler (``LlamaChatCompletionHandler``) over a project model: anything with
    ``complete(prompt, max_tokens=, stop=, stream=)``, ``count_tokens``, ``n_ctx`` and ``template``
    (:class:`llamatune.runtime.LlamaCppModel`; tests swap in a :class:`llamatune.llm.ScriptedModel`)."""

    def __init__(self, model, name: str | None = None, constrain: bool = True):
        self.model = model
        self.name = name or getattr(model, "name", "model")
        self.constrain = constrain  # tool_choice auto: the lazy call grammar (required/named always use theirs)

    def prompt(self, messages: list[dict], tools: list[dict] | None) -> str:
        try:
            return render(template_messages(messages), tools, template=self.model.template, add_generation_prompt=True)
        except RequestError:
            raise
        except Exception as exc:  # the template's raise_exception, or a shape it cannot render
            raise _template_error(exc) from None

    def __call__(self, *, messages, tools=None, tool_choice=None, stream: bool = False, stop=None,
                 max_tokens: int | None = None, **_ignored):
        req = check_request({"messages": messages, "tools": tools, "tool_choice": tool_choice})
        plan = tool_plan(req["tools"], req["tool_choice"])
        prompt = self.prompt(req["messages"], plan.tools)
        stops = stop_strings(self.model.template) + ([stop] if isinstance(stop, str) else list(stop or []))
        if stream:
            return self._stream(prompt, plan, stops, max_tokens)
        pieces = self.decode(prompt, plan, stops, max_tokens)
        text = "".join(pieces).strip()
        calls = self._calls(text, plan)
        message = {"role": "assistant", "content": None if calls else text}
        if calls:
            message["tool_calls"] = [{"id": i, "type": "function", "function": f} for i, f in calls]
        n_prompt, n_out = self._usage(prompt, text)
        return {"id": _id("chatcmpl-"), "object": "chat.completion", "created": int(time.time()), "model": self.name,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self._finish(calls)}],
                "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}}

    def grammar(self, plan) -> dict:
        """The ``complete`` arguments that constrain this request's calls: ``plan.required`` (``required`` or a named
        function: ``plan.tools`` is then that one tool) makes the grammar active from the first token; ``auto`` makes
        it lazy (unless ``constrain`` is off); ``none``, or a model without grammars, gives none."""
        if not plan.read_calls or not plan.tools or not getattr(self.model, "supports_grammar", False):
            return {}
        if not plan.required and not self.constrain:
            return {}
        from llamatune.grammar import grammar_for

        return {"grammar": grammar_for(plan.tools, self.model.template), "lazy": not plan.required}

    def decode(self, prompt: str, plan, stops: list[str], max_tokens: int | None) -> Iterator[str]:
        """The model's output pieces, streamed by the project's runtime, calls under :meth:`grammar`."""
        n = self.model.count_tokens(prompt)
        if n >= self.model.n_ctx:  # the server's own wording: its error handler turns it into a 400
            raise ValueError(f"Requested tokens ({n}) exceed context window of {self.model.n_ctx}")
        budget = max(1, min(max_tokens or self.model.n_ctx, self.model.n_ctx - n))
        pieces = self.model.complete(prompt, max_tokens=budget, stop=stops, stream=True, **self.grammar(plan))
        return iter([pieces]) if isinstance(pieces, str) else pieces

    def _calls(self, text: str, plan) -> list[tuple[str, dict]]:
        """``(id, {"name", "arguments": JSON string})`` for each call the parser reads in ``text``; ``[]`` for text,
        for output that fails to parse as calls, and when ``tool_choice`` is ``none``."""
        if not plan.read_calls:
            return []
        parsed = parse_output(text)
        if parsed.error or not parsed.calls:
            return []
        return [(_id("call_"), {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)})
                for c in parsed.calls]

    def _finish(self, calls) -> str:
        if calls:
            return "tool_calls"
        return "length" if (getattr(self.model, "stats", None) or {}).get("finish") == "length" else "stop"

    def _usage(self, prompt: str, text: str) -> tuple[int, int]:
        stats = getattr(self.model, "stats", None) or {}
        if "prompt_tokens" in stats and "generated" in stats:
            return stats["prompt_tokens"], stats["generated"]
        return self.model.count_tokens(prompt), self.model.count_tokens(text)

    def _stream(self, prompt: str, plan, stops: list[str], max_tokens: int | None) -> Iterator[dict]:
        cid, created = _id("chatcmpl-"), int(time.time())

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

        try:
            pieces = self.decode(prompt, plan, stops, max_tokens)
        except ValueError as exc:  # the stream has begun: an error event (the openai client raises it as APIError)
            yield {"error": {"message": str(exc), "type": "invalid_request_error", "param": "messages",
                             "code": "context_length_exceeded"}}
            return
        yield chunk({"role": "assistant", "content": ""})
        held, decided, started = [], (None if plan.read_calls else False), False
        for p in pieces:
            if decided is None:  # the agent's rule: hold what may be a call, stream what is prose
                held.append(p)
                decided = looks_like_call("".join(held), self.model.template)
                if decided is not False:
                    continue
                p, held = "".join(held), []
            if decided is True:
                held.append(p)
                continue
            if not started:
                p = p.lstrip()
            if p:
                started = True
                yield chunk({"content": p})
        text = "".join(held).strip()
        calls = self._calls(text, plan) if held else []
        for k, (call_id, fn) in enumerate(calls):
            yield chunk({"tool_calls": [{"index": k, "id": call_id, "type": "function", "function": fn}]})
        if text and not calls:
            yield chunk({"content": text})
        yield chunk({}, self._finish(calls))


def _id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


class CheckRequests:
    """ASGI middleware in front of the server's chat route: checks and normalises the JSON body
    (:func:`llamatune.endpoint_request.check_request`, then a render of the prompt) and answers a bad request with
    an OpenAI-style 400 that names the field, so neither llama-cpp-python's request model (whose refusals are 500s)
    nor a started stream sees it."""

    def __init__(self, app, handler: ChatHandler):
        self.app, self.handler = app, handler

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith("/chat/completions"):
            return await self.app(scope, receive, send)
        raw, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            raw += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise RequestError(None, f"the request body is not JSON: {exc}") from None
            body = check_request(body)
            self.handler.prompt(body["messages"], tool_plan(body["tools"], body["tool_choice"]).tools)
        except RequestError as exc:
            from starlette.responses import JSONResponse

            return await JSONResponse({"error": exc.body()}, status_code=400)(scope, receive, send)
        raw = json.dumps({k: v for k, v in body.items() if v is not None}).encode()
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        scope = dict(scope, headers=headers + [(b"content-length", str(len(raw)).encode())])
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": raw, "more_body": False}

        await self.app(scope, replay, send)


class _OneModel:
    """What ``llama_cpp.server.app`` asks of its model registry (``LlamaProxy``): the model for a request's
    ``model`` field (there is one) and the names to list under ``/v1/models``."""

    def __init__(self, name: str, llama):
        self.name, self.llama = name, llama

    def __call__(self, model: str | None = None):
        return self.llama

    def __iter__(self):
        yield self.name


@contextmanager
def _project_opens_the_model():
    """``create_app`` without its two side doors: ``LlamaProxy`` opening the GGUF itself (the project's runtime
    opens it, :func:`llamatune.runtime.open_llama`) and ``$CONFIG_FILE`` replacing the settings given."""
    from llama_cpp.server import app as server

    original, config = server.set_llama_proxy, os.environ.pop("CONFIG_FILE", None)
    server.set_llama_proxy = lambda model_settings: None
    try:
        yield server
    finally:
        server.set_llama_proxy = original
        if config is not None:
            os.environ["CONFIG_FILE"] = config


def build_app(model, *, name: str | None = None, api_key: str | None = None, constrain: bool = True):
    """llama-cpp-python's FastAPI app serving ``model`` (a :class:`llamatune.runtime.LlamaCppModel`) with a
    :class:`ChatHandler` as its chat handler. Like llama-cpp-python's server, one app per process. The settings are
    built from the arguments only: ``llama_cpp.server`` would read stray ``N_CTX``/``CACHE``/``SEED``… variables
    (see :func:`llamatune.evals.llamacpp_server.server_env`)."""
    from llama_cpp.server.settings import ModelSettings, ServerSettings
    from starlette.middleware import Middleware

    name = name or model.name
    handler = ChatHandler(model, name, constrain=constrain)
    llama = model.llama
    llama.chat_handler, llama.chat_format = handler, f"llamatune-{model.template}"
    settings = ServerSettings.model_construct(api_key=api_key)  # model_construct: defaults, no environment read
    with _project_opens_the_model() as server:
        app = server.create_app(server_settings=settings,
                                model_settings=[ModelSettings.model_construct(model=model.path, model_alias=name)])
        server._llama_proxy = _OneModel(name, llama)
    app.user_middleware.append(Middleware(CheckRequests, handler=handler))  # innermost: after CORS
    app.state.chat_handler = handler
    return app


def resolve_gguf(path: str | Path) -> Path:
    """``MODEL.gguf`` itself; for a directory (``runs/<run>``, ``runs/<run>/gguf``), its one GGUF, or its one f16
    GGUF when it holds several (the export's fidelity reference)."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"no GGUF file or directory at {p}")
    found = sorted(p.rglob("*.gguf"))
    f16 = [f for f in found if f.name.endswith("-f16.gguf")]
    if len(found) == 1 or len(f16) == 1:
        return found[0] if len(found) == 1 else f16[0]
    if not found:
        raise FileNotFoundError(f"no .gguf file under {p}")
    raise ValueError(f"{p} holds {len(found)} GGUFs; name one: " + ", ".join(str(f) for f in found))


def add_arguments(parser) -> None:
    parser.add_argument("model", help="a GGUF file, or a directory holding one (an f16 one is chosen among several)")
    parser.add_argument("--host", default="127.0.0.1", help="default: this machine only")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--template", default="auto", help="chat template name, or 'auto' (from the GGUF)")
    parser.add_argument("--name", default=None, help="the model id clients see (default: the file name)")
    parser.add_argument("--api-key", default=None, help="require this bearer key (default: none)")
    parser.add_argument("--no-constrain", dest="constrain", action="store_false",
                        help="tool_choice auto: decode calls freely (default: under the tools' lazy grammar)")


def main(args) -> int:
    try:
        import uvicorn
        from llama_cpp.server import app  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"llamatune serve needs llama-cpp-python's server extra ({exc}): "
                           "pip install \"llama-cpp-python[server]==0.3.36\" (in llamatune[eval])") from None
    from llamatune.chat import model_template
    from llamatune.runtime import LlamaCppModel

    path = resolve_gguf(args.model)
    template = model_template(path) if args.template == "auto" else args.template
    model = LlamaCppModel(str(path), n_ctx=args.n_ctx, n_threads=args.threads, chat_template=template,
                          name=args.name or path.stem)
    try:
        app = build_app(model, api_key=args.api_key, constrain=args.constrain)
        print(f"serving {path} ({template} template, {model.n_threads} threads) as {model.name!r} on "
              f"http://{args.host}:{args.port}/v1", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        model.close()
    return 0


def client_example(model: str = "MODEL", base_url: str = "http://127.0.0.1:8000/v1") -> str:
    """The copy-pasteable ``openai`` snippet of the README and the model cards: one weather tool, the call, the tool
    result sent back by the call's id, the answer. (A test runs it against a live server.)"""
    return f'''import json
from openai import OpenAI

client = OpenAI(base_url="{base_url}", api_key="none")
tools = [{{"type": "function", "function": {{
    "name": "get_current_weather", "description": "Current weather in a place.",
    "parameters": {{"type": "object", "properties": {{"location": {{"type": "string"}}}},
                   "required": ["location"]}}}}}}]
messages = [{{"role": "user", "content": "What's the weather in Oslo?"}}]
reply = client.chat.completions.create(model="{model}", messages=messages, tools=tools).choices[0]
if reply.finish_reason == "tool_calls":
    messages.append(reply.message)  # the assistant's calls, ids included
    for call in reply.message.tool_calls:
        args = json.loads(call.function.arguments)  # {{"location": "Oslo"}}
        result = {{"location": args["location"], "temperature_c": 12}}  # run your real function here
        messages.append({{"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)}})
    reply = client.chat.completions.create(model="{model}", messages=messages, tools=tools).choices[0]
print(reply.message.content)
'''
