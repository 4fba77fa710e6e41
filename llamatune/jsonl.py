"""The project's one file store: JSONL rows and JSON documents, written so that a crash never loses or corrupts data.

* :func:`read_jsonl` — rows of a JSONL file, errors naming the file, the line and the field. ``cache=True``
  reads an append-only cache: a missing file is empty, and an unterminated last line (a write torn by a crash,
  cut anywhere, inside a multi-byte character too) is ignored.
* :func:`append_jsonl` — one row appended and made durable (flush + fsync) before returning; a torn last line
  is cut off first, so the new row starts on its own line and the file stays readable.
* :class:`JsonlCache` — an append-only cache of rows by key over those two (answers, verdicts, tool-call
  generations, paraphrases).
* :func:`write_jsonl`, :func:`write_json`, :func:`write_text` — whole files written atomically (a temporary
  file fsynced and renamed into place), so a reader sees the old file or the new one, never half of one.
* :func:`replacing` — the same for a file or directory that another writer fills (a GGUF from the converter or
  the quantizer, a merged model, a model built into the cache): ``NAME.part`` until it is complete.

    from llamatune.jsonl import JsonlCache
    cache = JsonlCache("results/x/answers.jsonl")
    if key not in cache:
        cache.add({"key": key, "output": out})
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _error(e: Exception) -> str:
    return getattr(e, "msg", None) or getattr(e, "reason", None) or str(e)


def iter_jsonl(path: str | Path, *, cache: bool = False) -> Iterator[tuple[int, dict]]:
    """``(line number, row)`` (1-based) for each non-blank line; a bad line raises ``ValueError`` naming the file
    and the line. ``cache=True``: a missing file yields nothing and a torn last line is skipped (see module)."""
    path = Path(path)
    if not path.exists():
        if cache:
            return
        raise FileNotFoundError(f"{path}: no such file")
    lines = path.read_bytes().split(b"\n")
    last = len(lines)  # the text after the last newline (b"" for a file that ends with one)
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if cache and lineno == last:
                return  # a torn write: the row never finished
            raise ValueError(f"{path}:{lineno}: not a valid JSON row ({_error(e)})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        yield lineno, row


def read_jsonl(path: str | Path, required: tuple[str, ...] = (), *, cache: bool = False) -> list[dict]:
    """All rows of a JSONL file; a row missing one of ``required`` raises naming the file, line and field."""
    rows = []
    for n, row in iter_jsonl(path, cache=cache):
        for field in required:
            if field not in row:
                raise ValueError(f"{path}:{n}: missing field {field!r}")
        rows.append(row)
    return rows


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one row and make it durable (flush + fsync) before returning. A torn last line left by a crash is
    cut off first (a row whose newline is missing but is whole is kept), so the new row starts on its own line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    with open(path, "a+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                f.seek(0)
                data = f.read()
                cut = data.rfind(b"\n") + 1
                try:
                    json.loads(data[cut:].decode("utf-8"))
                    f.write(b"\n")  # a whole row, only its newline missing
                except (UnicodeDecodeError, json.JSONDecodeError):
                    f.truncate(cut)  # a fragment: drop it
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


class JsonlCache:
    """Rows of an append-only JSONL file by ``row[key]``; :meth:`add` appends durably (the last row of a key wins)
    and is safe to call from several threads."""

    def __init__(self, path: str | Path, key: str = "key"):
        self.path, self.key = Path(path), key
        self._lock = threading.Lock()
        self.rows: dict[Any, dict] = {r[key]: r for r in read_jsonl(self.path, cache=True) if key in r}

    def __contains__(self, k) -> bool:
        return k in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, k, default=None):
        return self.rows.get(k, default)

    def add(self, row: dict) -> dict:
        with self._lock:
            append_jsonl(self.path, row)
            self.rows[row[self.key]] = row
        return row


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` atomically: to a temporary file in the same directory, fsynced, then renamed into place.
    Temporary files of this path left by a killed process are removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp*"):
        pid = stale.name.rpartition(".tmp")[2]
        if pid.isdigit() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)
    return path


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """``with replacing(out) as tmp:`` fill ``tmp`` (``out.part``: a file, or a directory), and it replaces ``out``
    when the block ends without an error. A crash or an error leaves ``out`` as it was (or absent), never half
    written; the leftover ``.part`` of a killed build is cleared when the next one starts."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    _remove(tmp)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if not tmp.exists() and not tmp.is_symlink():
        raise FileNotFoundError(f"{tmp}: the writer finished without writing it")
    if tmp.is_dir():
        _remove(path)  # a directory cannot be renamed over a non-empty one
        tmp.rename(path)
    else:
        os.replace(tmp, path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_json(path: str | Path, obj: Any, indent: int | None = 1, sort_keys: bool = False, default=None) -> Path:
    """``obj`` as JSON (UTF-8, a final newline), atomically; ``default`` as in :func:`json.dumps` (e.g. ``str``)."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, sort_keys=sort_keys, default=default)
    return write_text(path, text + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> str:
    """``rows`` as JSON lines, atomically; returns the file's sha256."""
    path = write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return sha256_file(path)


_REQUIRED = object()


def read_json(path: str | Path, default: Any = _REQUIRED, *, expect: type | None = None) -> Any:
    """A JSON document; a broken file raises naming it, and so does a missing one unless ``default`` is given
    (returned instead), and, with ``expect`` (e.g. ``dict``), one whose top level is of another type."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if default is not _REQUIRED:
            return default
        raise FileNotFoundError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({_error(e)})") from None
    if expect is not None and not isinstance(data, expect):
        raise ValueError(f"{path}: expected a JSON {'object' if expect is dict else expect.__name__}, "
                         f"got {type(data).__name__}")
    return data
