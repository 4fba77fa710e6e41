"""Scoring with BFCL's semantics (the AST checker of BFCL v4), on the project's parsed calls.

A raw output is parsed by :func:`llamatune.toolcall.parse_output` (the one parser of the project), then judged
as ``bfcl_eval/eval_checker/ast_eval/ast_checker.py`` judges a decoded output; this is an independent
implementation of its rules, checked against the original by ``bench/bfcl_agreement.py``:

* **irrelevance** categories: correct when the output holds no call (prose, an empty answer and an attempted call
  that does not parse all count as "no call", as BFCL's decoder failing does);
* **simple** categories: exactly one call; **multiple**: exactly one call, of the expected function;
  **parallel**: as many calls as expected, matched in any order (each expected call, in turn, takes the first
  unmatched output call that fits it, as BFCL does);
* a call fits when its name matches, every required argument is given, no argument outside the schema or the
  possible answer appears, every argument has the schema's type exactly (``bool`` is not ``int``; an ``int`` is
  accepted for a ``float``; a value of the possible answers' type is accepted as a "variable"), its value is
  one of the possible answers — strings compared after BFCL's ``standardize_string`` (case, spaces and
  ``,./-_*^`` ignored, ``'`` as ``"``), lists element-wise so, dicts key by key against their own accepted values
  — and every argument left out may be omitted (``""`` among its possible answers).
"""

from __future__ import annotations

import re

from llamatune.toolcall import ToolCall, parse_output

_PY = {"string": str, "integer": int, "number": float, "boolean": bool, "array": list, "object": dict}


def standardize(s: str) -> str:
    """BFCL's ``standardize_string``: drop spaces and ``,./-_*^``, lowercase, single quotes as double."""
    return re.sub(r"[ ,./\-_*^]", "", s).lower().replace("'", '"')


def _std(v):
    return standardize(v) if isinstance(v, str) else v


def py_type(schema: dict):
    """The Python type BFCL checks a converted property against (``number`` = BFCL's ``float``)."""
    return _PY.get(schema.get("type"), str)


def _answer_type(possible: list):
    return next((type(v) for v in possible if v != ""), None)


def _type_reason(arg: str, value, possible: list, want, item_type) -> tuple[str | None, bool]:
    """``(reason or None, is_variable)``, BFCL's ``type_checker``: exact type (or the possible answers' type,
    "a variable"); for arrays one level of item types against each list-valued possible answer."""
    ans_type = _answer_type(possible)
    is_variable = ans_type is not None and ans_type != want
    if type(value) is want:
        if item_type is None:
            return None, is_variable
        for p in possible:
            if not isinstance(p, list) or all(_type_reason(arg, x, p, item_type, None)[0] is None for x in value):
                return None, is_variable
        return f"wrong_type: an item of {arg}={value!r} is not {item_type.__name__}", is_variable
    if ans_type is not None and type(value) is ans_type:
        return None, True
    return f"wrong_type: {arg}={value!r} is {type(value).__name__}, expected {want.__name__}", is_variable


def _dict_ok(value: dict, possible: list) -> bool:
    for p in possible:
        if p == "" or not isinstance(p, dict):
            continue
        if all(k in p and _std(v) in [_std(x) for x in p[k]] for k, v in value.items()) and \
                all(k in value or "" in vals for k, vals in p.items()):
            return True
    return False


def _list_dict_ok(value: list, possible: list) -> bool:
    return any(len(value) == len(p) and all(_dict_ok(v, [d]) for v, d in zip(value, p)) for p in possible)


def _value_reason(arg: str, value, possible: list, schema: dict) -> str | None:
    want = py_type(schema)
    item_type = py_type(schema["items"]) if want is list and "items" in schema else None
    if want is float and type(value) is int:
        value = float(value)
    reason, is_variable = _type_reason(arg, value, possible, want, item_type)
    if reason:
        return reason
    shown = [p for p in possible if p != ""]
    if not is_variable:
        if want is dict:
            ok = _dict_ok(value, possible)
        elif want is list and item_type is dict:
            ok = _list_dict_ok(value, possible)
        elif want is str:
            ok = standardize(value) in [standardize(p) for p in possible if isinstance(p, str)]
        elif want is list:
            ok = [_std(v) for v in value] in [[_std(x) for x in p] for p in possible if isinstance(p, (list, str))]
        else:
            ok = value in possible
    else:
        ok = value in possible
    return None if ok else f"wrong_value: {arg}={value!r}, expected one of {shown!r}"


def _schema(tools: list[dict], name: str) -> dict | None:
    for t in tools:
        fn = t.get("function", t)
        if fn["name"] == name:
            return fn
    return None


def call_reason(call: ToolCall, want: dict, tools: list[dict]) -> str | None:
    """``None`` when ``call`` fits the expected call ``want`` (``{"name", "possible", ...}``), else why not."""
    if call.name != want["name"]:
        return f"wrong_tool: {call.name}, expected {want['name']}"
    fn = _schema(tools, want["name"]) or {}
    params = fn.get("parameters") or {}
    props, possible = params.get("properties", {}), want["possible"]
    for req in params.get("required", []):
        if req not in call.arguments:
            return f"missing_argument: {call.name} needs {req!r}"
    for arg, value in call.arguments.items():
        if arg not in props or arg not in possible:
            return f"unexpected_argument: {arg}={value!r} was not asked for"
        reason = _value_reason(arg, value, possible[arg], props[arg])
        if reason:
            return reason
    for arg, vals in possible.items():
        if arg not in call.arguments and "" not in vals:
            return f"missing_argument: {arg!r} may not be omitted"
    return None


def _match_all(calls: list[ToolCall], wants: list[dict], tools) -> str | None:
    """BFCL's order-free matching: each expected call takes the first unmatched output call that fits it."""
    used: set[int] = set()
    for j, want in enumerate(wants):
        reasons = []
        for i, call in enumerate(calls):
            if i in used:
                continue
            r = call_reason(call, want, tools)
            if r is None:
                used.add(i)
                break
            reasons.append(r)
        else:
            first = reasons[0] if reasons else "no call left"
            return f"unmatched_call: no output call fits expected call {j} ({want['name']}): {first}"
    return None


def score_output(output: str, expected, tools: list[dict], category: str) -> dict:
    """Score one raw output: ``{correct, reason, format_valid, called, attempted, clarified, llm_calls,
    expects_call, name_correct, n_calls}`` (the fields ``llamatune.evals.toolcall.aggregate`` reads)."""
    parsed = parse_output(output if isinstance(output, str) else "")
    calls = parsed.calls
    rec = {"format_valid": parsed.format_valid, "called": bool(calls), "attempted": parsed.attempted,
           "clarified": False, "llm_calls": 2 if calls else 1, "expects_call": expected is not None,
           "name_correct": False, "n_calls": len(calls)}
    if expected is None:
        reason = f"called_tool: {calls[0].name} although no call is needed" if calls else "ok"
        return {"correct": reason == "ok", "reason": reason, **rec}
    wants = expected if isinstance(expected, list) else [expected]
    if not calls:
        reason = f"format_invalid: {parsed.error}" if not parsed.format_valid else \
            "no_call: answered in text although a call is needed"
    elif len(calls) != len(wants):
        reason = f"wrong_count: {len(calls)} calls, {len(wants)} expected"
    elif len(wants) == 1:
        reason = call_reason(calls[0], wants[0], tools) or "ok"
    else:
        reason = _match_all(calls, wants, tools) or "ok"
    if calls:
        rec["name_correct"] = sorted(c.name for c in calls) == sorted(w["name"] for w in wants)
    return {"correct": reason == "ok", "reason": reason, **rec}
