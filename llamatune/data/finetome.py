"""FineTome-100K (ShareGPT rows) → ``messages`` train/eval JSONL, with validation, ids and hashes.

    llamatune data finetome --source mlabonne/FineTome-100k --train 20000 --eval 1000 --out data/finetome
    python -m llamatune.data.finetome --source tests/fixtures/finetome_sample.jsonl --train 40 --eval 10 --out /tmp/ft

Each source row has ``conversations`` (a list of ``{"from", "value"}`` turns), ``source`` and ``score``.
Roles map ``human``→``user``, ``gpt``→``assistant``, ``system``→``system``.

**Selection (deterministic, no seed).** The training set is the first ``N`` valid rows in dataset order; the
held-out set is the next ``M`` valid rows after them. Why: FineTome-100K is published sorted by its quality
score (descending), and the original study trained on "the first 20,000 rows", i.e. the highest-scored
ones. Taking rows in order reproduces that selection exactly, needs no random seed, and reruns on the same
source give byte-identical files. The held-out rows come from *after* the training rows, so training never
sees them, and they sit just below the training rows in score, so eval loss measures generalisation to
data of the same kind rather than to a different quality band. A held-out row whose conversation is an
exact duplicate of a training row (or of an earlier held-out row) is skipped and counted, so the two sets
share no conversation.

**Validation.** A row is bad when it has no ``conversations`` list, a turn with an unknown role, an empty
value, a first turn that is not user/system, a system turn after the first, two consecutive turns of the
same role, or no final assistant turn. Bad rows are skipped and counted by reason; when more than
``--max-bad-fraction`` (default 1%) of the scanned rows are bad, the command fails naming the first bad
rows (``line L`` for JSONL, ``row I`` (0-based) for parquet/JSON/hub sources) and writes nothing.

Sources: a hub id (``datasets.load_dataset(id, split="train")``, on a user's machine with network), or a
local ``.jsonl`` / ``.json`` (a list of rows) / ``.parquet`` file.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llamatune.data.io import content_hash, write_card, write_jsonl, write_manifest

DEFAULT_SOURCE = "mlabonne/FineTome-100k"
ROLE_MAP = {"human": "user", "gpt": "assistant", "system": "system"}
# Reasons a row is rejected, in the order convert_row checks them.
REASONS = (
    "invalid_utf8",
    "invalid_json",
    "missing_conversations",
    "unknown_role",
    "empty_value",
    "invalid_text",
    "bad_first_turn",
    "misplaced_system",
    "consecutive_roles",
    "no_final_assistant",
)
DUPLICATE = "held_out_duplicate"  # not a bad row: an eval candidate equal to a conversation already selected


def convert_row(row: Any, index: int | None = None) -> tuple[list[dict] | None, str | None]:
    """One ShareGPT row → ``(messages, None)``, or ``(None, reason)`` with a reason from ``REASONS``.

    ``index`` (the row's position in the source) is not needed for the conversion; it is accepted so callers
    can pass it uniformly.
    """
    conv = row.get("conversations") if isinstance(row, dict) else None
    if not isinstance(conv, list) or not conv:
        return None, "missing_conversations"
    messages = []
    for turn in conv:
        if not isinstance(turn, dict) or turn.get("from") not in ROLE_MAP:
            return None, "unknown_role"
        value = turn.get("value")
        if not isinstance(value, str) or not value.strip():
            return None, "empty_value"
        if _SURROGATE.search(value):  # a lone UTF-16 surrogate ("\\ud800" in the JSON): not encodable as UTF-8
            return None, "invalid_text"
        messages.append({"role": ROLE_MAP[turn["from"]], "content": value})
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles[0] == "system" else roles
    if roles[0] not in ("user", "system") or (body and body[0] != "user"):
        return None, "bad_first_turn"
    if "system" in body:
        return None, "misplaced_system"
    if any(a == b for a, b in zip(roles, roles[1:])):
        return None, "consecutive_roles"
    if roles[-1] != "assistant":
        return None, "no_final_assistant"
    return messages, None


def _iter_source(source: str) -> Iterator[tuple[int, str, Any]]:
    """Yield ``(index, where, row)`` in dataset order; ``row`` is ``_BadJSON`` for an unparseable JSONL line."""
    path = Path(source)
    if path.exists():
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            with open(path, "rb") as f:  # bytes: one bad byte is one bad row (its line named), not a crash
                index = 0
                for lineno, raw in enumerate(f, 1):
                    if not raw.strip():
                        continue
                    try:
                        row = json.loads(raw.decode("utf-8"))
                    except UnicodeDecodeError:
                        row = _BadUTF8
                    except json.JSONDecodeError:
                        row = _BadJSON
                    yield index, f"line {lineno}", row
                    index += 1
        elif suffix == ".json":
            rows = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(rows, list):
                raise ValueError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")
            for index, row in enumerate(rows):
                yield index, f"row {index}", row
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            index = 0
            for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    yield index, f"row {index}", row
                    index += 1
        else:
            raise ValueError(f"{path}: unsupported source file type {suffix!r} (use .jsonl, .json or .parquet)")
        return
    if source.count("/") != 1 or source.startswith((".", "/")) or Path(source).suffix:
        raise FileNotFoundError(f"{source}: no such file, and not a hub dataset id (owner/name)")
    from datasets import load_dataset  # a user's machine with network: the real FineTome-100K

    for index, row in enumerate(load_dataset(source, split="train")):
        yield index, f"row {index}", row


class _BadJSONType:
    pass


_BadJSON = _BadJSONType()
_BadUTF8 = _BadJSONType()
_SURROGATE = re.compile("[\ud800-\udfff]")


def select(source: str, n_train: int, n_eval: int) -> dict:
    """Scan ``source`` in order and select the rows (no files written). See the module docstring."""
    train: list[dict] = []
    held: list[dict] = []
    seen: set[str] = set()
    bad: list[tuple[str, str]] = []
    skipped: Counter = Counter()
    scores: dict[str, list[float]] = {"train": [], "eval": []}
    origins: dict[str, Counter] = {"train": Counter(), "eval": Counter()}
    scanned = 0
    if n_train + n_eval > 0:
        from tqdm import tqdm

        from llamatune.progress import tqdm_disable

        for index, where, row in tqdm(_iter_source(source), desc=f"scanning {source}", unit=" rows",
                                      disable=tqdm_disable()):
            scanned += 1
            if row is _BadJSON or row is _BadUTF8:
                messages, reason = None, "invalid_json" if row is _BadJSON else "invalid_utf8"
            else:
                messages, reason = convert_row(row, index)
            if reason:
                skipped[reason] += 1
                bad.append((where, reason))
                continue
            h = content_hash(messages)
            split = "train" if len(train) < n_train else "eval"
            if split == "eval" and h in seen:
                skipped[DUPLICATE] += 1
                continue
            seen.add(h)
            record = {"id": f"finetome-{index:06d}", "messages": messages, "hash": h}
            (train if split == "train" else held).append(record)
            if isinstance(row.get("score"), (int, float)):
                scores[split].append(float(row["score"]))
            if row.get("source") is not None:
                origins[split][str(row["source"])] += 1
            if len(train) >= n_train and len(held) >= n_eval:
                break
    return dict(train=train, eval=held, scanned=scanned, bad=bad, skipped=dict(skipped), scores=scores,
                origins={k: dict(v.most_common()) for k, v in origins.items()})


def prepare(source: str, out_dir: str | Path, n_train: int, n_eval: int, max_bad_fraction: float = 0.01) -> dict:
    """Select, validate and write ``train.jsonl``, ``eval.jsonl``, ``manifest.json``, ``card.md`` to ``out_dir``.

    Returns the summary (counts, skips by reason, file hashes). Raises ``ValueError`` naming the first bad rows
    when more than ``max_bad_fraction`` of the scanned rows are bad, and when the source has too few valid rows.
    Nothing is written when it raises.
    """
    sel = select(source, n_train, n_eval)
    n_bad = len(sel["bad"])
    summary = {
        "source": str(source),
        "rows_scanned": sel["scanned"],
        "bad_rows": n_bad,
        "skipped_by_reason": sel["skipped"],
        "train": len(sel["train"]),
        "eval": len(sel["eval"]),
    }
    if sel["scanned"] and n_bad / sel["scanned"] > max_bad_fraction:
        first = ", ".join(f"{where} ({reason})" for where, reason in sel["bad"][:5])
        raise ValueError(
            f"{source}: {n_bad} of {sel['scanned']} rows are bad ({n_bad / sel['scanned']:.1%} > "
            f"--max-bad-fraction {max_bad_fraction:.1%}); first bad rows: {first}. Skips by reason: {sel['skipped']}"
        )
    for split, want in (("train", n_train), ("eval", n_eval)):
        if len(sel[split]) < want:
            raise ValueError(
                f"{source}: only {len(sel[split])} valid {split} rows after scanning {sel['scanned']} rows, but "
                f"{want} were asked for (--{split})"
            )
    out = Path(out_dir)
    files = {split: write_jsonl(out / f"{split}.jsonl", sel[split]) for split in ("train", "eval")}
    summary["files_sha256"] = {f"{k}.jsonl": v for k, v in files.items()}

    def _range(xs):
        return [min(xs), max(xs)] if xs else None

    manifest = {
        "dataset": "finetome",
        "source": str(source),
        "selection": "train = first N valid rows in dataset order; eval = next M valid rows after them, "
        "excluding exact duplicates of selected conversations",
        "counts": {k: summary[k] for k in ("rows_scanned", "bad_rows", "train", "eval")},
        "skipped_by_reason": sel["skipped"],
        "score_range": {k: _range(v) for k, v in sel["scores"].items()},
        "origins": sel["origins"],
        "files_sha256": summary["files_sha256"],
        "ids": {split: [r["id"] for r in sel[split]] for split in ("train", "eval")},
        "hashes": {split: [r["hash"] for r in sel[split]] for split in ("train", "eval")},
    }
    write_manifest(out / "manifest.json", manifest)
    srange = manifest["score_range"]
    write_card(
        out / "card.md",
        "FineTome subset",
        f"Source: `{source}`. ShareGPT rows converted to `messages` (human→user, gpt→assistant, system→system). "
        "Training rows are the first N valid rows in dataset order (FineTome-100K is sorted by quality score); "
        "held-out rows are the next M valid rows after them, so training never sees them.",
        {"rows scanned": sel["scanned"], "bad rows (skipped)": n_bad, "train": summary["train"],
         "eval": summary["eval"]},
        sel["skipped"],
        notes=f"Score range: train {srange['train']}, eval {srange['eval']}.\n\n"
        f"Origins (train): {sel['origins']['train']}",
    )
    return summary


def add_arguments(parser) -> None:
    parser.add_argument("--source", default=DEFAULT_SOURCE,
                        help=f"hub dataset id or local .parquet/.jsonl/.json file (default {DEFAULT_SOURCE})")
    parser.add_argument("--train", type=int, default=20000, help="training rows: the first N valid rows")
    parser.add_argument("--eval", type=int, default=1000, help="held-out rows: the next M valid rows after them")
    parser.add_argument("--out", default="data/finetome", help="output directory")
    parser.add_argument("--max-bad-fraction", type=float, default=0.01,
                        help="fail when more than this fraction of scanned rows is bad (default 0.01)")


def main(args) -> int:
    summary = prepare(args.source, args.out, args.train, args.eval, args.max_bad_fraction)
    print(f"scanned {summary['rows_scanned']} rows: train {summary['train']}, eval {summary['eval']}, "
          f"bad {summary['bad_rows']}")
    for reason, n in sorted(summary["skipped_by_reason"].items()):
        print(f"  skipped {reason}: {n}")
    print(f"wrote {args.out}/train.jsonl, eval.jsonl, manifest.json, card.md")
    return 0


if __name__ == "__main__":
    import argparse

    from llamatune.cli import run

    p = argparse.ArgumentParser(prog="python -m llamatune.data.finetome", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    sys.exit(run(main, p.parse_args(), "llamatune data finetome"))
