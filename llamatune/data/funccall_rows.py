"""Rows of the function-calling generator: categories and their shares, the offered tools, and one split's rows
(deterministic for a seed); the template-family split is :mod:`llamatune.data.funccall_split`. Files, the card and
the CLI are in :mod:`llamatune.data.funccall`; the conversations themselves in
:mod:`~llamatune.data.funccall_build` and :mod:`~llamatune.data.funccall_more`.

A :class:`Style` dresses the rows of a split: the test and validation rows are dressed as they always were (no
system prompt, up to 3 distractor tools, whole tool results), so the test items of the five original categories are
the same rows for the same seed and ``n`` as before; training rows are lean (:data:`TRAIN_STYLE`).
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from dataclasses import dataclass, replace

from llamatune.data import funccall_build as builders
from llamatune.data import funccall_foreign as foreign
from llamatune.data import funccall_more as more
from llamatune.data import funccall_pairs as pairs
from llamatune.data import funccall_split as splits
from llamatune.data import funccall_templates as phrasebook

ORIGINAL_CATEGORIES = ("single_call", "no_tool", "tool_result", "clarify", "multi_turn")
NEW_CATEGORIES = ("near_miss", "injection", "parallel", "parallel_result")
CATEGORIES = ORIGINAL_CATEGORIES + NEW_CATEGORIES
# the five original categories in their original shares: the first part of the test split, and the ICL examples
ORIGINAL_PROPORTIONS = {"single_call": 0.35, "no_tool": 0.25, "tool_result": 0.15, "clarify": 0.10, "multi_turn": 0.15}
# training rows: ~30% no call needed (no_tool, near_miss, clarify), ~33% an answer after tool results
DEFAULT_PROPORTIONS = {"single_call": 0.20, "no_tool": 0.13, "tool_result": 0.16, "clarify": 0.07, "multi_turn": 0.12,
                       "near_miss": 0.10, "injection": 0.06, "parallel": 0.09, "parallel_result": 0.07}
SINGLE_WEIGHTS = {"get_current_weather": 3, "get_weather_forecast": 3, "search_wikipedia": 2,
                  "get_wikipedia_summary": 2, "get_local_time": 1.5, "convert_units": 1.5, "calculate": 1}


@dataclass(frozen=True)
class Style:
    """How a split's rows are dressed. ``system_share``: share of the rows offered exactly an agent mode's tools that
    start with the agent's system prompt; ``max_distractors``: unrelated tools offered beside the needed one (beside
    two or more needed ones: ``max_distractors_several``); ``result_budget``: tool results longer than this many
    approximate tokens are cut the way the agent cuts them (``None``: whole); ``masking``: share of the rows offered
    tools that get neutral tool and argument names (:func:`~llamatune.data.funccall_more.mask_row`); ``row_budget``:
    distractors are left out of a row whose conversation and schemas would pass this many approximate tokens
    (:func:`~llamatune.data.funccall_build.approx_tokens`); an agent mode's tools and system prompt never are;
    ``foreign_share``: share of the rows with distractors (near-miss and injection rows excepted) whose distractors
    are foreign tools (:mod:`~llamatune.data.funccall_foreign`); ``foreign_calls``: share of the single-call rows that
    ask for a foreign tool; ``pairs``: share of the clarify rows built as contrastive pairs with a single-call row
    (:mod:`~llamatune.data.funccall_pairs`; training rows only)."""
    system_share: float = 0.0
    max_distractors: int = 3
    max_distractors_several: int = 3
    result_budget: int | None = None
    masking: float = 0.0
    row_budget: int | None = None
    foreign_share: float = 0.0
    foreign_calls: float = 0.0
    pairs: float = 0.0


EVAL_STYLE = Style()  # test and validation rows, as the test rows always were
ORIGINAL_TRAIN_STYLE = Style(system_share=0.5)  # the training rows before lean rows (the ICL examples use these)
# lean training rows: one distractor at most (none beside two needed tools: the choice is there already, nor where
# it would make the row long), results cut at 160 approximate tokens (~130 of SmolLM2's), 30% of the rows masked; no
# foreign tools (train_style(foreign=0.5), tried 2026-12-05: validation and BFCL both worse, README part 4)
TRAIN_STYLE = Style(system_share=0.5, max_distractors=1, max_distractors_several=0, result_budget=160, masking=0.3,
                    row_budget=620)
FOREIGN_CALLS_PER_SHARE = 0.4  # train_style(foreign=s): s of the distractor rows, 0.4 s of the single calls
AGENT_SYSTEM_SHARE = TRAIN_STYLE.system_share


def train_style(masking: float | None = None, foreign: float | None = None, pairs: float | None = None) -> Style:
    """:data:`TRAIN_STYLE`, with another masking share, foreign tools (``foreign``: the share of the rows with foreign
    distractors; :data:`FOREIGN_CALLS_PER_SHARE` × it of the single calls ask for one), or ``pairs``, when given."""
    style = TRAIN_STYLE
    for name, value in (("masking", masking), ("foreign", foreign), ("pairs", pairs)):
        if value is not None and not 0 <= value <= 1:
            raise ValueError(f"{name} must be a share in [0, 1], got {value!r}")
    if masking is not None:
        style = replace(style, masking=masking)
    if foreign is not None:
        style = replace(style, foreign_share=foreign, foreign_calls=FOREIGN_CALLS_PER_SHARE * foreign)
    return replace(style, pairs=pairs) if pairs is not None else style


def category_counts(n: int, proportions: dict | None = None) -> dict[str, int]:
    """Split ``n`` over the categories by ``proportions`` (largest remainder; missing categories get 0)."""
    props = dict(DEFAULT_PROPORTIONS if proportions is None else proportions)
    for k, v in props.items():
        if k not in CATEGORIES:
            raise ValueError(f"proportions: unknown category {k!r} (known: {', '.join(CATEGORIES)})")
        if not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"proportions: {k} must be a number >= 0, got {v!r}")
    total = sum(props.values())
    if total <= 0:
        raise ValueError("proportions: at least one category needs a positive share")
    raw = {c: n * props.get(c, 0) / total for c in CATEGORIES}
    counts = {c: math.floor(r) for c, r in raw.items()}
    for c in sorted(CATEGORIES, key=lambda c: (-(raw[c] - counts[c]), CATEGORIES.index(c)))[: n - sum(counts.values())]:
        counts[c] += 1
    return counts


# --- rows ------------------------------------------------------------------------------------------------

def _size(messages: list[dict], schemas: list[dict]) -> int:
    return builders.approx_tokens(json.dumps([messages, [s["function"] for s in schemas]], ensure_ascii=False))


def _toolset(rng: random.Random, must: list[str], exclude=(), style: Style = EVAL_STYLE,
             messages: list[dict] = (), frng: random.Random | None = None) -> list[dict]:
    """The offered schemas: ``must`` + distractors (≥1 tool in all), or an agent mode's set, shuffled; with the
    style's ``row_budget``, distractors that would make the row (``messages`` + schemas) pass it are left out. With
    ``frng`` (a row's own stream), a ``foreign_share`` of the rows get foreign distractors instead of the project's
    (at least one); ``rng`` draws as it would without them, so the other rows stay the same."""
    from llamatune.protocol import MODES
    from llamatune.tools import all_tools

    schemas = {n: t.schema for n, t in all_tools().items()}
    modes = [m for m in MODES.values() if m and set(must) <= set(m) and not set(m) & set(exclude)]
    if modes and rng.random() < 0.3:  # the agent's context: a mode's tools are never left out
        names = list(rng.choice(modes))
        must = names
    else:
        pool = [n for n in schemas if n not in must and n not in exclude]
        most = style.max_distractors if len(set(must)) < 2 else style.max_distractors_several
        names = list(dict.fromkeys(must)) + rng.sample(pool, rng.randint(0 if must else 1, max(0 if must else 1,
                                                                                                min(most, len(pool)))))
        k = max(1 if most else 0, len(names) - len(set(must)))  # none beside several needed tools if most is 0
        if frng is not None and style.foreign_share and k and frng.random() < style.foreign_share:
            drawn = {f["function"]["name"]: f for f in foreign.distractors(frng, k)}
            schemas.update(drawn)
            names = [*dict.fromkeys(must), *drawn]
    keep = set(must) or {names[0]}
    while style.row_budget and set(names) - keep and _size(messages, [schemas[n] for n in names]) > style.row_budget:
        names.remove([n for n in names if n not in keep][-1])
    rng.shuffle(names)
    return [schemas[n] for n in names]


def _foreign_call(frng: random.Random, style: Style) -> tuple[list[dict], list[dict], dict, list[str]]:
    """A single-call row that needs a foreign tool, beside one of the project's tools (or, in a ``foreign_share``
    of the rows, another foreign one): ``(messages, tools, expected, families)``."""
    from llamatune.tools import all_tools

    name = frng.choice(sorted(foreign.FOREIGN))
    text, args = foreign.request(frng, name)
    messages = [builders.user(text, [str(v) for v in args.values()]), builders.call(name, args)]
    if frng.random() < style.foreign_share:
        other = foreign.schema(frng.choice([n for n in sorted(foreign.FOREIGN) if n != name]))
    else:
        other = all_tools()[frng.choice(sorted(all_tools()))].schema
    tools = [foreign.schema(name), other]
    frng.shuffle(tools)
    return messages, tools, builders.expected(name, args, {}), [foreign.family(name)]


def _pick(rng: random.Random, by_group: dict[str, list[str]]) -> str:
    """A family: a group uniformly, then a family of it uniformly (so small groups are not drowned)."""
    group = rng.choice(sorted(by_group))
    return rng.choice(by_group[group])


def agent_system_prompt(tool_names: list[str]) -> str | None:
    """The system prompt the agent uses with exactly these tools (a mode's set), else ``None``."""
    from llamatune.protocol import mode_of, system_prompt

    mode = mode_of(tool_names)
    return system_prompt(mode, tool_names) if mode else None


def _single(rng, fams, weights=SINGLE_WEIGHTS):
    weights = {t: w for t, w in weights.items() if fams["single"][t]}  # the validation fold lacks a tool or two
    tool = rng.choices(list(weights), weights=list(weights.values()))[0]
    return tool, rng.choice(fams["single"][tool])


def _row(rng: random.Random, category: str, fams: dict, style: Style = EVAL_STYLE,
         frng: random.Random | None = None) -> dict:
    exclude: list[str] = []
    budget = style.result_budget
    if category in ("near_miss", "injection"):
        frng = None  # a foreign tool could serve what a near-miss row declines; injections keep their own tools
    if category == "single_call" and frng is not None and style.foreign_calls and frng.random() < style.foreign_calls:
        messages, tools, exp, used = _foreign_call(frng, style)
        return {"messages": messages, "tools": tools, "category": category, "template_id": used[-1],
                "expected": exp, "families": used}
    if category in ("single_call", "tool_result"):
        tool, family = _single(rng, fams)
        if category == "single_call":
            messages, must, exp = builders.build_single(rng, tool, family)
        else:
            messages, must, exp = builders.build_tool_result(rng, tool, family, budget)
        used = [family]
    elif category == "multi_turn":
        family = rng.choice(fams["follow_up"])
        first_tool = rng.choice([t for t in phrasebook.FOLLOW_UPS[family][0] if fams["single"][t]])
        first = rng.choice(fams["single"][first_tool])
        messages, must, exp = builders.build_follow_up(rng, first_tool, first, family, budget)
        used = [first, family]
    elif category == "clarify":
        family = _pick(rng, fams["clarify"])
        messages, must, exp = builders.build_clarify(rng, family)
        used = [family]
    elif category == "no_tool":
        family = _pick(rng, fams["no_tool"])
        exclude = phrasebook.NO_TOOL[family][3]
        messages, must, exp = builders.build_no_tool(rng, family)
        used = [family]
    elif category == "near_miss":
        family = _pick(rng, fams["near_miss"])
        exclude = more.near_miss_excluded(family)
        messages, must, exp = more.build_near_miss(rng, family)
        used = [family]
    elif category == "injection":
        tool, family = _single(rng, fams, more.INJECT_WEIGHTS)
        injection = _pick(rng, fams["injection"])
        messages, must, exp = more.build_injection(rng, tool, family, injection, budget)
        used = [family, injection]
    else:  # parallel, parallel_result
        family = _pick(rng, fams["parallel"])
        if category == "parallel":
            messages, must, exp = more.build_parallel(rng, family)
        else:
            messages, must, exp = more.build_parallel_result(rng, family, budget)
        used = [family]
    tools = _toolset(rng, must, exclude, style, messages, frng)
    system = agent_system_prompt([t["function"]["name"] for t in tools])
    if system and rng.random() < style.system_share:  # the agent's own prompt, so training matches serving
        messages = [{"role": "system", "content": system}, *messages]
    return {"messages": messages, "tools": tools, "category": category, "template_id": used[-1], "expected": exp,
            "families": used}


def _families_of(split: str, assign: dict[str, str]) -> dict:
    groups = splits.family_groups()
    mine = [f for f in groups if assign.get(f) == split]
    fams = {"single": {t: [f for f in phrasebook.SINGLE[t] if f in mine] for t in phrasebook.SINGLE},
            "follow_up": [f for f in phrasebook.FOLLOW_UPS if f in mine]}
    for key, book in (("clarify", phrasebook.CLARIFY), ("no_tool", phrasebook.NO_TOOL),
                      ("near_miss", phrasebook.NEAR_MISS), ("parallel", phrasebook.PARALLEL),
                      ("injection", phrasebook.INJECTIONS)):
        fams[key] = defaultdict(list)
        for f in mine:
            if f in book:
                fams[key][groups[f]].append(f)
    return fams


def build_split(split: str, n: int, seed: int, proportions: dict | None = None, test_fraction: float = 0.2,
                style: Style | None = None, stream: str | None = None, val_fraction: float = 0.0,
                breadth: bool = False) -> list[dict]:
    """``n`` rows of one split, deterministic for ``seed``: ``"train"`` and ``"test"`` draw from their own template
    families; ``"val"`` from the validation fold when ``val_fraction`` > 0 (families held out of training, see
    :func:`~llamatune.data.funccall_split.split_families`; ``"train"`` then leaves them out), else from the training
    families (the in-family validation of the README's parts 1-5; rows never equal to training rows only by chance:
    the caller drops repeated prompts). ``proportions``: default the five original categories in their original
    shares; ``style``: default :data:`ORIGINAL_TRAIN_STYLE` for train, :data:`EVAL_STYLE` otherwise; ``stream`` names
    the random stream and the ids (``fc-<stream>-00000``; default the split), so a second set of the same split
    (``"test-new"``) is independent of the first. User turns keep their private ``_keep`` lists (see
    :func:`strip_private`). ``breadth=True`` adds the :data:`~llamatune.data.funccall_split.BREADTH` families to the
    training families (the validation fold rejected it, README part 9; without them the training rows are those of
    parts 6-8; the validation and test rows are the same either way)."""
    if split not in ("train", "test", "val"):
        raise ValueError(f"split must be train, test or val, got {split!r}")
    style = style or (ORIGINAL_TRAIN_STYLE if split == "train" else EVAL_STYLE)
    if style.pairs and split != "train":
        raise ValueError(f"contrastive pairs are training rows; the {split} split has none")
    name = stream or split
    rng = random.Random(f"funccall:{seed}:{name}")
    fold = split if split != "val" or val_fraction else "train"
    assign = splits.split_for(test_fraction, val_fraction, breadth)
    fams = _families_of(fold, assign)
    order = [c for c, k in category_counts(n, ORIGINAL_PROPORTIONS if proportions is None else proportions).items()
             for _ in range(k)]
    rng.shuffle(order)
    rows = []
    for i, category in enumerate(order):
        frng = random.Random(f"funccall:{seed}:{name}:foreign:{i}") if style.foreign_share or style.foreign_calls \
            else None  # its own stream, as the masking's
        rows.append({"id": f"fc-{name}-{i:05d}", **_row(rng, category, fams, style, frng)})
    if style.pairs:  # after every row is drawn, so the other rows stay the same
        _pair_up(rows, style, fams, assign, f"funccall:{seed}:{name}")
    for i, row in enumerate(rows):
        mask_rng = random.Random(f"funccall:{seed}:{name}:mask:{row.pop('_mask_as', i)}")  # own stream; a pair's alike
        if style.masking and row["category"] != "injection" and mask_rng.random() < style.masking:
            rows[i] = more.mask_row(row, mask_rng)
    return rows


def _pair_up(rows: list[dict], style: Style, fams: dict, assign: dict, stream: str) -> None:
    """Replace ``round(pairs × clarify rows)`` clarify rows and as many single calls by contrastive pairs, each reason
    as often: a call, in place of the next single call of its own tool (the tools' shares stay), and its question
    twin; same tools, system prompt and masking; each pair from its own stream."""
    usable = pairs.eligible(fams["single"], assign)
    asks = [i for i, r in enumerate(rows) if r["category"] == "clarify"]
    calls = {t: [i for i, r in enumerate(rows) if r["category"] == "single_call" and r["expected"]["name"] == t]
             for t in {u[0] for u in usable}}
    for j in range(round(style.pairs * len(asks))):
        rng = random.Random(f"{stream}:pair:{j}")
        if (picked := pairs.next_pair(rng, usable, calls)) is None:
            break
        at, tool, family, phrasing = picked
        call_msgs, ask_msgs, must, exp = pairs.build_pair(rng, tool, family, phrasing)
        tools = _toolset(rng, must, (), style, call_msgs)
        system = agent_system_prompt([t["function"]["name"] for t in tools])
        head = [{"role": "system", "content": system}] if system and rng.random() < style.system_share else []
        for i, cat, msgs, e in ((at, "single_call", call_msgs, exp), (asks[j], "clarify", ask_msgs, None)):
            rows[i] = {"id": rows[i]["id"], "messages": [*head, *msgs], "tools": tools, "category": cat,
                       "template_id": family, "expected": e, "families": [family], "_mask_as": at}


def strip_private(rows: list[dict]) -> list[dict]:
    for row in rows:
        for m in row["messages"]:
            m.pop("_keep", None)
    return rows
