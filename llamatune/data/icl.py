"""In-context learning: a system prompt with k worked tool-use examples, the baseline a fine-tune must beat.

The examples come from the function-calling generator's **training** template families only (so an
evaluation on the test split never shows the model a test phrasing), cycling through the categories: a call,
no call, an answer from a tool result, a clarifying question, a follow-up, parallel calls. Calls are written in
the chat template's own call syntax (:func:`llamatune.chatformat.render_calls`; ``template``, default Llama 3.2's),
so the examples show what the template asks the model to write. ``eval toolcall --icl K`` uses
:func:`icl_system_prompt`; the Space's ICL switch and ``llamatune chat --icl K`` hand the agent :func:`icl_block`
restricted to the mode's tools, so the Space and the evaluation show the model the same kind of examples.

    from llamatune.data.icl import icl_system_prompt
    icl_system_prompt(3)
"""

from __future__ import annotations

import json
from functools import lru_cache

from llamatune.chatformat import render_calls

INSTRUCTIONS = (
    "You are a helpful assistant that can call functions. Call a function only when the request needs one: then "
    "reply with the call alone, {call}. Several calls that the request needs at once go in one reply. Otherwise "
    "answer in plain text. If a required argument is missing or ambiguous, ask a short question instead of "
    "guessing. After a function result, answer from it in plain text without calling again."
)
ORDER = ("single_call", "no_tool", "tool_result", "clarify", "multi_turn", "parallel")
MAX_CHARS = 700  # keep examples short (a 14-day forecast would crowd the context)


def instructions(template: str | None = None) -> str:
    """:data:`INSTRUCTIONS` with the call shown in ``template``'s syntax."""
    return INSTRUCTIONS.format(call=render_calls([{"name": "function_name", "arguments": {"argument": "value"}}],
                                                 template))


def format_turn(m: dict, template: str | None = None) -> str:
    if m.get("tool_calls"):
        return "Assistant: " + render_calls(m["tool_calls"], template)
    if m["role"] in ("tool", "ipython"):
        c = m["content"]
        return "Function result: " + (c if isinstance(c, str) else json.dumps(c, ensure_ascii=False))
    return f"{m['role'].capitalize()}: {m['content']}"


def format_example(row: dict, template: str | None = None) -> str:
    """One generated row as a plain-text transcript."""
    return "\n".join(format_turn(m, template) for m in row["messages"] if m["role"] != "system")


def _uses_only(row: dict, tools: frozenset[str] | None) -> bool:
    if tools is None:
        return True
    called = {c["function"]["name"] for m in row["messages"] for c in m.get("tool_calls") or []}
    offered = {t["function"]["name"] if "function" in t else t["name"] for t in row.get("tools") or []}
    return called <= tools and (offered <= tools or not called)


@lru_cache(maxsize=32)
def _examples(k: int, seed: int, tools: frozenset[str] | None) -> tuple[dict, ...]:
    from llamatune.data.funccall import build_split, strip_private

    pool = strip_private(build_split("train", max(50, 20 * k) * (1 if tools is None else 4), seed))
    by_cat = {c: [r for r in pool if r["category"] == c and len(format_example(r)) <= MAX_CHARS
                  and _uses_only(r, tools)] for c in ORDER}
    out, i = [], 0
    while len(out) < k:
        cat = ORDER[i % len(ORDER)]
        rows = by_cat[cat]
        if rows:
            out.append(rows.pop(0))
        elif not any(by_cat.values()):
            raise ValueError(f"cannot draw {k} ICL examples (pool exhausted)")
        i += 1
    return tuple(out)


def icl_examples(k: int, seed: int = 0, tools=None) -> list[dict]:
    """``k`` short training rows, cycling through the categories; ``tools``: only rows that call these."""
    return list(_examples(k, seed, None if tools is None else frozenset(tools)))


def icl_block(k: int, seed: int = 0, tools=None, template: str | None = None) -> str:
    """``k`` worked examples as numbered transcripts (``""`` for k = 0), calls in ``template``'s syntax."""
    if k <= 0:
        return ""
    return "\n\n".join(f"Example {n}:\n{format_example(row, template)}"
                        for n, row in enumerate(icl_examples(k, seed, tools), 1))


def icl_system_prompt(k: int, seed: int = 0, template: str | None = None) -> str:
    """Instructions plus ``k`` worked examples; ``""`` for k = 0. Calls in ``template``'s syntax."""
    if k <= 0:
        return ""
    return f"{instructions(template)}\n\n{icl_block(k, seed, template=template)}"
