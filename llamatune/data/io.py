"""Shared file helpers for the data stages: JSONL rows, content hashes, ``manifest.json`` and ``card.md``.

Every data command (``llamatune data finetome``, ``llamatune data funccall``) writes the same layout::

    DIR/train.jsonl      one {"id", "messages", ["tools"], "hash"} per line
    DIR/eval.jsonl
    DIR/manifest.json    source, selection rule, row ids, hashes, counts (machine-readable)
    DIR/card.md          the same facts for people: counts and skips by reason

Files are written atomically (a temporary file renamed into place), so an interrupted run never leaves a
half-written file behind that a later stage would silently read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

# the data stages' file API; the store itself is llamatune.jsonl
from llamatune.jsonl import iter_jsonl, read_jsonl, sha256_file, write_json, write_jsonl, write_text  # noqa: F401


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no spaces: the same object always gives the same text."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def sha256_text(text: str) -> str:
    """Hex sha256 of ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_hash(messages: list[dict], tools: list[dict] | None = None) -> str:
    """The content hash of one conversation (messages, and tools when given); ids and order play no part."""
    obj: dict[str, Any] = {"messages": messages}
    if tools is not None:
        obj["tools"] = tools
    return sha256_text(canonical_json(obj))


def write_manifest(path: str | Path, manifest: dict) -> Path:
    """Write ``manifest`` as indented, key-sorted JSON (atomically)."""
    return write_json(path, manifest, indent=2, sort_keys=True)


def write_card(path: str | Path, title: str, description: str, counts: dict[str, Any],
               skipped: dict[str, int] | None = None, notes: str = "") -> Path:
    """Write a dataset card: a description, a table of counts and a table of skipped rows by reason."""
    lines = [f"# {title}", "", description.strip(), "", "## Counts", "", "| | rows |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in counts.items()]
    lines += ["", "## Skipped rows by reason", ""]
    if skipped:
        lines += ["| reason | rows |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in sorted(skipped.items())]
    else:
        lines.append("None.")
    if notes.strip():
        lines += ["", notes.strip()]
    path = Path(path)
    write_text(path, "\n".join(lines) + "\n")
    return path
