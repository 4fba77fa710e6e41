"""Token lengths of chat rows per category: rows a length limit keeps, mean tokens per row, and the rows a training
run sees. The one measurement behind the data card, the demo's data stage and its report; rerun it whenever the
template changes:

    python -m llamatune.data.lengths runs/demo/data/full/train.jsonl --model smollm2-135m --template smollm2
    python -m llamatune.data.lengths DIR/train.jsonl --model smollm2-135m --template smollm2 --limits 512,768,1024

A row's length is what training tokenizes: the row rendered by the project template (tools included), without added
special tokens. A row the template cannot render (a template that writes one call per turn, given parallel calls)
is counted as ``unrenderable`` and kept by no limit.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

LIMITS = (512, 768, 1024)


def row_tokens(row: dict, tokenizer, template: str) -> int | None:
    """Tokens of ``row`` rendered by ``template`` (``None`` when the template refuses the row)."""
    from jinja2 import TemplateError

    from llamatune.chat import render

    try:
        text = render(row["messages"], row.get("tools") or None, template=template)
    except TemplateError:
        return None
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def by_category(rows: list[dict], tokens: list[int | None], limits=LIMITS) -> dict:
    """``{category: {"generated", "unrenderable", "mean_tokens", "kept": {limit: rows}, "kept_tokens": {limit:
    tokens}}}`` and the same over all rows under ``"all"``; ``limits`` as ints, keys as strings (JSON)."""
    groups: dict[str, list] = defaultdict(list)
    for r, n in zip(rows, tokens, strict=True):
        groups[r["category"]].append(n)
        groups["all"].append(n)
    out = {}
    for cat in sorted(groups, key=lambda c: (c == "all", c)):
        ns = groups[cat]
        ok = [n for n in ns if n is not None]
        out[cat] = {"generated": len(ns), "unrenderable": len(ns) - len(ok),
                    "mean_tokens": round(sum(ok) / len(ok), 1) if ok else None,
                    "kept": {str(lim): sum(n <= lim for n in ok) for lim in limits},
                    "kept_tokens": {str(lim): sum(n for n in ok if n <= lim) for lim in limits}}
    return out


def measure(rows: list[dict], tokenizer, template: str, limits=LIMITS) -> dict:
    """:func:`by_category` of ``rows`` rendered by ``template`` and counted by ``tokenizer``."""
    return by_category(rows, [row_tokens(r, tokenizer, template) for r in rows], limits)


def pack_count(lengths: list[int], max_length: int) -> int:
    """Packs of at most ``max_length`` tokens that TRL's best-fit-decreasing packing (``packing_strategy: bfd``, what
    the trainer runs) makes of rows of these token ``lengths``: the training sequences of one epoch."""
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    if not lengths:
        return 0
    ds = Dataset.from_dict({"input_ids": [[0] * min(int(n), max_length) for n in lengths]})
    return len(pack_dataset(ds, max_length, strategy="bfd"))


def seen_by_training(table: dict, max_length: int, steps: int, batch: int, packed: bool = False,
                     sequences: int | None = None) -> dict:
    """Rows of each category one training run sees, expected: ``steps × batch`` sequences drawn from the rows kept at
    ``max_length`` (shuffled, epoch after epoch, so each category in its kept share); packed, a sequence holds
    kept rows ÷ ``sequences`` rows (the packs of one epoch, :func:`pack_count` or the trainer's count), else
    ``max_length`` / mean kept tokens rows (a full pack). ``{category: {"seen", "distinct"}}`` (row presentations,
    and distinct rows among them: all kept rows once ``steps × batch`` covers an epoch) and ``"all"``, from a
    :func:`by_category` table that has ``max_length`` among its limits."""
    lim = str(max_length)
    total = table["all"]["kept"][lim]
    if total == 0:
        return {c: {"seen": 0, "distinct": 0} for c in table}
    if packed:
        per_seq = total / sequences if sequences else max_length * total / table["all"]["kept_tokens"][lim]
    else:
        per_seq = 1.0
    rows_seen = steps * batch * per_seq
    out = {}
    for cat, t in table.items():
        share = t["kept"][lim] / total
        seen = rows_seen * share
        out[cat] = {"seen": round(seen), "distinct": min(t["kept"][lim], round(seen))}
    return out


def _pct(a: int, b: int) -> str:
    return f"{a} ({a / b:.0%})" if b else "0"


def table_markdown(table: dict, seen: dict | None = None) -> str:
    """The per-category table: rows generated, kept at each limit (with share), mean tokens per row[, seen]."""
    limits = list(next(iter(table.values()))["kept"])
    head = ["category", "generated", *(f"kept ≤ {lim}" for lim in limits), "mean tokens"]
    if seen:
        head += ["seen by training", "distinct seen"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for cat, t in table.items():
        cells = [f"**{cat}**" if cat == "all" else cat, str(t["generated"]),
                 *(_pct(t["kept"][lim], t["generated"]) for lim in limits),
                 "—" if t["mean_tokens"] is None else f"{t['mean_tokens']:.0f}"]
        if seen:
            cells += [str(seen[cat]["seen"]), str(seen[cat]["distinct"])]
        lines.append("| " + " | ".join(cells) + " |")
    bad = sum(t["unrenderable"] for c, t in table.items() if c != "all")
    if bad:
        lines += ["", f"{bad} rows the template cannot render (kept by no limit)."]
    return "\n".join(lines)


def min_kept_share(table: dict, limit: int) -> float:
    """The smallest share of its rows any category keeps at ``limit`` (1.0 for an empty table)."""
    return min((t["kept"][str(limit)] / t["generated"] for c, t in table.items() if c != "all" and t["generated"]),
               default=1.0)


def main(argv=None) -> int:
    from transformers import AutoTokenizer

    from llamatune.jsonl import read_jsonl
    from llamatune.models import resolve_model

    p = argparse.ArgumentParser(prog="python -m llamatune.data.lengths", description=__doc__.split("\n\n")[0])
    p.add_argument("rows", help="a JSONL file of rows with messages, tools and category")
    p.add_argument("--model", default="smollm2-135m", help="tokenizer: a model name or directory (default %(default)s)")
    p.add_argument("--template", default="smollm2", help="project chat template (default %(default)s)")
    p.add_argument("--limits", default=",".join(map(str, LIMITS)), help="length limits, comma-separated")
    p.add_argument("--steps", type=int, default=None, help="with --batch and --max-length: rows seen by training")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--packed", action="store_true", help="training packs rows into --max-length sequences")
    a = p.parse_args(argv)
    limits = sorted({int(x) for x in a.limits.split(",") if x.strip()} | ({a.max_length} if a.max_length else set()))
    table = measure(read_jsonl(a.rows), AutoTokenizer.from_pretrained(resolve_model(a.model)), a.template, limits)
    seen = seen_by_training(table, a.max_length, a.steps, a.batch, a.packed) if a.steps and a.max_length else None
    print(table_markdown(table, seen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
