"""Typed tool functions whose JSON schemas come from their signatures and docstrings (one source).

    @tool
    def get_time(city: str, timezone: str | None = None) -> str:
        '''Current local time in a city.

        Args:
            city: City name, e.g. "Oslo".
            timezone: IANA zone name; looked up from the city when omitted.
        '''

``get_time.schema`` is then the OpenAI/Hugging Face tool schema
``{"type": "function", "function": {"name", "description", "parameters"}}`` that the chat template renders,
and ``get_time(...)`` still calls the function. ``Literal[...]`` becomes an ``enum``; parameters without a
default are ``required``. A missing type hint or an undocumented argument is an error at definition time.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal, get_args, get_origin

_PRIMITIVES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array"}


def _json_type(hint: Any, where: str) -> dict:
    origin = get_origin(hint)
    if hint in _PRIMITIVES:
        return {"type": _PRIMITIVES[hint]}
    if origin is Literal:
        values = list(get_args(hint))
        return {"type": _PRIMITIVES[type(values[0])], "enum": values}
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return _json_type(args[0], where)
        return {"type": [_json_type(a, where)["type"] for a in args]}
    if origin in (list, tuple):
        (item,) = get_args(hint)[:1] or (str,)
        return {"type": "array", "items": _json_type(item, where)}
    if origin is dict:
        return {"type": "object"}
    raise TypeError(f"{where}: cannot express type {hint!r} as JSON schema")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    doc = inspect.cleandoc(doc or "")
    parts = re.split(r"^\s*(?:Args|Arguments|Parameters):\s*$", doc, maxsplit=1, flags=re.M)
    description = parts[0].strip()
    args: dict[str, str] = {}
    if len(parts) == 2:
        section = re.split(r"^\s*(?:Returns|Raises|Yields|Examples?):\s*$", parts[1], maxsplit=1, flags=re.M)[0]
        current = None
        for line in section.splitlines():
            m = re.match(r"^\s*(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$", line)
            if m:
                current = m.group(1)
                args[current] = m.group(2).strip()
            elif current and line.strip():
                args[current] += " " + line.strip()
    return description, args


def function_schema(fn: Callable) -> dict:
    """The tool schema of ``fn``, derived from its type hints and Google-style docstring."""
    name = fn.__name__
    description, arg_docs = _parse_docstring(fn.__doc__ or "")
    if not description:
        raise ValueError(f"tool {name}: the docstring must describe the tool")
    hints = typing.get_type_hints(fn)
    properties, required = {}, []
    for pname, param in inspect.signature(fn).parameters.items():
        if pname not in hints:
            raise TypeError(f"tool {name}: argument {pname!r} has no type hint")
        if pname not in arg_docs:
            raise ValueError(f"tool {name}: argument {pname!r} is not documented under Args:")
        prop = _json_type(hints[pname], f"tool {name}, argument {pname!r}")
        prop["description"] = arg_docs[pname]
        properties[pname] = prop
        if param.default is inspect.Parameter.empty:
            required.append(pname)
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


@dataclass(frozen=True)
class Tool:
    fn: Callable
    schema: dict

    @property
    def name(self) -> str:
        return self.schema["function"]["name"]

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def tool(fn: Callable) -> Tool:
    """Decorator: make ``fn`` a :class:`Tool` with its derived schema."""
    return Tool(fn, function_schema(fn))
