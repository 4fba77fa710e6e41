r"""The call-syntax contract: per chat template, how a tool call, a tool result and the end of a turn are written.

The template files in ``llamatune/templates/`` are the one definition of the chat format; this table says, in
data, what they write, so that code which reads or constrains model output never hard-codes ``{``,
``<|python_tag|>`` or ``<tool_call>``: the parser (:mod:`llamatune.toolcall`), the agent's streaming decision,
a call grammar, an OpenAI-compatible endpoint, the ICL examples. Tests render every format through its template
and check that :func:`render_calls` writes exactly what the template writes, and that the parser reads it back.

A call turn (what the model writes after the generation prompt, before ``eos_token``) is::

    call_open + (list_open + list_sep.join(calls) + list_close   if several calls, or always_list
                 else the one call)                              + call_close

each call a JSON object ``{"name": NAME, ARGS_KEY: {...}}``. A tool result is a turn under the ``result_role``
header holding ``result_open + content + result_close`` (``content`` a JSON object, or a string as given, except
that Meta's template JSON-quotes a string: ``quotes_string_results``); one turn per result, in the order of the
calls.

The three formats (see :data:`FORMATS`):

* ``smollm2`` (SmolLM2-Instruct's model card and Ollama's smollm2 template): ``<tool_call>[\n{"name": ..,
  "arguments": {..}},\n{..}\n]</tool_call>``, a list even for one call; results in a ``user`` turn as
  ``<tool_response>\n..\n</tool_response>``; stops ``<|im_end|>``, ``<|endoftext|>``.
* ``llama-3.2`` (Meta's format): a bare ``{"name": .., "parameters": {..}}``, several as a JSON list
  ``[{..}, {..}]`` (Meta's template writes one call only); results under the ``ipython`` header; stops
  ``<|eot_id|>``, ``<|eom_id|>``, ``<|end_of_text|>``.
* ``gemma-3`` (the project's own): as Llama 3.2; results in a ``tool`` turn; stops ``<end_of_turn>``, ``<eos>``.

A leaf: it imports nothing from the package.

    from llamatune.chatformat import chat_format, render_calls
    render_calls([{"name": "f", "arguments": {"x": 1}}], "smollm2")
    # '<tool_call>[\n{"name": "f", "arguments": {"x": 1}}\n]</tool_call>'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ChatFormat:
    """What one template writes. ``call_triggers`` are regular expressions that match the start of a call turn
    (anchored at the turn's start, whitespace allowed before): where a lazy grammar switches on."""

    name: str
    file: str
    bos_token: str
    eos_token: str  # ends every turn the model writes
    also_stop: tuple[str, ...]  # other texts that end a generated turn (a built-in tool call, a document's end)
    call_open: str
    call_close: str
    always_list: bool  # one call is also written as a one-element list
    list_open: str
    list_sep: str
    list_close: str
    args_key: str  # the key of the arguments object in a call
    parallel: bool  # several calls in one turn
    result_role: str  # the role header a tool result is written under
    result_open: str
    result_close: str
    quotes_string_results: bool  # a string result is written JSON-quoted (Meta's template), not as it is
    call_triggers: tuple[str, ...]
    optional_opener: str = ""  # a marker a call may also start with (Meta's <|python_tag|>); never written

    @property
    def stops(self) -> list[str]:
        """The texts that end a generated turn, ``eos_token`` first."""
        return [self.eos_token, *self.also_stop]

    @property
    def opener(self) -> str:
        """The literal a call turn starts with: ``call_open``, else the JSON a call starts with."""
        return self.call_open or "{"


_JSON_CALL = r'\s*\[?\s*\{\s*"name"\s*:'
FORMATS: dict[str, ChatFormat] = {
    "llama-3.2": ChatFormat(
        name="llama-3.2", file="llama-3.2.jinja", bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        also_stop=("<|eom_id|>", "<|end_of_text|>"), call_open="", call_close="", always_list=False,
        list_open="[", list_sep=", ", list_close="]", args_key="parameters", parallel=True,
        result_role="ipython", result_open="", result_close="", quotes_string_results=True,
        call_triggers=(_JSON_CALL, r"\s*<\|python_tag\|>"), optional_opener="<|python_tag|>"),
    "gemma-3": ChatFormat(
        name="gemma-3", file="gemma-3.jinja", bos_token="<bos>", eos_token="<end_of_turn>", also_stop=("<eos>",),
        call_open="", call_close="", always_list=False, list_open="[", list_sep=", ", list_close="]",
        args_key="parameters", parallel=True, result_role="tool", result_open="", result_close="",
        quotes_string_results=False, call_triggers=(_JSON_CALL,)),
    # SmolLM2's ChatML: no BOS is added (its tokenizer's add_bos_token is false); <|endoftext|> ends a document.
    # Calls and results as SmolLM2-Instruct's model card and Ollama's smollm2 template write them.
    "smollm2": ChatFormat(
        name="smollm2", file="smollm2.jinja", bos_token="", eos_token="<|im_end|>", also_stop=("<|endoftext|>",),
        call_open="<tool_call>", call_close="</tool_call>", always_list=True, list_open="[\n", list_sep=",\n",
        list_close="\n]", args_key="arguments", parallel=True, result_role="user",
        result_open="<tool_response>\n", result_close="\n</tool_response>", quotes_string_results=False,
        call_triggers=(r"\s*<tool_call>",)),
}
DEFAULT = "llama-3.2"


def chat_format(template: str | None = None) -> ChatFormat:
    """The format of ``template`` (a project template name); unknown or ``None``: Llama 3.2's."""
    return FORMATS.get(template or DEFAULT, FORMATS[DEFAULT])


def call_tags() -> list[tuple[str, str]]:
    """Every ``(call_open, call_close)`` pair a template writes (the parser reads them all, whatever the model)."""
    return list(dict.fromkeys((f.call_open, f.call_close) for f in FORMATS.values() if f.call_open))


def _name_args(call: Any) -> tuple[str, Any]:
    if isinstance(call, dict):
        fn = call.get("function", call) if isinstance(call.get("function"), dict) else call
        return fn["name"], fn.get("arguments", fn.get("parameters", {}))
    return call.name, call.arguments


def render_calls(calls, template: str | None = None) -> str:
    """The text of an assistant turn that makes ``calls`` in ``template``'s syntax, without the end-of-turn token:
    what training targets, ICL examples and fake models write. ``calls``: :class:`llamatune.toolcall.ToolCall` s,
    ``{"name", "arguments"}`` dicts or OpenAI ``{"type": "function", "function": {...}}`` items; arguments given
    as a JSON string are written as they are (as the templates do)."""
    fmt = chat_format(template)
    calls = list(calls)
    if not calls:
        raise ValueError("render_calls needs at least one call")
    if len(calls) > 1 and not fmt.parallel:
        raise ValueError(f"{fmt.name} writes one call per turn, got {len(calls)}")
    objs = []
    for call in calls:
        name, args = _name_args(call)
        body = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        objs.append(f'{{"name": {json.dumps(name, ensure_ascii=False)}, "{fmt.args_key}": {body}}}')
    inner = fmt.list_open + fmt.list_sep.join(objs) + fmt.list_close if fmt.always_list or len(objs) > 1 else objs[0]
    return fmt.call_open + inner + fmt.call_close


def calls_message(calls) -> dict:
    """An assistant turn that makes ``calls``, in the HF/OpenAI ``tool_calls`` shape the templates render."""
    items = []
    for call in calls:
        name, args = _name_args(call)
        items.append({"type": "function", "function": {"name": name, "arguments": args}})
    return {"role": "assistant", "tool_calls": items}
