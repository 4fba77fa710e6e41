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
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


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


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> str:
    """Write ``rows`` as JSON lines (atomically); return the file's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return sha256_file(path)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, row)`` (1-based) for each non-blank line; a bad line raises ``ValueError``
    naming the file and the line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield lineno, row


def read_jsonl(path: str | Path) -> list[dict]:
    """All rows of a JSONL file; errors name the file and line (see :func:`iter_jsonl`)."""
    return [row for _, row in iter_jsonl(path)]


def write_manifest(path: str | Path, manifest: dict) -> Path:
    """Write ``manifest`` as indented, key-sorted JSON (atomically)."""
    path = Path(path)
    _atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return path


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
    _atomic_write_text(path, "\n".join(lines) + "\n")
    return path
