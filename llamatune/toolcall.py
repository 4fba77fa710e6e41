"""Tool calls in model output: parse them, and check them against the tools' JSON schemas.

One parser serves data generation, evaluation and the agent, whatever the model. It accepts every form a
project template writes (:mod:`llamatune.chatformat`) and the forms other models write:

* the JSON object of Meta's format, ``{"name": "f", "parameters": {...}}`` (``arguments`` also accepted),
  optionally after ``<|python_tag|>``, with whitespace or a ```json fence around it;
* a JSON list of such objects (several calls in one turn);
* a template's call tags around an object or a list: SmolLM2's ``<tool_call>[{"name": …, "arguments": …}, …]
  </tool_call>``, also several tagged blocks in a row (Hermes/Qwen style); ``<tool_call>[]</tool_call>`` is the
  SmolLM2 card's way of saying "no call": not a call, not an attempt;
* the pythonic form ``[f(a="x", b=2)]`` (also without brackets).

A call must open the output. Anything else (prose, prose that merely contains JSON) is not a call.
:func:`looks_like_call` decides from a prefix of the output whether it may become a call (what a streaming
front end buffers). Nothing here raises on model output:
``parse_output`` tells a caller whether the text *tried* to be a call and failed (format-invalid), and
``validate_call`` returns a structured reason instead of raising.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from typing import Any

from llamatune.chatformat import FORMATS, call_tags, chat_format, render_calls

PYTHON_TAG = "<|python_tag|>"
_IDENT = re.compile(r"[A-Za-z_][\w.]*")
_FENCE = re.compile(r"^```(?:json|python)?\s*(.*?)\s*```$", re.S)
_PY_CALL = re.compile(r"^\[?\s*[A-Za-z_][\w.]*\s*\(.*\)\s*\]?$", re.S)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict = field(default_factory=dict)

    def to_text(self, template: str | None = None) -> str:
        """This call as ``template`` writes it (:func:`llamatune.chatformat.render_calls`)."""
        return render_calls([self], template)

    def to_json(self) -> str:
        """Meta's Llama 3.2 call format, as the template renders it."""
        return self.to_text("llama-3.2")

    def to_message(self) -> dict:
        return {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": self.name, "arguments": self.arguments}}]}


@dataclass(frozen=True)
class ParsedOutput:
    """What a model's raw text turned out to be."""

    calls: list[ToolCall]
    attempted: bool  # the text looks like a call (JSON / pythonic / python_tag), valid or not
    error: str | None = None  # why an attempted call could not be parsed

    @property
    def format_valid(self) -> bool:
        return not self.attempted or self.error is None


_ENDS = tuple(dict.fromkeys(s for f in FORMATS.values() for s in f.stops))  # any template's turn end


def _strip(text: str) -> str:
    text = text.strip()
    if text.startswith(PYTHON_TAG):
        text = text[len(PYTHON_TAG) :].strip()
    for end in _ENDS:
        if text.endswith(end):
            text = text[: -len(end)].strip()
    m = _FENCE.match(text)
    return m.group(1).strip() if m else text


def _from_obj(obj: Any) -> ToolCall:
    if not isinstance(obj, dict):
        raise ValueError(f"a call must be a JSON object, got {type(obj).__name__}")
    if "function" in obj and isinstance(obj["function"], dict):  # OpenAI-style {"type":..., "function": {...}}
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("a call needs a string 'name'")
    args = obj.get("parameters", obj.get("arguments", {}))
    if isinstance(args, str):  # OpenAI sends arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"arguments of {name} are not valid JSON: {exc}") from None
    if not isinstance(args, dict):
        raise ValueError(f"arguments of {name} must be an object, got {type(args).__name__}")
    return ToolCall(name, args)


def _parse_pythonic(text: str) -> list[ToolCall]:
    body = text if text.startswith("[") else f"[{text}]"
    tree = ast.parse(body, mode="eval").body
    if not isinstance(tree, ast.List):
        raise ValueError("pythonic calls must be a list")
    calls = []
    for node in tree.elts:
        if not isinstance(node, ast.Call) or node.args:
            raise ValueError("pythonic calls take keyword arguments only")
        name = ast.unparse(node.func)
        calls.append(ToolCall(name, {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords}))
    return calls


def parse_output(text: str) -> ParsedOutput:
    """Classify ``text``: the calls it makes, whether it attempted a call, and why parsing failed. Never raises:
    model output is untrusted (a thousand ``[``, a JSON number of 5,000 digits, a deeply nested pythonic call are
    attempted calls that failed, not crashes of the agent or the scorer)."""
    try:
        return _parse_output(text)
    except (RecursionError, MemoryError, ValueError, SyntaxError) as exc:
        reason = str(exc).split("\n", 1)[0][:120] or type(exc).__name__
        return ParsedOutput([], True, f"unparseable call ({type(exc).__name__}: {reason})")


def _json_calls(body: str, allow_empty: bool = False) -> ParsedOutput:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as exc:
        return ParsedOutput([], True, f"malformed JSON: {exc.msg} at char {exc.pos}")
    try:
        items = obj if isinstance(obj, list) else [obj]
        if not items:
            return ParsedOutput([], not allow_empty, None if allow_empty else "empty list of calls")
        return ParsedOutput([_from_obj(o) for o in items], True)
    except ValueError as exc:
        return ParsedOutput([], True, str(exc))


def _parse_tagged(text: str, open_: str, close: str) -> ParsedOutput:
    """``open_ JSON close`` blocks, one or more in a row (the last one's closer may be missing: a stop cut it)."""
    calls, rest = [], _strip(text)
    while rest.startswith(open_):
        rest = rest[len(open_):]
        end = rest.find(close)
        body, rest = (rest, "") if end < 0 else (rest[:end], rest[end + len(close):].lstrip())
        body = body.strip()
        m = _FENCE.match(body)
        got = _json_calls(m.group(1).strip() if m else body, allow_empty=True)
        if got.error:
            return ParsedOutput([], True, f"{open_}: {got.error}")
        calls += got.calls
    if rest:
        return ParsedOutput([], True, f"text after {close}: {rest[:40]!r}")
    return ParsedOutput(calls, bool(calls))


def _parse_output(text: str) -> ParsedOutput:
    if not isinstance(text, str):
        return ParsedOutput([], False)
    for open_, close in call_tags():
        if text.lstrip().startswith(open_):
            return _parse_tagged(text, open_, close)
    tagged = text.strip().startswith(PYTHON_TAG)
    body = _strip(text)
    if body.startswith(("{", "[")) and not _PY_CALL.match(body):
        return _json_calls(body)
    if _PY_CALL.match(body):
        try:
            return ParsedOutput(_parse_pythonic(body), True)
        except (SyntaxError, ValueError) as exc:
            if body.startswith("[") or tagged:
                return ParsedOutput([], True, f"malformed pythonic call: {exc}")
            return ParsedOutput([], False)  # prose that happens to end with ')'
    if tagged:
        return ParsedOutput([], True, "<|python_tag|> followed by no call")
    return ParsedOutput([], False)


def looks_like_call(prefix: str, template: str | None = None) -> bool | None:
    """Whether output starting with ``prefix`` may be a tool call (``None``: cannot tell yet): what a streaming
    front end buffers instead of showing.

    The template's call opener (``<tool_call>``; :mod:`llamatune.chatformat`), any ``<…`` tag, JSON, a code fence
    and ``name(`` may be calls (the parser reads them all, whatever the template); anything else is prose and can
    be streamed at once.
    """
    s = prefix.lstrip()
    if not s:
        return None
    opener = chat_format(template).call_open
    if opener and (s.startswith(opener) or opener.startswith(s)):
        return True
    if s[0] in "{`<":
        return True
    if s[0] == "[":  # a JSON list of calls or [f(...)], but not "[1] ..." or "[Link](...)"
        s = s[1:].lstrip()
        if not s:
            return None
        if s[0] in '{"':
            return True
    m = _IDENT.match(s)
    if not m:
        return False
    rest = s[m.end():].lstrip()
    if not rest:
        return None
    return rest[0] == "("


def parse_tool_calls(text: str) -> list[ToolCall]:
    """The tool calls in ``text``; ``[]`` for prose or for a call that cannot be parsed."""
    return parse_output(text).calls


# --- validation against JSON schemas -------------------------------------------------------------------

_TYPES = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}


@dataclass(frozen=True)
class Invalid:
    """Why a call does not fit its tool: ``kind`` is one of unknown_tool, missing_argument,
    unexpected_argument, wrong_type, bad_value."""

    kind: str
    detail: str
    argument: str | None = None

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


def _fn(tool: dict) -> dict:
    return tool.get("function", tool)


def type_ok(value: Any, schema: dict) -> bool:
    """Whether ``value`` has the JSON-schema type of ``schema`` (int is accepted for number; bool is not int)."""
    types = schema.get("type")
    if types is None:
        return True
    for t in types if isinstance(types, list) else [types]:
        py = _TYPES.get(t, (object,))
        if isinstance(value, bool) and t in ("integer", "number"):
            continue
        if isinstance(value, py):
            return True
    return False


def validate_call(call: ToolCall, tools: list[dict]) -> Invalid | None:
    """``None`` when ``call`` fits one of ``tools`` (OpenAI-style schemas), else the first reason it does not."""
    by_name = {_fn(t)["name"]: _fn(t) for t in tools}
    spec = by_name.get(call.name)
    if spec is None:
        return Invalid("unknown_tool", f"no tool named {call.name!r} (offered: {', '.join(by_name) or 'none'})")
    params = spec.get("parameters") or {}
    props = params.get("properties", {})
    for req in params.get("required", []):
        if req not in call.arguments:
            return Invalid("missing_argument", f"{call.name} needs {req!r}", req)
    for arg, value in call.arguments.items():
        if arg not in props:
            return Invalid("unexpected_argument", f"{call.name} has no argument {arg!r}", arg)
        if not type_ok(value, props[arg]):
            want = props[arg].get("type")
            return Invalid("wrong_type", f"{call.name}.{arg} must be {want}, got {type(value).__name__}", arg)
        if "enum" in props[arg] and value not in props[arg]["enum"]:
            return Invalid("bad_value", f"{call.name}.{arg} must be one of {props[arg]['enum']}, got {value!r}", arg)
    return None
