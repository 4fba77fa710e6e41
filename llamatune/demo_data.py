"""The demo's data stage: the generator's rows into training, validation and test files (``llamatune demo``, stage
1; the sweep's data of each setting). Every validation and test prompt is distinct and equal to no training prompt
(:func:`prompt_key`); the test items are drawn from held-out template families, the validation items from the fold.
"""

from __future__ import annotations

import json
import random
import sys
from collections import defaultdict
from itertools import zip_longest
from pathlib import Path

from llamatune.jsonl import read_json, write_json

N_TEST_NEW = 60  # test items of the new categories (data/eval_new.jsonl), beside the n_test of the original ones
VAL = 0.2  # the validation fold's share of each group's template families (README, part 6)
DATA_FORMAT = 8  # bump when make_data's rows change, so a cached data stage is rebuilt (8: breadth families, part 9)


def stratified(rows: list[dict], n: int, seed: int = 0, weights: dict | None = None, spread: str = "") -> list[dict]:
    """``n`` rows spread over the categories in proportion (at least one per category), deterministic; ``weights``
    (category → share): quotas in these proportions instead of the rows' own; ``spread`` (a row key, e.g.
    ``template_id``): a category's quota taken round-robin over that key's values, so no one family fills it."""
    by_cat: dict[str, list[dict]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["id"]):
        by_cat[r["category"]].append(r)
    rng = random.Random(seed)
    for v in by_cat.values():
        rng.shuffle(v)
        if spread:
            groups = [[r for r in v if str(r.get(spread)) == g] for g in sorted({str(r.get(spread)) for r in v})]
            v[:] = [r for layer in zip_longest(*groups) for r in layer if r is not None]
    cats = sorted(by_cat)
    size = {c: len(by_cat[c]) for c in cats} if weights is None else {c: weights.get(c, 0) for c in cats}
    total = sum(size.values()) or 1
    quota = {c: min(len(by_cat[c]), max(1, round(n * size[c] / total))) for c in cats}
    while sum(quota.values()) > n and any(q > 1 for q in quota.values()):
        quota[max(cats, key=lambda c: quota[c])] -= 1
    while sum(quota.values()) < min(n, len(rows)):  # rounding left some out: the largest shortfall first
        short = [c for c in cats if quota[c] < len(by_cat[c])]
        quota[max(short, key=lambda c: n * size[c] / total - quota[c])] += 1
    picked = [r for c in cats for r in by_cat[c][: quota[c]]]
    return sorted(picked, key=lambda r: r["id"])


def prompt_key(row: dict) -> str:
    """What a reader sees as the prompt: the turns before the target, without system prompt or tool list (two rows
    that differ only in the offered distractor tools ask the same question)."""
    from llamatune.evals.toolcall import prompt_messages

    return json.dumps([[m["role"], m.get("content"), m.get("tool_calls")] for m in prompt_messages(row)
                       if m["role"] != "system"], sort_keys=True, ensure_ascii=False)


def distinct(rows: list[dict], seen: set[str]) -> list[dict]:
    """The rows whose :func:`prompt_key` is in neither ``seen`` nor an earlier row (``seen`` grows)."""
    out = []
    for r in rows:
        key = prompt_key(r)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def validation_rows(train_keys: set[str], n_val: int, val_fraction: float = VAL) -> list[dict]:
    """``n_val`` items of the validation fold (families held out of training, ``split_families``; ``val_fraction``
    0: the training families, parts 1-5), stratified, dressed as the test items, each prompt distinct and equal to no
    training prompt (``train_keys``); their own random stream, so the same whatever the training mix."""
    from llamatune.data.funccall import DEFAULT_PROPORTIONS, build_split, strip_private

    pool = distinct(strip_private(build_split("val", max(4 * n_val, 400), 0, DEFAULT_PROPORTIONS,
                                              val_fraction=val_fraction)), set(train_keys))
    return stratified(pool, n_val, seed=1, weights=DEFAULT_PROPORTIONS, spread="template_id")


def make_data(out: Path, n: int, n_test: int, n_val: int, max_length: int, hf_dir: str, template: str,
              mix: dict | None = None, n_test_new: int = N_TEST_NEW, val_fraction: float = VAL, breadth=False,
              pairs: float | None = None) -> dict:
    """``train.jsonl`` (rows that fit ``max_length`` tokens), ``val.jsonl`` (:func:`validation_rows`, for choosing
    settings), ``eval.jsonl`` (the test items of the original categories: held-out families, touched only by the final
    evaluation) and ``eval_new.jsonl`` (``n_test_new`` test items of the new categories, held-out families too); no
    prompt appears twice within a file, and no validation or test prompt equals a training prompt. Prints and records
    (``demo_data.json``, ``by_category``) rows generated, kept and mean tokens per category.
    ``mix`` changes the category proportions of the training rows only, ``breadth=True`` adds the breadth families
    to them, ``pairs`` contrastive pairs; ``val_fraction``: the fold's share."""
    from transformers import AutoTokenizer

    from llamatune.data.funccall import NEW_CATEGORIES, build_dataset, build_split, strip_private, train_style
    from llamatune.data.lengths import LIMITS, by_category, pack_count, row_tokens, table_markdown
    from llamatune.jsonl import read_jsonl, write_jsonl

    full = out / "full"
    tok = AutoTokenizer.from_pretrained(hf_dir)
    build_dataset(full, n, seed=0, tokenizer=tok, template=template, max_length=max_length, val_fraction=val_fraction,
                  breadth=breadth, pairs=pairs)
    generated = read_jsonl(full / "train.jsonl")
    generated_keys = {prompt_key(r) for r in generated}
    val = validation_rows(generated_keys, n_val, val_fraction)
    val_keys = {prompt_key(r) for r in val}
    train = strip_private(build_split("train", len(generated), 0, mix, style=train_style(pairs=pairs),
                                      val_fraction=val_fraction, breadth=breadth)) if mix else generated
    train = [r for r in train if prompt_key(r) not in val_keys]
    tokens = [row_tokens(r, tok, template) for r in train]
    kept = [r for r, t in zip(train, tokens) if t is not None and t <= max_length]
    table = by_category(train, tokens, sorted({*LIMITS, max_length}))
    n_packs = pack_count([t for t in tokens if t is not None and t <= max_length], max_length)
    seen = generated_keys | ({prompt_key(r) for r in train} if mix else set())  # without a mix, train ⊂ generated
    items = read_jsonl(full / "eval.jsonl", ("id", "messages", "tools", "expected", "category"))
    pool = distinct([r for r in items if r["category"] not in NEW_CATEGORIES], seen)
    test = stratified(pool, n_test)
    pool_new = distinct([r for r in items if r["category"] in NEW_CATEGORIES], seen)
    test_new = stratified(pool_new, n_test_new) if n_test_new else []
    for what, got, want in (("test", test, n_test), ("validation", val, n_val), ("new-category test", test_new,
                                                                                  n_test_new)):
        if len(got) < want:
            print(f"[demo] only {len(got)} distinct {what} prompts (asked for {want}): raise --n", file=sys.stderr)
    for name, rows in (("train.jsonl", kept), ("val.jsonl", val), ("eval.jsonl", test), ("eval_new.jsonl", test_new)):
        write_jsonl(out / name, rows)
    print(f"[demo] training rows by category ({template} template, limit {max_length} tokens):\n"
          + table_markdown(table) + f"\n{len(kept)} rows kept make {n_packs} packs of ≤ {max_length} tokens "
          f"({len(kept) / max(1, n_packs):.2f} rows a pack)", flush=True)
    info = {"data_format": DATA_FORMAT, "n": n, "n_train_generated": len(train), "n_train": len(kept),
            "max_length": max_length, "template": template, "mix": mix, "val_fraction": val_fraction,
            "breadth": breadth, "pairs": pairs, "n_test_requested": n_test,
            "n_test": len(test), "n_test_distinct_pool": len(pool), "n_val_requested": n_val, "n_val": len(val),
            "n_test_new_requested": n_test_new, "n_test_new": len(test_new), "by_category": table, "n_packs": n_packs,
            "test_ids": [r["id"] for r in test], "test_new_ids": [r["id"] for r in test_new],
            "val_ids": [r["id"] for r in val]}
    write_json((out / "demo_data.json"), info, indent=1)
    return info


def data_done(out: Path, n: int, n_test: int, n_val: int, max_length: int, template: str, mix=None,
              n_test_new: int = N_TEST_NEW, val_fraction: float = VAL, breadth=False, pairs=None) -> bool:
    """Whether ``out`` holds :func:`make_data`'s files for these arguments (and this :data:`DATA_FORMAT`)."""
    info = read_json(out / "demo_data.json", None) or {}
    want = {"data_format": DATA_FORMAT, "n": n, "max_length": max_length, "n_test_requested": n_test,
            "n_val_requested": n_val, "template": template, "mix": mix, "n_test_new_requested": n_test_new,
            "val_fraction": val_fraction, "breadth": breadth, "pairs": pairs}
    return all(info.get(k) == v for k, v in want.items())
