"""Builders of the function-calling generator: one conversation per category, from a family and a seeded RNG.

Everything is offline: tool results are fabricated plausibly in the shape the real tools return (the pure
tools, ``convert_units`` and ``calculate``, are run for real) and wrapped as the agent wraps them
(``{"tool", "result", "note"}``, :func:`llamatune.protocol.tool_result_message`); final answers are grounded in them.
Builders return ``(messages, tool names that must be offered, expected)``; user turns carry a private
``_keep`` list (strings a paraphrase must keep), stripped before writing.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import string
from dataclasses import dataclass

from llamatune.data import funccall_slots as slot_data
from llamatune.data import funccall_templates as phrasebook

WEATHER = ("get_current_weather", "get_weather_forecast")
TZ_ALIASES = {"Europe/Kyiv": ["Europe/Kiev"], "Asia/Kolkata": ["Asia/Calcutta"]}
ERRORS = {"weather": ["The weather service did not answer in time; please try again in a moment.",
                      "The weather service is temporarily unavailable (HTTP 503)."],
          "wikipedia": ["Wikipedia did not answer in time; please try again in a moment.",
                        "Wikipedia is temporarily unavailable (HTTP 503)."]}


@dataclass
class City:
    name: str
    country: str
    tz: str
    surface: str
    accept: list


def slots_of(text: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(text) if f}


def fill(text: str, values: dict) -> str:
    return re.sub(r" {2,}", " ", text.format(**values)).strip()


def user(text: str, keep=()) -> dict:
    return {"role": "user", "content": text, "_keep": [k for k in keep if k]}


def call(name: str, args: dict) -> dict:
    return {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": name, "arguments": args}}]}


def say(text: str) -> dict:
    return {"role": "assistant", "content": text}


def expected(name: str, args: dict, accept: dict) -> dict:
    out = {"name": name, "arguments": args}
    accept = {k: v for k, v in accept.items() if v and k in args}
    if accept:
        out["accept"] = accept
    return out


def city(rng: random.Random, avoid=None) -> City:
    """A place and the spelling the user types; ``avoid``: a name or a collection of names not to draw."""
    avoid = {avoid} if isinstance(avoid, str) else set(avoid or ())
    name, country, tz, variants = rng.choice([c for c in slot_data.CITIES if c[0] not in avoid])
    surface = name if not variants or rng.random() < 0.5 else rng.choice(variants)
    if rng.random() < 0.1:
        surface = surface.lower()
    accept = [v for v in dict.fromkeys([*variants, f"{name}, {country}"]) if v != name]
    return City(name, country, tz, surface, accept)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def single_request(rng: random.Random, tool: str, phrasings: list[str], avoid_fahrenheit: bool = False):
    """A request that needs exactly one call of ``tool``: ``(user message, args, accept)``."""
    text = rng.choice(phrasings)
    values, args, accept, keep = request_slots(rng, tool, slots_of(text), avoid_fahrenheit)
    return user(fill(text, values), keep), args, accept


def request_slots(rng: random.Random, tool: str, slots: set[str], avoid_fahrenheit: bool = False, suffix: str = "",
                  avoid=()) -> tuple[dict, dict, dict, list]:
    """Slot values and the call they ask for: ``(values, args, accept, keep)``. ``suffix`` names this call's slots
    in a phrasing with several calls (``{city2}``, ``{value2} {src2} {dst2}``; the horizon and the temperature unit
    are the first call's); ``avoid``: places and titles the other calls of the phrasing use."""
    values, args, accept, keep = {}, {}, {}, []
    if tool in WEATHER or tool == "get_local_time":
        c = city(rng, avoid)
        values[f"city{suffix}"] = c.surface
        keep.append(c.surface)
        if tool == "get_local_time":
            args["timezone_name"] = c.tz
            accept["timezone_name"] = TZ_ALIASES.get(c.tz, [])
        else:
            args["location"] = c.name
            accept["location"] = c.accept
    for lang in ("", "_de", "_fr", "_es") if not suffix else ():
        if f"when{lang}" in slots:
            phrase, days = rng.choice(slot_data.WHEN_L[lang[1:]] if lang else slot_data.WHEN)
            values[f"when{lang}"] = phrase
            args["days"] = days
    if "unit" in slots and not suffix:
        u = "celsius" if avoid_fahrenheit or rng.random() < 0.3 else "fahrenheit"
        values["unit"] = rng.choice(slot_data.UNIT_PHRASES[u])
        args["unit"] = u
    if tool == "search_wikipedia":
        q = rng.choice([t for t in [*slot_data.TOPICS, *slot_data.SEARCHES] if t not in avoid])
        values[f"query{suffix}"] = q
        args["query"] = q
        keep.append(q)
        if "limit" in slots and not suffix:
            args["limit"] = rng.randint(2, 8)
            values["limit"] = str(args["limit"])
    if tool == "get_wikipedia_summary":
        t = rng.choice([t for t in slot_data.TOPICS if t not in avoid])
        values[f"topic{suffix}"] = t
        args["title"] = t
        keep.append(t)
    if tool == "convert_units":
        src, dst = rng.choice(slot_data.UNIT_PAIRS)
        value = rng.choice([rng.randint(1, 500), round(rng.uniform(0.5, 100), 1)])
        values.update({f"value{suffix}": _num(value), f"src{suffix}": rng.choice(slot_data.UNIT_WORDS[src]),
                       f"dst{suffix}": rng.choice(slot_data.UNIT_WORDS[dst])})
        args.update(value=value, from_unit=src, to_unit=dst)
        keep.append(_num(value))
    if tool == "calculate":
        a, b, c_ = rng.randint(2, 999), rng.randint(2, 99), rng.randint(2, 20)
        op1, op2 = rng.choice("+-*"), rng.choice(["/", "*", "+", "-"])
        expr = rng.choice([f"{a} {op1} {b}", f"({a} {op1} {b}) {op2} {c_}", f"{a} {op2} {b} {op1} {c_}"])
        values[f"expr{suffix}"] = expr
        args["expression"] = expr
        accept["expression"] = [expr.replace(" ", "")]
        keep.append(expr)
    return values, args, accept, keep


# --- fabricated tool results and grounded answers --------------------------------------------------------

def _deg(c: float, unit: str) -> float:
    return round(c * 9 / 5 + 32 if unit == "fahrenheit" else c, 1)


def _conditions(rng, celsius: float) -> str:
    """WMO conditions that fit the temperature (no snow in summer heat, no rain at -10 °C)."""
    wet = ["light snow", "snow", "fog"] if celsius < 1 else ["light drizzle", "light rain", "rain", "heavy rain",
                                                             "rain showers", "fog"]
    if celsius > 22:
        wet = ["rain showers", "thunderstorm"]
    return rng.choice(["clear sky", "mainly clear", "partly cloudy", "overcast", *wet])


def city_by_name(name: str):
    return next(c for c in slot_data.CITIES if c[0] == name)


def fake_result(rng: random.Random, tool: str, args: dict) -> dict:
    """A plausible result dict of ``tool`` for ``args``, in the shape the real tool returns."""
    base = dt.date(2025, 1, 1) + dt.timedelta(days=rng.randrange(700))
    if tool in WEATHER:
        name, country, _, _ = city_by_name(args["location"])
        unit = args.get("unit", "celsius")
        sym = "°F" if unit == "fahrenheit" else "°C"
        climate = rng.uniform(-10, 30)  # one climate per conversation; days drift around it
        if tool == "get_current_weather":
            t = round(climate, 1)
            return {"location": f"{name}, {country}", "time": f"{base}T{rng.randrange(24):02d}:{rng.choice([0, 15, 30, 45]):02d}",
                    "temperature": f"{_deg(t, unit)}{sym}", "feels_like": f"{_deg(t - rng.uniform(0, 4), unit)}{sym}",
                    "humidity": f"{rng.randint(25, 98)}%", "wind": f"{round(rng.uniform(0, 45), 1)} km/h",
                    "conditions": _conditions(rng, t)}
        days = []
        for i in range(args.get("days", 3)):
            lo = climate - 4 + rng.uniform(-3, 3)
            hi = lo + rng.uniform(3, 10)
            cond = _conditions(rng, (lo + hi) / 2)
            rain = cond not in ("clear sky", "mainly clear", "partly cloudy", "overcast", "fog")
            days.append({"date": str(base + dt.timedelta(days=i)), "min": f"{_deg(lo, unit)}{sym}",
                         "max": f"{_deg(hi, unit)}{sym}",
                         "precipitation": f"{round(rng.uniform(0.2, 25), 1) if rain else 0.0} mm", "conditions": cond})
        return {"location": f"{name}, {country}", "days": days}
    if tool == "search_wikipedia":
        best = slot_data.SEARCHES.get(args["query"], args["query"])
        others = rng.sample([t for t in slot_data.TOPICS if t != best], 2)
        return {"query": args["query"], "results": [{"title": t, "snippet": slot_data.TOPICS[t].split(";")[0][:160]}
                                                   for t in [best, *others][: args.get("limit", 5)]]}
    if tool == "get_wikipedia_summary":
        t = args["title"]
        return {"title": t, "summary": slot_data.TOPICS[t], "url": "https://en.wikipedia.org/wiki/" + t.replace(" ", "_")}
    if tool == "get_local_time":
        when = dt.datetime.combine(base, dt.time(rng.randrange(24), rng.randrange(60)))
        return {"timezone": args["timezone_name"], "local_time": when.strftime("%Y-%m-%d %H:%M"),
                "weekday": when.strftime("%A")}
    from llamatune.tools import all_tools  # the pure tools run for real

    return all_tools()[tool](**args)


def answer(rng: random.Random, tool: str, args: dict, result: dict, cut: bool = False, exact: bool = False) -> str:
    """A final answer grounded in ``result`` (only facts from it); ``cut``: the result was cut short (a forecast
    answer then says how many days it saw); ``exact``: numbers as the result writes them (a conversion's 0.123, not
    0.12), so the answer repeats a value of the result (the rows of the test split keep their rounded answers)."""
    if "error" in result:
        return rng.choice(phrasebook.ANSWERS["error"]).format(error=result["error"])
    f = dict(result)
    key = tool
    if tool == "get_weather_forecast":
        f["day_lines"] = "\n".join(f"- {d['date']}: {d['conditions']}, {d['min']} to {d['max']}, "
                                   f"{d['precipitation']} of precipitation" for d in result["days"])
        f["n"] = len(result["days"])
        key = "get_weather_forecast_cut" if cut else tool
    elif tool == "search_wikipedia":
        f.update(titles=", ".join(r["title"] for r in result["results"]), title=result["results"][0]["title"],
                 snippet=result["results"][0]["snippet"])
    elif tool == "get_local_time":
        f.update(clock=result["local_time"].split()[1], city=next(c[0] for c in slot_data.CITIES if c[2] == args["timezone_name"]))
    elif tool == "convert_units":
        f.update(src=slot_data.UNIT_WORDS[args["from_unit"]][0], dst=slot_data.UNIT_WORDS[args["to_unit"]][0],
                 value=_num(args["value"]), result=exact_number(result["result"]) if exact else
                 _num(round(result["result"], 2)))
    elif tool == "calculate":
        f["result"] = exact_number(result["result"]) if exact else \
            _num(round(result["result"], 6)) if isinstance(result["result"], float) else result["result"]
    return rng.choice(phrasebook.ANSWERS[key]).format(**f)


def exact_number(x) -> str:
    """A number as the tool result's JSON writes it."""
    return json.dumps(x)


def approx_tokens(text: str) -> int:
    """A tokenizer-free token count: letter runs of up to 6, single digits, single punctuation marks. On tool-result
    JSON it counts 1.1-1.35x SmolLM2's tokens and 1.2-1.5x Llama 3.2's, so a budget in these is never exceeded in
    theirs (the generator stays model-free and deterministic)."""
    return len(_PIECE.findall(text))


_PIECE = re.compile(r"[^\W\d_]{1,6}|\d|[^\w\s]")


def visible_part(result: dict, text: str) -> dict:
    """What of ``result`` survives in ``text`` (its JSON cut short): the list items and the fields whose JSON appears
    whole; an answer grounded in this says nothing the cut removed."""
    out = {}
    for k, v in result.items():
        if isinstance(v, list):
            out[k] = [x for x in v if json.dumps(x, ensure_ascii=False) in text]
        elif f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" in text:
            out[k] = v
    return out


def tool_turn(tool: str, result: dict, budget: int | None = None) -> tuple[dict, dict, bool]:
    """``(turn, visible result, cut)``: the result as the agent puts it in the conversation (``{"tool", "result" |
    "error", "note"}``); with ``budget`` (approximate tokens, :func:`approx_tokens`) a longer result is cut the way
    the agent cuts one (:func:`llamatune.protocol.cut_tool_result`) and only its visible part is left to answer from."""
    from llamatune.protocol import cut_tool_result, tool_result_message

    if "error" in result:
        return tool_result_message(tool, error=result["error"]), result, False
    if budget is None:
        return tool_result_message(tool, result), result, False
    turn, cut = cut_tool_result(tool, result, budget, approx_tokens)
    seen = visible_part(result, turn["content"]["result"]) if cut else result
    if cut and not all(seen.get(k) for k in ("days", "results") if k in result):
        raise ValueError(f"result budget {budget} leaves no item of the {tool} result visible")
    return turn, seen, cut


def exchange(rng: random.Random, tool: str, args: dict, errors: bool = False, budget: int | None = None) -> list[dict]:
    """``[call, tool result, grounded answer]`` for a call already decided (``budget``: see :func:`tool_turn`)."""
    if errors and tool in (*WEATHER, "search_wikipedia", "get_wikipedia_summary") and rng.random() < 0.1:
        result = {"error": rng.choice(ERRORS["weather" if tool in WEATHER else "wikipedia"])}
    else:
        result = fake_result(rng, tool, args)
    turn, seen, cut = tool_turn(tool, result, budget)  # lean rows (a budget) also answer with exact numbers
    return [call(tool, args), turn, say(answer(rng, tool, args, seen, cut, exact=budget is not None))]


# --- per-category conversations -------------------------------------------------------------------------

def build_single(rng, tool, family):
    msg, args, accept = single_request(rng, tool, phrasebook.SINGLE[tool][family])
    return [msg, call(tool, args)], [tool], expected(tool, args, accept)


def build_tool_result(rng, tool, family, budget=None):
    msg, args, _ = single_request(rng, tool, phrasebook.SINGLE[tool][family])
    return [msg, *exchange(rng, tool, args, errors=True, budget=budget)], [tool], None


def build_follow_up(rng, first_tool, first_family, family, budget=None):
    """A first exchange with ``first_tool``, then the follow-up ``family`` (its target is the last turn)."""
    _, kind, phrasings = phrasebook.FOLLOW_UPS[family]
    for _ in range(50):  # draw a first request the follow-up can change (e.g. not already in Fahrenheit)
        msg, args, accept = single_request(rng, first_tool, phrasebook.SINGLE[first_tool][first_family],
                                           avoid_fahrenheit=kind == "unit")
        if kind != "otherunit" or [u for u in slot_data.SAME_DIMENSION[args["from_unit"]] if u != args["to_unit"]]:
            break
    text = rng.choice(phrasings)
    values, keep, tool, new = {}, [], first_tool, dict(args)
    if kind in ("tomorrow", "week"):
        tool = "get_weather_forecast"
        new = {"location": args["location"], "days": 2 if kind == "tomorrow" else 7,
               **({"unit": args["unit"]} if "unit" in args else {})}
    elif kind == "othercity":
        c = city(rng, avoid=place_of(args))
        values["city"] = c.surface
        keep.append(c.surface)
        if tool == "get_local_time":
            new["timezone_name"] = c.tz
            accept = {"timezone_name": TZ_ALIASES.get(c.tz, [])}
        else:
            new["location"] = c.name
            accept = {**accept, "location": c.accept}
    elif kind == "unit":
        new["unit"] = "fahrenheit"
    elif kind == "otherunit":
        dst = rng.choice([u for u in slot_data.SAME_DIMENSION[args["from_unit"]] if u != args["to_unit"]])
        values["dst"] = rng.choice(slot_data.UNIT_WORDS[dst])
        new["to_unit"] = dst
    elif kind == "othertopic":
        new["title"] = rng.choice([t for t in slot_data.TOPICS if t != args["title"]])
        values["topic"] = new["title"]
        keep.append(new["title"])
    messages = [msg, *exchange(rng, first_tool, args, budget=budget), user(fill(text, values), keep)]
    if kind == "thanks":
        return [*messages, say(rng.choice(phrasebook.THANKS_ANSWERS))], [first_tool], None
    return [*messages, call(tool, new)], [first_tool, tool], expected(tool, new, accept)


def place_of(args: dict) -> str | None:
    if "location" in args:
        return args["location"]
    return next((c[0] for c in slot_data.CITIES if c[2] == args.get("timezone_name")), None)


def build_clarify(rng, family):
    from llamatune.protocol import MODES

    _, offer, phrasings, answers = phrasebook.CLARIFY[family]
    text, reply = rng.choice(phrasings), rng.choice(answers)
    values = {}
    if "amb" in slots_of(text):
        amb = rng.choice(list(slot_data.AMBIGUOUS_PLACES))
        opts = slot_data.AMBIGUOUS_PLACES[amb]
        values.update(amb=amb, options=", ".join(opts[:-1]) + " or " + opts[-1])
    for slot, options in (("cond", slot_data.CONDITION_WORDS), ("person", slot_data.PEOPLE),
                          ("subject", slot_data.SUBJECTS), ("when", [w for w, _ in slot_data.WHEN])):
        if slot in slots_of(text):
            values[slot] = rng.choice(options)
    if "value" in slots_of(text):
        src, dst = rng.choice([p for p in slot_data.UNIT_PAIRS if p[0] not in ("celsius", "fahrenheit")])
        others = [slot_data.UNIT_WORDS[u][0] for u in slot_data.SAME_DIMENSION[dst]][:2]
        values.update(value=_num(rng.randint(2, 300)), dst=rng.choice(slot_data.UNIT_WORDS[dst]),
                      examples=" or ".join(others))
    must = MODES.get(offer) or [offer]
    return [user(fill(text, values), [values.get("amb"), values.get("value")]), say(fill(reply, values))], must, None


def build_no_tool(rng, family):
    _, kind, key, _ = phrasebook.NO_TOOL[family]
    if kind == "fact":
        pair = rng.choice(slot_data.FACTS[key])
        qs, a = phrasebook.FACT_PHRASINGS[key]
        q, a = rng.choice(qs).format(*pair), a.format(*pair)
    elif kind == "qa":
        pairs = slot_data.FACTS[key]  # a key two families share (…-a, …-b) is split in halves between them
        pairs = pairs[0::2] if family.endswith("-a") else pairs[1::2] if family.endswith("-b") else pairs
        q, a = rng.choice(pairs)
    elif kind == "chitchat":
        q, a = rng.choice(slot_data.CHITCHAT[key][0]), rng.choice(slot_data.CHITCHAT[key][1])
    elif kind == "task":
        q, a = rng.choice(slot_data.TASKS[key])
    else:
        x, y = rng.randint(11, 999), rng.randint(2, 99)
        if key in ("sub", "word"):
            x, y = max(x, y + 1), min(x, y)
        if key == "div":  # a whole quotient
            x = y * rng.randint(2, 40)
        r = {"add": x + y, "sub": x - y, "mult": x * y, "percent": _num(round(x / 10, 1)), "word": x - y,
             "div": x // y}[key]
        qs, a = phrasebook.MATH_PHRASINGS[key]
        q, a = rng.choice(qs).format(a=x, b=y), a.format(a=x, b=y, r=r)
    must = ["get_current_weather", "get_weather_forecast"] if kind == "qa" and key.startswith("concept") else []
    return [user(q), say(a)], must, None
