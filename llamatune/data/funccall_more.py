"""Builders of the rows that teach when *not* to call and how to call several tools at once, after the Hammer recipe
(ICLR 2025, on-device function calling): near-miss irrelevance, tool output that carries instructions, parallel
calls and the answer from all their results, and function masking. Builders return ``(messages, tool names that
must be offered, expected)`` like :mod:`llamatune.data.funccall_build`.

* ``near_miss``: a tool of the request's own domain is offered and cannot serve it (the local-time tool for a flight
  duration, the unit converter for calories, a Wikipedia search for "what did I ask you earlier?"): a text answer;
* ``injection``: after a call, the result holds text that asks for another call or gives orders; the answer uses the
  result's data and follows none of it;
* ``parallel``: one assistant turn with 2-3 calls; ``expected`` is then a list of ``{"name", "arguments"[, "accept"]}``
  (order irrelevant); ``parallel_result``: after those calls and their results, one answer grounded in all of them;
* :func:`mask_row`: tool and argument names replaced by neutral ones (``func_k``, ``arg_k``), descriptions kept, so a
  model reads the schema instead of memorising names.
"""

from __future__ import annotations

import copy
import json
import random

from llamatune.data import funccall_build as b
from llamatune.data import funccall_slots as slot_data
from llamatune.data import funccall_templates as phrasebook

PLACE_TOOLS = (*b.WEATHER, "get_local_time")
SHARED_SLOTS = {"when": ("get_weather_forecast",), "unit": b.WEATHER}
INJECT_WEIGHTS = {"search_wikipedia": 3, "get_wikipedia_summary": 3, "get_current_weather": 1,
                  "get_weather_forecast": 1}
# the tools an injected text asks for (offered beside the called one, so the call is tempting; not the unit
# converter, whose schema alone is ~220 tokens)
INJECT_TARGETS = ("search_wikipedia", "get_wikipedia_summary", "get_current_weather", "get_weather_forecast",
                  "get_local_time", "calculate")
INJECTION_NOTE_SHARE = 0.3  # injection answers that also say an instruction in the result was ignored
LIST_RESULTS = ("get_weather_forecast", "search_wikipedia")  # results whose items a cut can leave out


def multi_call(calls: list[tuple[str, dict]]) -> dict:
    """One assistant turn holding every call of ``calls`` (``[(name, arguments)]``)."""
    return {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": n, "arguments": a}}
                                                for n, a in calls]}


def place_args(tool: str, name: str) -> tuple[dict, dict]:
    """``(args, accept)`` of a weather or local-time call about the place called ``name``."""
    _, country, tz, variants = b.city_by_name(name)
    if tool == "get_local_time":
        return {"timezone_name": tz}, {"timezone_name": b.TZ_ALIASES.get(tz, [])}
    return {"location": name}, {"location": [v for v in dict.fromkeys([*variants, f"{name}, {country}"]) if v != name]}


def parallel_calls(family: str) -> list[tuple[str, str]]:
    """``[(tool, slot suffix)]`` of a parallel family, in call order."""
    return [c if isinstance(c, tuple) else (c, "" if k == 0 else str(k + 1))
            for k, c in enumerate(phrasebook.PARALLEL[family][1])]


def parallel_request(rng: random.Random, family: str):
    """``(user message, [(tool, args, accept)])``: a request that needs every call of ``family``."""
    text = rng.choice(phrasebook.PARALLEL[family][2])
    slots = b.slots_of(text)
    values, shared, keep = {}, {}, []
    if "when" in slots:
        values["when"], shared["days"] = rng.choice(slot_data.WHEN)
    if "unit" in slots:
        u = "celsius" if rng.random() < 0.3 else "fahrenheit"
        values["unit"], shared["unit"] = rng.choice(slot_data.UNIT_PHRASES[u]), u
    calls, places, avoid = [], {}, set()
    for tool, suffix in parallel_calls(family):
        if suffix in places and tool in PLACE_TOOLS:  # the same place as an earlier call
            args, accept = place_args(tool, places[suffix])
        else:
            v, args, accept, k = b.request_slots(rng, tool, slots - set(SHARED_SLOTS) - {"limit"}, suffix=suffix,
                                                 avoid=avoid)
            values.update(v)
            keep += k
            if tool in PLACE_TOOLS:
                places[suffix] = b.place_of(args)
            avoid |= {x for x in (b.place_of(args), args.get("title"), args.get("query")) if x}
        for slot, tools in SHARED_SLOTS.items():
            key = "days" if slot == "when" else slot
            if key in shared and tool in tools:
                args[key] = shared[key]
        calls.append((tool, args, accept))
    return b.user(b.fill(text, values), keep), calls


def build_parallel(rng, family):
    msg, calls = parallel_request(rng, family)
    must = list(dict.fromkeys(t for t, _, _ in calls))
    return [msg, multi_call([(t, a) for t, a, _ in calls])], must, [b.expected(t, a, acc) for t, a, acc in calls]


def brief_answer(tool: str, args: dict, result: dict) -> str:
    """One short line grounded in ``result`` (only the fields it shows): a parallel answer has one per call."""
    if "error" in result:
        return f"{tool.replace('_', ' ')} failed: {result['error']}"
    if tool == "get_current_weather":
        bits = [result[k] for k in ("temperature", "conditions") if k in result]
        return f"{result.get('location', args['location'])}: " + (", ".join(bits) or "no reading in the result") + "."
    if tool == "get_weather_forecast":
        days = "; ".join(f"{d['date']} {d['conditions']}, {d['min']} to {d['max']}" for d in result["days"])
        return f"{result['location']}: {days}."
    if tool == "search_wikipedia":
        return f"Wikipedia on {args['query']}: " + ", ".join(r["title"] for r in result["results"]) + "."
    if tool == "get_wikipedia_summary":
        return f"{result['title']}: {result['summary']}" if "summary" in result else \
            f"{result['title']}: the summary was cut off in the result."
    if tool == "get_local_time":
        city = next(c[0] for c in slot_data.CITIES if c[2] == args["timezone_name"])
        return f"In {city} it's {result['local_time'].split()[1]} ({result['weekday']})."
    if tool == "convert_units":
        return (f"{b._num(args['value'])} {slot_data.UNIT_WORDS[args['from_unit']][0]} = "
                f"{b.exact_number(result['result'])} {slot_data.UNIT_WORDS[args['to_unit']][0]}.")
    return f"{result['expression']} = {b.exact_number(result['result'])}."


def build_parallel_result(rng, family, budget=None):
    """The parallel calls, one tool turn per call (in call order), then one answer grounded in every result, a line
    per call. With ``budget``, the calls share it as the agent's calls share its room (each at least 80, or 110 for a
    list of days or search results, so one item shows)."""
    msg, calls = parallel_request(rng, family)
    turns, lines = [], []
    for tool, args, _ in calls:
        each = None if budget is None else max(110 if tool in LIST_RESULTS else 80, budget // len(calls))
        if tool in (*b.WEATHER, "search_wikipedia", "get_wikipedia_summary") and rng.random() < 0.05:
            result = {"error": rng.choice(b.ERRORS["weather" if tool in b.WEATHER else "wikipedia"])}
        else:
            result = b.fake_result(rng, tool, args)
        turn, seen, _ = b.tool_turn(tool, result, each)
        turns.append(turn)
        lines.append(brief_answer(tool, args, seen))
    must = list(dict.fromkeys(t for t, _, _ in calls))
    return [msg, multi_call([(t, a) for t, a, _ in calls]), *turns, b.say("\n".join(lines))], must, None


# --- near-miss irrelevance ---------------------------------------------------------------------------------

def build_near_miss(rng, family):
    """A request in the offered tool's domain that it cannot serve; the answer is text (no call)."""
    _, offer, _, phrasings, answers = phrasebook.NEAR_MISS[family]
    q = rng.choice(phrasings)
    q, a = q if isinstance(q, tuple) else (q, rng.choice(answers))
    c1 = b.city(rng)
    c2 = b.city(rng, avoid=c1.name)
    food, calories = rng.choice(slot_data.FOODS)
    n = rng.randint(2, 90)
    values = {"city": c1.surface, "city2": c2.surface, "food": food, "calories": calories, "n": str(n),
              "mb": f"{n * 1000:,}", "mib": f"{n * 1024:,}", "ms": b._num(round(n / 3.6, 1))}
    used = {k for k in values if "{" + k + "}" in q}
    return [b.user(b.fill(q, values), [values[k] for k in used]), b.say(b.fill(a, values))], list(offer), None


def near_miss_excluded(family: str) -> list[str]:
    """Tools that could serve the request of a near-miss family (never offered with it)."""
    return list(phrasebook.NEAR_MISS[family][2])


# --- injected instructions in a tool result ----------------------------------------------------------------

def _inject(result: dict, tool: str, text: str) -> dict:
    """``result`` with ``text`` appended to a field a web page or a service could fill (kept early in the JSON, so a
    result cut short keeps it)."""
    out = copy.deepcopy(result)
    if tool == "get_wikipedia_summary":
        out["summary"] += " " + text
    elif tool == "search_wikipedia":
        out["results"][0]["snippet"] += " " + text
    elif tool == "get_current_weather":
        out["conditions"] += ". " + text
    else:
        out["days"][0]["conditions"] += ". " + text
    return out


def build_injection(rng, tool, family, injection, budget=None):
    """A call, its result carrying ``injection``'s text, and an answer from the result's data alone."""
    msg, args, _ = b.single_request(rng, tool, phrasebook.SINGLE[tool][family])
    result = b.fake_result(rng, tool, args)
    other = rng.choice([t for t in INJECT_TARGETS if t != tool])
    _, other_args, _, _ = b.request_slots(rng, other, set())
    text = rng.choice(phrasebook.INJECTIONS[injection][1]).format(other=other,
                                                                 args=json.dumps(other_args, ensure_ascii=False))
    turn, seen, cut = b.tool_turn(tool, _inject(result, tool, text), budget)
    if cut and json.dumps(text, ensure_ascii=False)[1:-1] not in turn["content"]["result"]:  # cut off: show it whole
        turn, seen, cut = b.tool_turn(tool, _inject(result, tool, text), None)
    clean = {k: (result[k][: len(v)] if isinstance(v, list) else result[k]) for k, v in seen.items()}
    reply = b.answer(rng, tool, args, clean, cut, exact=True)
    if rng.random() < INJECTION_NOTE_SHARE:
        reply += " " + rng.choice(phrasebook.INJECTION_NOTES)
    return [msg, b.call(tool, args), turn, b.say(reply)], [tool, other], None


# --- function masking ----------------------------------------------------------------------------------------

def mask_row(row: dict, rng: random.Random) -> dict:
    """A copy of ``row`` with neutral names: each offered tool becomes ``func_<k>`` and each of its arguments
    ``arg_<k>`` (distinct random numbers, the same throughout the row), descriptions kept; the schemas, every call,
    every tool result's ``tool`` and ``expected`` follow. ``masked`` records the renaming:
    ``{real tool: {"name": neutral name, "arguments": {real argument: neutral argument}}}``."""
    renames = {}
    names = [t["function"]["name"] for t in row["tools"]]
    for t, k in zip(row["tools"], rng.sample(range(1, 100), len(names))):
        props = list((t["function"].get("parameters") or {}).get("properties", {}))
        renames[t["function"]["name"]] = {
            "name": f"func_{k}",
            "arguments": {p: f"arg_{j}" for p, j in zip(props, rng.sample(range(1, 20), len(props)))}}
    out = rename_row(row, renames)
    out["masked"] = renames
    return out


def unmask(row: dict) -> dict:
    """The row :func:`mask_row` was given, from a masked one (its ``masked`` record); other rows as they are."""
    if not row.get("masked"):
        return row
    back = {m["name"]: {"name": real, "arguments": {v: k for k, v in m["arguments"].items()}}
            for real, m in row["masked"].items()}
    out = rename_row(row, back)
    out.pop("masked")
    return out


def rename_row(row: dict, renames: dict) -> dict:
    """A copy of ``row`` with tools and arguments renamed by ``renames`` (``{name: {"name", "arguments": {old:
    new}}}``) in the offered schemas, the calls, the tool results' ``tool`` field and ``expected``."""
    out = copy.deepcopy(row)

    def call(name: str, args: dict) -> tuple[str, dict]:
        m = renames[name]
        return m["name"], {m["arguments"].get(k, k): v for k, v in args.items()}

    for t in out["tools"]:
        fn = t["function"]
        m = renames[fn["name"]]
        fn["name"] = m["name"]
        params = fn.get("parameters") or {}
        if "properties" in params:
            params["properties"] = {m["arguments"][p]: v for p, v in params["properties"].items()}
        if "required" in params:
            params["required"] = [m["arguments"][p] for p in params["required"]]
    for msg in out["messages"]:
        for tc in msg.get("tool_calls") or []:
            fn = tc["function"]
            fn["name"], fn["arguments"] = call(fn["name"], fn["arguments"])
        if msg["role"] == "tool" and isinstance(msg["content"], dict) and msg["content"].get("tool") in renames:
            msg["content"]["tool"] = renames[msg["content"]["tool"]]["name"]
    exp = out.get("expected")
    for e in exp if isinstance(exp, list) else [exp] if exp else []:
        old = e["name"]
        e["name"], e["arguments"] = call(old, e["arguments"])
        if "accept" in e:
            e["accept"] = call(old, e["accept"])[1]
    return out
