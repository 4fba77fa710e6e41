"""A Chat Completions request, checked and turned into the project's chat-template messages (``llamatune serve``).

:func:`check_request` reads the JSON body a client sent to ``/v1/chat/completions`` and either raises
:class:`RequestError` (an OpenAI-style 400 that names the field: ``messages[2].role``, ``tools[0].function.parameters``,
``messages[4].tool_call_id``…) or returns the body in the one form llama-cpp-python's server model accepts (content
parts joined into text, ``developer`` turns as ``system``, an assistant's ``content: null`` beside its calls dropped,
a tool without ``parameters`` given an empty object). :func:`template_messages` then maps those OpenAI messages to
what the project's templates render: calls with their arguments as objects, each ``tool`` message matched by its
``tool_call_id`` to the call it answers and wrapped in the agent's tool-result envelope
(:func:`llamatune.protocol.tool_result_message`, as in training), special-token strings neutralised.
:func:`tool_plan` reads ``tool_choice``. Nothing here knows a call syntax: the template renders calls.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from llamatune.protocol import neutralize, tool_result_message

ROLES = ("system", "developer", "user", "assistant", "tool")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # OpenAI's rule for function names (plus dots, as BFCL uses)
# request fields llama-cpp-python accepts whose meaning this endpoint cannot honour: refused, not silently ignored
UNSUPPORTED = {"functions": "use tools", "function_call": "use tool_choice",
               "logprobs": "log probabilities are not returned", "grammar": "not supported with tool calling"}


class RequestError(ValueError):
    """A request the endpoint refuses: ``param`` is the field (``messages[1].role``), the message says why."""

    def __init__(self, param: str | None, message: str):
        super().__init__(f"{param}: {message}" if param else message)
        self.param, self.message = param, message

    def body(self) -> dict:
        """The OpenAI error object for this refusal."""
        return {"message": str(self), "type": "invalid_request_error", "param": self.param, "code": None}


def _text(content, where: str, *, optional: bool = False) -> str | None:
    """Message content as text: a string, or a list of text parts (OpenAI's array form)."""
    if content is None and optional:
        return None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError(f"{where}[{j}]", "only text parts are supported "
                                                    "({\"type\": \"text\", \"text\": …})")
            parts.append(part["text"])
        return "".join(parts)
    raise RequestError(where, f"must be a string or a list of text parts, got {type(content).__name__}")


def _arguments(args, where: str) -> str:
    """A call's arguments as the JSON-object string OpenAI sends (an object is accepted too)."""
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            raise RequestError(where, f"not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(args, dict):
        raise RequestError(where, f"must be a JSON object, got {type(args).__name__}")
    return json.dumps(args, ensure_ascii=False)


def _tool_calls(calls, where: str) -> list[dict]:
    if not isinstance(calls, list) or not calls:
        raise RequestError(where, "must be a non-empty list of calls")
    out = []
    for j, c in enumerate(calls):
        w = f"{where}[{j}]"
        if not isinstance(c, dict) or not isinstance(c.get("function"), dict):
            raise RequestError(w, "expected {\"id\", \"type\": \"function\", \"function\": {\"name\", \"arguments\"}}")
        if c.get("type", "function") != "function":
            raise RequestError(f"{w}.type", f"must be \"function\", got {c.get('type')!r}")
        if not isinstance(c.get("id"), str) or not c["id"]:
            raise RequestError(f"{w}.id", "a call needs a string id (its tool message answers it by that id)")
        name = c["function"].get("name")
        if not isinstance(name, str) or not name:
            raise RequestError(f"{w}.function.name", "missing")
        out.append({"id": c["id"], "type": "function",
                    "function": {"name": name, "arguments": _arguments(c["function"].get("arguments", "{}"),
                                                                       f"{w}.function.arguments")}})
    return out


def _message(m, i: int) -> dict:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise RequestError(where, f"must be an object, got {type(m).__name__}")
    role = m.get("role")
    if role not in ROLES:
        raise RequestError(f"{where}.role", f"must be one of {', '.join(ROLES)}, got {role!r}")
    if role == "assistant":
        out = {"role": "assistant"}
        if m.get("tool_calls"):
            out["tool_calls"] = _tool_calls(m["tool_calls"], f"{where}.tool_calls")
            text = _text(m.get("content"), f"{where}.content", optional=True)
            if text:
                out["content"] = text
        else:
            if m.get("content") is None:
                raise RequestError(f"{where}.content", "an assistant message needs content or tool_calls")
            out["content"] = _text(m["content"], f"{where}.content")
        return out
    if m.get("content") is None:
        raise RequestError(f"{where}.content", "missing")
    out = {"role": "system" if role == "developer" else role, "content": _text(m["content"], f"{where}.content")}
    if role == "tool":
        if not isinstance(m.get("tool_call_id"), str) or not m["tool_call_id"]:
            raise RequestError(f"{where}.tool_call_id", "a tool message needs the id of the call it answers")
        out["tool_call_id"] = m["tool_call_id"]
    return out


def _tool(t, i: int) -> dict:
    where = f"tools[{i}]"
    if not isinstance(t, dict) or not isinstance(t.get("function"), dict):
        raise RequestError(where, "expected {\"type\": \"function\", \"function\": {\"name\", \"description\", "
                                  "\"parameters\"}}")
    if t.get("type", "function") != "function":
        raise RequestError(f"{where}.type", f"must be \"function\", got {t.get('type')!r}")
    fn = t["function"]
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise RequestError(f"{where}.function.name", f"must be 1-64 letters, digits, '_', '-' or '.', got {name!r}")
    if "description" in fn and not isinstance(fn["description"], str):
        raise RequestError(f"{where}.function.description", "must be a string")
    params = fn.get("parameters", {"type": "object", "properties": {}})
    w = f"{where}.function.parameters"
    if not isinstance(params, dict):
        raise RequestError(w, f"must be a JSON schema object, got {type(params).__name__}")
    if params.get("type", "object") != "object":
        raise RequestError(f"{w}.type", f"must be \"object\", got {params.get('type')!r}")
    props = params.get("properties", {})
    if not isinstance(props, dict) or not all(isinstance(v, dict) for v in props.values()):
        raise RequestError(f"{w}.properties", "must map each argument name to its JSON schema (an object)")
    required = params.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise RequestError(f"{w}.required", "must be a list of argument names")
    unknown = [r for r in required if r not in props]
    if unknown:
        raise RequestError(f"{w}.required", f"names arguments that are not in properties: {unknown}")
    out = {"name": name, **({"description": fn["description"]} if "description" in fn else {}), "parameters": params}
    return {"type": "function", "function": out}  # the project's key order (llamatune.tools.schema): the prompt's


def _tool_choice(choice, names: list[str]):
    if choice is None or choice in ("auto", "none", "required"):
        if choice == "required" and not names:
            raise RequestError("tool_choice", "\"required\" needs tools")
        return choice
    if isinstance(choice, dict) and choice.get("type", "function") == "function" and \
            isinstance(choice.get("function"), dict) and isinstance(choice["function"].get("name"), str):
        name = choice["function"]["name"]
        if name not in names:
            raise RequestError("tool_choice.function.name",
                               f"{name!r} is not one of the tools ({', '.join(names) or 'none'})")
        return {"type": "function", "function": {"name": name}}
    raise RequestError("tool_choice", "must be \"auto\", \"none\", \"required\" or "
                                      "{\"type\": \"function\", \"function\": {\"name\": …}}")


def check_request(body) -> dict:
    """``body`` with its messages, tools and tool_choice checked and normalised (see the module's docstring);
    raises :class:`RequestError` naming the first bad field. Also checks that every ``tool`` message answers a call."""
    if not isinstance(body, dict):
        raise RequestError(None, "the request body must be a JSON object")
    for key, why in UNSUPPORTED.items():
        if body.get(key):
            raise RequestError(key, f"not supported by this endpoint: {why}")
    if (body.get("n") or 1) != 1:
        raise RequestError("n", "only one choice per request (n=1)")
    fmt = body.get("response_format")
    if fmt and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise RequestError("response_format", "only {\"type\": \"text\"} is supported")
    limit = body.get("max_completion_tokens")  # OpenAI's newer name for max_tokens
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise RequestError("max_completion_tokens", f"must be a positive integer, got {limit!r}")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RequestError("messages", "must be a non-empty list of messages")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise RequestError("tools", f"must be a list, got {type(tools).__name__}")
    tools = [_tool(t, i) for i, t in enumerate(tools or [])]
    names = [t["function"]["name"] for t in tools]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise RequestError("tools", f"two tools share a name: {dup}")
    if body.get("max_tokens") is None and limit is not None:
        body = dict(body, max_tokens=limit)
    out = dict(body, messages=[_message(m, i) for i, m in enumerate(msgs)], tools=tools or None,
               tool_choice=_tool_choice(body.get("tool_choice"), names))
    template_messages(out["messages"])  # a tool message that answers no call is refused here
    return out


def template_messages(messages: list[dict]) -> list[dict]:
    """Checked OpenAI messages → the project templates' messages (see the module's docstring)."""
    out, open_calls = [], {}
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                name, args = c["function"]["name"], json.loads(c["function"]["arguments"])
                open_calls[c["id"]] = name
                calls.append({"type": "function", "function": {"name": name, "arguments": neutralize(args)}})
            out.append({"role": "assistant", "tool_calls": calls})
        elif m["role"] == "tool":
            name = open_calls.pop(m["tool_call_id"], None)
            if name is None:
                raise RequestError(f"messages[{i}].tool_call_id", f"{m['tool_call_id']!r} answers no earlier "
                                   "assistant tool call (or one already answered)")
            try:
                result = json.loads(m["content"])
            except json.JSONDecodeError:
                result = m["content"]
            out.append(tool_result_message(name, neutralize(result)))
        else:
            out.append({"role": m["role"], "content": neutralize(m["content"])})
    return out


@dataclass(frozen=True)
class ToolPlan:
    """What ``tool_choice`` asks: the tools the prompt shows (``None``: none), whether calls are read from the
    output, whether the reply must be a call (``required``: the endpoint's call grammar is active from the first
    token) and the one function it must name."""

    tools: list[dict] | None
    read_calls: bool
    required: bool = False
    name: str | None = None


def tool_plan(tools: list[dict] | None, choice) -> ToolPlan:
    """``auto`` (or unset): every tool shown, calls read; ``none``: no tool shown, output is text; ``required``:
    every tool shown, a call asked for; a named function: only that tool shown, a call to it asked for."""
    if not tools or choice == "none":
        return ToolPlan(None, False)
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        return ToolPlan([t for t in tools if t["function"]["name"] == name], True, True, name)
    return ToolPlan(tools, True, choice == "required")
