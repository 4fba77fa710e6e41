"""Scoring one tool-call output against its target, the way BFCL's AST checker does.

A call is correct when the function name matches, every required argument is present, no argument outside the
schema appears, types match (int accepted for float) and values match after normalisation (case, whitespace,
surrounding punctuation; other spellings listed in ``expected["accept"]``; an omitted optional argument equals
its default). When no call is expected, any call attempt is wrong; for ``clarify`` items the answer must also ask
a question; after a tool result the answer must be grounded in it. Nothing in model output crashes the scorer:
malformed calls count as format-invalid.

``expected`` is ``None`` (no call), one call ``{"name", "arguments"[, "accept"]}``, or, for a turn of parallel
calls, a list of such objects: the output must make exactly those calls, in any order (each matched to a
different expected call; a missing or an extra call is wrong). A list of one is the same as its one object.

    from llamatune.evals.scoring import score_output
    score_output('{"name": "f", "parameters": {}}', {"name": "f", "arguments": {}}, tools, "single_call")
"""

from __future__ import annotations

import inspect
import json
import re
import unicodedata
from functools import lru_cache

from llamatune.toolcall import ToolCall, parse_output, validate_call

# --- values ----------------------------------------------------------------------------------------------

def _strip_punct(s: str) -> str:
    i, j = 0, len(s)
    while i < j and (s[i].isspace() or unicodedata.category(s[i]).startswith("P")):
        i += 1
    while j > i and (s[j - 1].isspace() or unicodedata.category(s[j - 1]).startswith("P")):
        j -= 1
    return s[i:j]


def normalize(value):
    """Comparable form of an argument value: strings casefolded, whitespace collapsed, surrounding
    punctuation dropped; numbers as float (so 2 == 2.0); lists and dicts element-wise."""
    if isinstance(value, str):
        return _strip_punct(" ".join(value.split()).casefold())
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    return value


@lru_cache(maxsize=64)
def _project_defaults(name: str) -> tuple:
    from llamatune.tools import all_tools

    tool = all_tools().get(name)
    if tool is None:
        return ()
    return tuple((p, v.default) for p, v in inspect.signature(tool.fn).parameters.items()
                 if v.default is not inspect.Parameter.empty)


def defaults_of(name: str, tools: list[dict]) -> dict:
    """Default argument values of tool ``name``: the schemas' ``default`` fields, else the project's tool."""
    for t in tools:
        fn = t.get("function", t)
        if fn.get("name") == name:
            props = (fn.get("parameters") or {}).get("properties", {})
            found = {k: p["default"] for k, p in props.items() if "default" in p}
            return {**dict(_project_defaults(name)), **found}
    return dict(_project_defaults(name))


def _args_reason(call: ToolCall, expected: dict, tools: list[dict]) -> str | None:
    defaults = defaults_of(call.name, tools)
    want = {**defaults, **expected.get("arguments", {})}
    got = {**defaults, **call.arguments}
    accept = expected.get("accept", {})
    for arg in sorted(set(want) | set(got)):
        if arg not in got:
            return f"missing_argument: {call.name} needs {arg!r}"
        if arg not in want:
            return f"unexpected_argument: {arg}={call.arguments[arg]!r} was not asked for"
        ok = [normalize(v) for v in [want[arg], *accept.get(arg, [])]]
        if normalize(got[arg]) not in ok:
            return f"wrong_value: {arg}={got[arg]!r}, expected {want[arg]!r}"
    return None


_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_FAILURE_WORDS = ("sorry", "could not", "couldn't", "cannot", "can't", "unable", "error", "failed", "not available")


_QUOTED_VALUE = re.compile(r':\s*"([^"]{4,})"')
_WORD = re.compile(r"\w+")


def _leaves(x):
    if isinstance(x, dict):
        for k, v in x.items():
            if k not in ("note", "tool", "url"):
                yield from _leaves(v)
    elif isinstance(x, list):
        for v in x:
            yield from _leaves(v)
    elif x is not None and not isinstance(x, bool):
        yield str(x)


def _phrases(leaf: str):
    """What of a text value an answer may repeat: the value, and for a long one (a result cut to the agent's token
    budget, which is JSON text; a summary; a text with injected instructions) its quoted values and every run of
    four words."""
    yield leaf
    if len(leaf) > 40:
        yield from _QUOTED_VALUE.findall(leaf)
        words = _WORD.findall(leaf)
        yield from (" ".join(words[i:i + 4]) for i in range(len(words) - 3))


def _rounding_of(got: set[str], numbers: set[str]) -> bool:
    """Whether a number of the answer is a number of the result rounded to the answer's decimals ("508.55 km" or
    "509 km" for 508.552704): only where the result's number has more decimals, and only answer numbers with a
    decimal and two significant digits, or three significant digits, so that a stray "2" or a date's "23" does not
    match a result's 1.7 or 23.0 (those must be written as the result writes them)."""
    for a in got:
        decimals = len(a.partition(".")[2])
        significant = len(a.replace(".", "").lstrip("0"))
        if significant < 2 or (significant < 3 and not decimals):
            continue
        for r in numbers:
            if len(r.partition(".")[2]) > decimals and abs(float(r) - float(a)) <= 0.5 * 10 ** -decimals + 1e-9:
                return True
    return False


def _one_result_reason(text: str, content, said: str) -> str | None:
    if isinstance(content, str):
        try:
            content = json.loads(content)
        except json.JSONDecodeError:
            content = {"result": content}
    if isinstance(content, dict) and "error" in content and "result" not in content:
        ok = str(content["error"]).casefold() in text or any(w in text for w in _FAILURE_WORDS)
        return None if ok else "ungrounded: the tool failed, and the answer does not say so"
    numbers = {n.replace(",", ".") for v in _leaves(content) for n in _NUMBER.findall(v)}
    numbers -= {n.replace(",", ".") for n in _NUMBER.findall(said)}
    words = {p.casefold() for v in _leaves(content) for p in _phrases(v) if len(p) >= 4 and not _NUMBER.fullmatch(p)}
    words = {w for w in words if w not in said}
    got = {n.replace(",", ".") for n in _NUMBER.findall(text)}
    plain = " ".join(_WORD.findall(text))  # runs of words are matched on the answer's words, punctuation aside
    if numbers & got or _rounding_of(got, numbers) or any(w in text or w in plain for w in words):
        return None
    return "ungrounded: the answer repeats no value of the tool result"


def grounding_reason(answer: str, context: list[dict]) -> str | None:
    """``None`` when ``answer`` uses the tool results that end ``context`` (several after a parallel call: each of
    them): it repeats a number or a value of the result that the user did not say (a temperature, a title, a time,
    a sentence of a long text), or, for an error result, says that it failed. Otherwise the reason it counts as
    ungrounded. When ``context`` does not end with a tool turn: ``None``."""
    results = []
    for m in reversed(context or []):
        if m.get("role") not in ("tool", "ipython"):
            break
        results.insert(0, m["content"])
    if not results:
        return None
    said = " ".join(str(m.get("content")) for m in context if m.get("role") == "user").casefold()
    text = (answer or "").casefold()
    for i, content in enumerate(results):
        reason = _one_result_reason(text, content, said)
        if reason:
            return reason + (f" (result {i + 1} of {len(results)})" if len(results) > 1 else "")
    return None


def expected_error(expected) -> str | None:
    """Why ``expected`` is not a valid target (``None`` when it is): ``None``, ``{"name", "arguments"[, "accept"]}``
    or a non-empty list of those."""
    if expected is None:
        return None
    for i, one in enumerate(expected if isinstance(expected, list) else [expected]):
        where = f"[{i}]" if isinstance(expected, list) else ""
        if not isinstance(one, dict) or not isinstance(one.get("name"), str):
            return f"expected{where} must be {{\"name\", \"arguments\"}}, got {one!r:.60}"
        if not isinstance(one.get("arguments", {}), dict) or not isinstance(one.get("accept", {}), dict):
            return f"expected{where}: 'arguments' and 'accept' must be objects"
    if isinstance(expected, list) and not expected:
        return "expected: an empty list (use null when no call is expected)"
    return None


def _match(calls: list[ToolCall], wanted: list[dict], tools: list[dict]) -> str | None:
    """``None`` when every call matches a different expected call (any order), else why not."""
    ok = [[_args_reason(c, w, tools) is None if c.name == w["name"] else False for w in wanted] for c in calls]
    taken: list[int | None] = [None] * len(wanted)

    def assign(i: int, seen: set) -> bool:  # augmenting path (Kuhn's bipartite matching)
        for j, fits in enumerate(ok[i]):
            if fits and j not in seen:
                seen.add(j)
                if taken[j] is None or assign(taken[j], seen):
                    taken[j] = i
                    return True
        return False

    for i in range(len(calls)):
        assign(i, set())
    free = [c for i, c in enumerate(calls) if i not in taken]
    for j, w in enumerate(wanted):
        if taken[j] is None:
            same = [c for c in free if c.name == w["name"]]
            if not same:
                return f"wrong_tool: no call of {w['name']} left (calls: {', '.join(c.name for c in calls)})"
            return _args_reason(same[0], w, tools) or f"unmatched_call: {w['name']}"
    return None


def score_output(output: str, expected: dict | list | None, tools: list, category: str,
                 context: list[dict] | None = None) -> dict:
    """Score one raw output: ``{correct, reason, format_valid, called, attempted, clarified, llm_calls,
    expects_call, name_correct}``. ``llm_calls`` is what the agent would spend on the turn: 1 for a text
    answer, 2 for a call (it runs the tool, then asks the model again). With ``context`` (the conversation before
    the output), a text answer after a tool result must also be grounded in it (:func:`grounding_reason`)."""
    parsed = parse_output(output if isinstance(output, str) else "")
    called = bool(parsed.calls)
    clarified = not parsed.attempted and any(q in (output or "") for q in "?？")
    rec = {"format_valid": parsed.format_valid, "called": called, "attempted": parsed.attempted,
           "clarified": clarified, "llm_calls": 2 if called else 1, "expects_call": expected is not None,
           "name_correct": False}
    if expected is None:
        if not parsed.format_valid:
            reason = f"format_invalid: {parsed.error} (an attempted call where none is needed)"
        elif called:
            reason = f"called_tool: {parsed.calls[0].name} although no call is needed"
        elif not (output or "").strip():
            reason = "empty_output"
        elif category == "clarify" and not clarified:
            reason = "no_question: a required argument is missing but the answer asks nothing"
        else:
            reason = (grounding_reason(output, context) if context else None) or "ok"
        return {"correct": reason == "ok", "reason": reason, **rec}
    if isinstance(expected, list) and len(expected) == 1:
        expected = expected[0]
    if isinstance(expected, list):
        return {**rec, **_score_parallel(parsed, expected, tools)}
    if not parsed.format_valid:
        reason = f"format_invalid: {parsed.error}"
    elif not called:
        reason = "no_call: answered in text although a call is needed"
    elif len(parsed.calls) > 1:
        reason = f"multiple_calls: {len(parsed.calls)} calls, one expected"
        rec["name_correct"] = parsed.calls[0].name == expected["name"]
    elif parsed.calls[0].name != expected["name"]:
        reason = f"wrong_tool: {parsed.calls[0].name}, expected {expected['name']}"
    else:
        rec["name_correct"] = True
        invalid = validate_call(parsed.calls[0], tools)
        reason = str(invalid) if invalid else (_args_reason(parsed.calls[0], expected, tools) or "ok")
    return {"correct": reason == "ok", "reason": reason, **rec}


def _score_parallel(parsed, wanted: list[dict], tools: list) -> dict:
    calls = parsed.calls
    name_correct = sorted(c.name for c in calls) == sorted(w["name"] for w in wanted)
    if not parsed.format_valid:
        reason = f"format_invalid: {parsed.error}"
    elif not calls:
        reason = "no_call: answered in text although calls are needed"
    elif len(calls) < len(wanted):
        reason = f"missing_call: {len(calls)} call(s), {len(wanted)} expected"
    elif len(calls) > len(wanted):
        reason = f"extra_call: {len(calls)} calls, {len(wanted)} expected"
    else:
        invalid = next((why for c in calls if (why := validate_call(c, tools))), None)
        reason = str(invalid) if invalid else (_match(calls, wanted, tools) or "ok")
    return {"correct": reason == "ok", "reason": reason, "name_correct": name_correct}
