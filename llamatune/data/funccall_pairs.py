"""Contrastive pairs (README part 10): a request that needs a call, next to a minimally different request that needs a
question back, the two in the same training split with the same offered tools.

Every test clarify item the demo's model got wrong (0/13 in parts 6-9) was a request it answered with a call: the
weather in "Springfield" (which one?), "Convert 95 to miles" (95 what?). Its training rows taught asking with their own
phrasings, and calling with others; nothing showed it that one word decides between the two. A pair does:

* ``ambiguous``: a weather request of a training single-call family filled with one reading of an ambiguous place
  ("Springfield, Illinois") → the call; the same phrasing with the bare name ("Springfield") → which one?;
* ``unit``: a conversion request of a training single-call family ("Convert 95 km to miles.") → the call; the same
  phrasing without its source unit ("Convert 95 to miles.") → which unit?

A pair's phrasing is a training family's and is never a near-duplicate of a validation or test clarify phrasing
(:func:`eligible`, word-level similarity below :data:`NEAR_DUPLICATE`), so the held-out clarify families stay held
out. A pair's call replaces a single call of its own tool (:func:`next_pair`), so the tools' shares stay. The rows
are built by :func:`build_pair`; :func:`llamatune.data.funccall_rows.build_split` places them.
"""

from __future__ import annotations

import difflib
import random
import re

from llamatune.data import funccall_build as b
from llamatune.data import funccall_slots as slot_data
from llamatune.data import funccall_templates as phrasebook

KINDS = {"get_current_weather": "ambiguous", "get_weather_forecast": "ambiguous", "convert_units": "unit"}
# the clarify family whose answers a pair's question uses (both are training-only families, never held out)
ANSWERS = {"ambiguous": "cl-ambiguous-b", "unit": "cl-nounit-b"}
NEAR_DUPLICATE = 0.7  # difflib ratio over words, slots as one token: at or above it, a phrasing is too close
_OTHER_LANGUAGE = re.compile(r"-(de|fr|es|no)$")  # the questions are English


def _words(text: str) -> list[str]:
    return re.sub(r"\{[a-z_0-9]+\}", " SLOT ", text.lower()).replace("?", " ").replace(".", " ").replace(",", " ") \
        .replace(";", " ").split()


def similarity(a: str, b_: str) -> float:
    """Word-level similarity of two phrasings in [0, 1] (slots count as one word)."""
    return difflib.SequenceMatcher(None, _words(a), _words(b_)).ratio()


def ask_phrasing(tool: str, phrasing: str) -> str | None:
    """The phrasing of the question side: the place slot kept (filled with a bare ambiguous name), or the source unit
    removed; ``None`` where the phrasing has no such slot."""
    kind = KINDS.get(tool)
    if kind == "ambiguous":
        return phrasing if "{city}" in phrasing else None
    if kind == "unit" and "{src}" in phrasing:
        return re.sub(r"\s*\{src\}", "", phrasing)
    return None


def held_out_clarify(split: dict[str, str]) -> list[str]:
    """The phrasings of the clarify families that are not training families in ``split`` (validation, test, and
    those no row of this split draws from, such as the breadth families without ``breadth``)."""
    return [p for fam, (_, _, phrasings, _) in phrasebook.CLARIFY.items() if split.get(fam) != "train"
            for p in phrasings]


def eligible(single: dict[str, list[str]], split: dict[str, str]) -> list[tuple[str, str, str]]:
    """``(tool, family, phrasing)`` of every phrasing a pair may use: a training family's (``single``: tool → its
    training families), English, with the slot a pair changes, and its question side below :data:`NEAR_DUPLICATE`
    of every held-out clarify phrasing."""
    held = held_out_clarify(split)
    out = []
    for tool in KINDS:
        for fam in single.get(tool, []):
            if _OTHER_LANGUAGE.search(fam):
                continue
            for phrasing in phrasebook.SINGLE[tool][fam]:
                ask = ask_phrasing(tool, phrasing)
                if ask and all(similarity(ask, h) < NEAR_DUPLICATE for h in held):
                    out.append((tool, fam, phrasing))
    return out


def next_pair(rng: random.Random, usable: list[tuple[str, str, str]], calls: dict[str, list[int]]):
    """A reason drawn uniformly among those with a single call left in ``calls`` (tool → positions of its single-call
    rows), the next such call's position (taken from ``calls``) and a phrasing of its tool from ``usable``:
    ``(position, tool, family, phrasing)``; ``None`` when no call is left."""
    kinds = sorted({KINDS[t] for t, at in calls.items() if at})
    if not kinds:
        return None
    kind = rng.choice(kinds)
    tool = min((t for t in calls if calls[t] and KINDS[t] == kind), key=lambda t: calls[t][0])
    return (calls[tool].pop(0), *rng.choice([u for u in usable if u[0] == tool]))


def build_pair(rng: random.Random, tool: str, family: str, phrasing: str):
    """``(call messages, question messages, tools that must be offered, expected call)`` of one pair."""
    kind = KINDS[tool]
    while True:
        values, args, accept, keep = b.request_slots(rng, tool, b.slots_of(phrasing))
        if kind == "ambiguous" or args["from_unit"] not in ("celsius", "fahrenheit"):
            break  # a temperature's unit is not asked for (build_clarify draws the same way)
    _, _, _, answers = phrasebook.CLARIFY[ANSWERS[kind]]
    reply = rng.choice(answers)
    if kind == "ambiguous":
        amb = rng.choice(sorted(slot_data.AMBIGUOUS_PLACES))
        readings = slot_data.AMBIGUOUS_PLACES[amb]
        reading = rng.choice(readings)
        keep = [k for k in keep if k != values["city"]] + [reading]
        values["city"], args["location"] = reading, reading
        accept.pop("location", None)
        asked = {**values, "city": amb}
        question = b.fill(reply, {"amb": amb, "options": ", ".join(readings[:-1]) + " or " + readings[-1]})
        ask_keep = [amb]
    else:
        dst = args["to_unit"]
        examples = " or ".join(slot_data.UNIT_WORDS[u][0] for u in slot_data.SAME_DIMENSION[dst][:2])
        asked = values
        question = b.fill(reply, {"value": values["value"], "examples": examples})
        ask_keep = [values["value"]]
    call_msgs = [b.user(b.fill(phrasing, values), keep), b.call(tool, args)]
    ask_msgs = [b.user(b.fill(ask_phrasing(tool, phrasing), asked), ask_keep), b.say(question)]
    return call_msgs, ask_msgs, [tool], b.expected(tool, args, accept)
