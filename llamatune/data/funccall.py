"""Synthetic function-calling dataset: deterministic for a seed, split by template family, offline.

    llamatune data funccall --out data/funccall --n 2000 --seed 0
    llamatune data funccall --out DIR --n 2000 --proportions single_call=0.4,no_tool=0.3,tool_result=0.1,clarify=0.1,multi_turn=0.1
    llamatune data funccall --out DIR --n 2000 --paraphrase-endpoint http://127.0.0.1:8000/v1 --paraphrase-model M

Writes ``DIR/train.jsonl``, ``DIR/eval.jsonl`` (the held-out test split), ``DIR/card.md`` (counts per
category and split) and ``DIR/manifest.json`` (seed, proportions, families per split, row ids, hashes).
Each row is ``{"id", "messages", "tools", "category", "template_id", "expected", "families", "hash"}``: ``messages`` in
the HF format (calls as ``tool_calls``, results as ``{"role": "tool", "content": {...}}``), ``tools`` the
offered schemas (the needed tools plus 0-3 distractors, or an agent mode's set), ``expected`` the target
(the last assistant turn): ``{"name", "arguments"[, "accept"]}`` for a call (``accept``: other spellings
the scorer accepts per argument), ``null`` for a text answer. Categories:

* ``single_call``: one call is needed (several phrasings, languages, spellings, units, horizons);
* ``no_tool``: tools are offered but none serves the request (chit-chat, knowledge, maths, tasks);
* ``tool_result``: after the call and its result (a ``tool`` turn), a grounded answer, no second call;
* ``clarify``: a required argument is missing or ambiguous, so the answer is a question;
* ``multi_turn``: a follow-up ("and tomorrow?") after a first exchange; mostly a new call.

Half of the training rows whose tools are exactly an agent mode's set start with the agent's system prompt
(:func:`llamatune.protocol.system_prompt`: the role + the tool-data rule), and tool results are wrapped as the agent
wraps them, so the fine-tune sees what it will be served; test rows have no system prompt (Meta's official
format, where the base model over-calls). Train and test never share a template family. ``--paraphrase-endpoint`` paraphrases *training* user turns
with any OpenAI-compatible server (cached in ``DIR/paraphrase_cache.jsonl``); a paraphrase that drops a
slot value (a city, a number) is rejected and the template text kept. The test split is never paraphrased.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

from llamatune.data import funccall_build as builders
from llamatune.data import funccall_templates as phrasebook

CATEGORIES = ("single_call", "no_tool", "tool_result", "clarify", "multi_turn")
DEFAULT_PROPORTIONS = {"single_call": 0.35, "no_tool": 0.25, "tool_result": 0.15, "clarify": 0.10, "multi_turn": 0.15}
SINGLE_WEIGHTS = {"get_current_weather": 3, "get_weather_forecast": 3, "search_wikipedia": 2,
                  "get_wikipedia_summary": 2, "get_local_time": 1.5, "convert_units": 1.5, "calculate": 1}
AGENT_SYSTEM_SHARE = 0.5  # training rows offered exactly an agent mode's tools that get the agent's system prompt
PARAPHRASE_PROMPT = ("Paraphrase the user's message. Keep its meaning, language and every name, place, number and "
                     "unit exactly as written. Reply with the paraphrase only.")


# --- template families and the split ---------------------------------------------------------------------

def family_groups() -> dict[str, str]:
    """Every template family id → its group (the split takes a share of each group)."""
    groups = {f: tool for tool, fams in phrasebook.SINGLE.items() for f in fams}
    groups.update({f: spec[0] for f, spec in phrasebook.CLARIFY.items()})
    groups.update({f: spec[0] for f, spec in phrasebook.NO_TOOL.items()})
    groups.update({f: "follow-up" for f in phrasebook.FOLLOW_UPS})
    return groups


def split_families(test_fraction: float = 0.2) -> dict[str, str]:
    """Family id → ``"train"`` or ``"test"``: ~``test_fraction`` of each group (at least one, never all) goes
    to test. Fixed by the family ids alone, so every seed (and the ICL prompt) sees the same split."""
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    by_group = defaultdict(list)
    for fam, group in family_groups().items():
        by_group[group].append(fam)
    split = {}
    for fams in by_group.values():
        fams.sort(key=lambda f: hashlib.sha256(f.encode()).hexdigest())
        k = 0 if test_fraction == 0 else min(len(fams) - 1, max(1, round(len(fams) * test_fraction)))
        split.update({f: "test" if i < k else "train" for i, f in enumerate(fams)})
    return split


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


def parse_proportions(text: str) -> dict[str, float]:
    """``"single_call=0.4,no_tool=0.3"`` → dict (for the CLI)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--proportions: expected category=number, got {part!r}") from None
        if not sep:
            raise ValueError(f"--proportions: expected category=number, got {part!r}")
    return out


# --- rows ------------------------------------------------------------------------------------------------

def _toolset(rng: random.Random, must: list[str], exclude=()) -> list[dict]:
    """The offered schemas: ``must`` + 0-3 distractors (≥1 tool in all), or an agent mode's set, shuffled."""
    from llamatune.protocol import MODES
    from llamatune.tools import all_tools

    schemas = {n: t.schema for n, t in all_tools().items()}
    modes = [m for m in MODES.values() if m and set(must) <= set(m) and not set(m) & set(exclude)]
    if modes and rng.random() < 0.3:
        names = list(rng.choice(modes))
    else:
        pool = [n for n in schemas if n not in must and n not in exclude]
        names = list(dict.fromkeys(must)) + rng.sample(pool, rng.randint(0 if must else 1, min(3, len(pool))))
    rng.shuffle(names)
    return [schemas[n] for n in names]


def _pick(rng: random.Random, by_group: dict[str, list[str]]) -> str:
    """A family: a group uniformly, then a family of it uniformly (so small groups are not drowned)."""
    group = rng.choice(sorted(by_group))
    return rng.choice(by_group[group])


def agent_system_prompt(tool_names: list[str]) -> str | None:
    """The system prompt the agent uses with exactly these tools (a mode's set), else ``None``."""
    from llamatune.protocol import mode_of, system_prompt

    mode = mode_of(tool_names)
    return system_prompt(mode, tool_names) if mode else None


def _row(rng: random.Random, category: str, fams: dict, system_share: float = 0.0) -> dict:
    exclude: list[str] = []
    if category in ("single_call", "tool_result"):
        tool = rng.choices(list(SINGLE_WEIGHTS), weights=list(SINGLE_WEIGHTS.values()))[0]
        family = rng.choice(fams["single"][tool])
        build = builders.build_single if category == "single_call" else builders.build_tool_result
        messages, must, exp = build(rng, tool, family)
        used = [family]
    elif category == "multi_turn":
        family = rng.choice(fams["follow_up"])
        first_tool = rng.choice(phrasebook.FOLLOW_UPS[family][0])
        first = rng.choice(fams["single"][first_tool])
        messages, must, exp = builders.build_follow_up(rng, first_tool, first, family)
        used = [first, family]
    elif category == "clarify":
        family = _pick(rng, fams["clarify"])
        messages, must, exp = builders.build_clarify(rng, family)
        used = [family]
    else:
        family = _pick(rng, fams["no_tool"])
        exclude = phrasebook.NO_TOOL[family][3]
        messages, must, exp = builders.build_no_tool(rng, family)
        used = [family]
    tools = _toolset(rng, must, exclude)
    system = agent_system_prompt([t["function"]["name"] for t in tools])
    if system and rng.random() < system_share:  # the agent's own prompt, so training matches serving
        messages = [{"role": "system", "content": system}, *messages]
    return {"messages": messages, "tools": tools, "category": category, "template_id": family, "expected": exp,
            "families": used}


def _families_of(split: str, test_fraction: float) -> dict:
    assign = split_families(test_fraction)
    groups = family_groups()
    mine = [f for f in groups if assign[f] == split]
    fams = {"single": {t: [f for f in phrasebook.SINGLE[t] if f in mine] for t in phrasebook.SINGLE},
            "follow_up": [f for f in phrasebook.FOLLOW_UPS if f in mine], "clarify": defaultdict(list),
            "no_tool": defaultdict(list)}
    for f in mine:
        if f in phrasebook.CLARIFY:
            fams["clarify"][groups[f]].append(f)
        elif f in phrasebook.NO_TOOL:
            fams["no_tool"][groups[f]].append(f)
    return fams


def build_split(split: str, n: int, seed: int, proportions: dict | None = None,
                test_fraction: float = 0.2) -> list[dict]:
    """``n`` rows of one split (``"train"`` or ``"test"``), deterministic for ``seed``; user turns keep
    their private ``_keep`` lists (see :func:`strip_private`)."""
    rng = random.Random(f"funccall:{seed}:{split}")
    fams = _families_of(split, test_fraction)
    order = [c for c, k in category_counts(n, proportions).items() for _ in range(k)]
    rng.shuffle(order)
    rows = []
    for i, category in enumerate(order):
        row = _row(rng, category, fams, AGENT_SYSTEM_SHARE if split == "train" else 0.0)
        rows.append({"id": f"fc-{split}-{i:05d}", **row})
    return rows


def strip_private(rows: list[dict]) -> list[dict]:
    for row in rows:
        for m in row["messages"]:
            m.pop("_keep", None)
    return rows


def generate(n: int, seed: int, proportions: dict | None = None, test_fraction: float = 0.2,
             paraphrase_endpoint: str | None = None, paraphrase_model: str | None = None,
             cache_path: str | Path | None = None) -> tuple[list[dict], list[dict]]:
    """``(train_rows, test_rows)``: ``round(n * test_fraction)`` test rows, the rest train, each split with
    the category proportions. With ``paraphrase_endpoint``, training user turns are paraphrased (cached)."""
    train, test, _ = _generate(n, seed, proportions, test_fraction, paraphrase_endpoint, paraphrase_model, cache_path)
    return train, test


def _generate(n, seed, proportions, test_fraction, endpoint, model, cache_path):
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    n_test = round(n * test_fraction)
    train = build_split("train", n - n_test, seed, proportions, test_fraction)
    test = build_split("test", n_test, seed, proportions, test_fraction)
    para = None
    if endpoint:
        para = {"model": model or "default", **paraphrase_rows(train, endpoint, model or "default", cache_path)}
    return strip_private(train), strip_private(test), para


# --- paraphrase (optional) -------------------------------------------------------------------------------

def paraphrase_rows(rows: list[dict], endpoint: str, model: str, cache_path: str | Path | None) -> dict:
    """Paraphrase user turns in place through an OpenAI-compatible server; returns counts that describe the
    dataset (user turns, paraphrases used, rejected), the same whatever a cache held. Answers are cached in
    ``cache_path`` (JSONL, keyed by a hash of model and text), so a rerun makes no request."""
    from openai import OpenAI
    from tqdm import tqdm

    from llamatune.jsonl import JsonlCache
    from llamatune.progress import tqdm_disable

    cache = JsonlCache(cache_path) if cache_path else None
    memory: dict[str, str] = {r["key"]: r["paraphrase"] for r in (cache.rows.values() if cache else ())}
    client = OpenAI(base_url=endpoint, api_key=os.environ.get("OPENAI_API_KEY", "not-needed"), max_retries=2)
    stats = {"turns": 0, "used": 0, "rejected": 0}
    asked = 0
    for row in tqdm(rows, desc="paraphrase", disable=tqdm_disable()):
        for m in row["messages"]:
            if m["role"] != "user":
                continue
            text = m["content"]
            stats["turns"] += 1
            key = hashlib.sha256(f"{model}\n{text}".encode()).hexdigest()
            if key not in memory:
                resp = client.chat.completions.create(model=model, temperature=0, max_tokens=200, messages=[
                    {"role": "system", "content": PARAPHRASE_PROMPT}, {"role": "user", "content": text}])
                memory[key] = (resp.choices[0].message.content or "").strip()
                asked += 1
                if cache is not None:
                    cache.add({"key": key, "text": text, "paraphrase": memory[key]})
            new = memory[key]
            if new and len(new) <= 4 * len(text) + 80 and all(k.lower() in new.lower() for k in m.get("_keep", [])):
                m["content"] = new
                stats["used"] += 1
            else:
                stats["rejected"] += 1
    print(f"paraphrase: {asked} requests to {endpoint}, {stats['turns'] - asked} turns from the cache",
          file=sys.stderr)
    return stats


# --- files -----------------------------------------------------------------------------------------------

def _card_notes(train: list[dict], test: list[dict], meta: dict) -> str:
    c_tr, c_te = Counter(r["category"] for r in train), Counter(r["category"] for r in test)
    lines = ["## Categories", "", "| category | train | test | total |", "|---|---:|---:|---:|"]
    for c in CATEGORIES:
        lines.append(f"| {c} | {c_tr[c]} | {c_te[c]} | {c_tr[c] + c_te[c]} |")
    lines.append(f"| **all** | {len(train)} | {len(test)} | {len(train) + len(test)} |")
    for name, rows in (("train", train), ("test", test)):
        calls = Counter(r["expected"]["name"] for r in rows if r["expected"])
        lines += ["", f"Target calls in {name}: " + (", ".join(f"{k} {v}" for k, v in sorted(calls.items())) or "none")
                  + f"; no call expected: {sum(1 for r in rows if not r['expected'])}."]
    fams = meta["families"]
    lines += ["", f"Template families: {len(fams['train'])} train, {len(fams['test'])} test (none shared). "
              f"Test families: {', '.join(fams['test'])}.", "",
              f"Proportions: {', '.join(f'{k}={v:g}' for k, v in meta['proportions'].items())}; "
              f"test fraction {meta['test_fraction']:g}.", "",
              f"Paraphrase: {'none' if not meta.get('paraphrase') else json.dumps(meta['paraphrase'])}."]
    return "\n".join(lines)


def build_dataset(out: str | Path, n: int, seed: int = 0, proportions: dict | None = None,
                  test_fraction: float = 0.2, paraphrase_endpoint: str | None = None,
                  paraphrase_model: str | None = None) -> dict:
    """Generate and write ``train.jsonl``, ``eval.jsonl``, ``card.md``, ``manifest.json`` under ``out``."""
    from llamatune.data.io import content_hash, write_card, write_jsonl, write_manifest

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, test, para = _generate(n, seed, proportions, test_fraction, paraphrase_endpoint, paraphrase_model,
                                  out / "paraphrase_cache.jsonl")
    for r in train + test:
        r["hash"] = content_hash(r["messages"], r["tools"])
    split = split_families(test_fraction)
    meta = {"source": "llamatune.data.funccall (synthetic, offline)", "n": n, "seed": seed,
            "test_fraction": test_fraction,
            "proportions": dict(DEFAULT_PROPORTIONS if proportions is None else proportions),
            "counts": {"train": dict(Counter(r["category"] for r in train)),
                       "test": dict(Counter(r["category"] for r in test))},
            "families": {s: sorted(f for f, v in split.items() if v == s) for s in ("train", "test")},
            "paraphrase": para,
            "sha256": {"train.jsonl": write_jsonl(out / "train.jsonl", train),
                       "eval.jsonl": write_jsonl(out / "eval.jsonl", test)},
            "ids": {"train": [r["id"] for r in train], "test": [r["id"] for r in test]}}
    write_card(out / "card.md", "Synthetic function-calling dataset",
               f"Generated offline by `llamatune data funccall --n {n} --seed {seed}` from the project's own "
               "templates (`llamatune/data/funccall_templates.py`) and slot values; tool results are fabricated and "
               "final answers grounded in them. Train and test (`eval.jsonl`) are split by template family.",
               {"train": len(train), "test (eval.jsonl)": len(test)}, None, _card_notes(train, test, meta))
    write_manifest(out / "manifest.json", meta)
    return meta


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--n", type=int, default=2000, help="total rows (train + test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--proportions", default=None,
                        help="category=share,... (categories: " + ", ".join(CATEGORIES) + ")")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--paraphrase-endpoint", default=None, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--paraphrase-model", default=None)


def main(args) -> int:
    props = parse_proportions(args.proportions) if args.proportions else None
    meta = build_dataset(args.out, args.n, args.seed, props, args.test_fraction, args.paraphrase_endpoint,
                         args.paraphrase_model)
    print((Path(args.out) / "card.md").read_text(encoding="utf-8"))
    print(f"wrote {len(meta['ids']['train'])} train and {len(meta['ids']['test'])} test rows to {args.out}")
    return 0
