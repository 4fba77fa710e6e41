"""FineTome data stage: conversion, validation by reason, deterministic disjoint selection, files and CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import FIXTURES, REPO
from llamatune.data import finetome
from llamatune.data.finetome import convert_row, prepare
from llamatune.data.io import content_hash, read_jsonl, sha256_file, write_jsonl

SAMPLE = FIXTURES / "finetome_sample.jsonl"


def t(frm, value):
    return {"from": frm, "value": value}


def test_fixture_is_what_the_script_writes():
    sys.path.insert(0, str(FIXTURES))
    try:
        import make_finetome_fixture as mk
    finally:
        sys.path.pop(0)
    assert SAMPLE.read_text(encoding="utf-8") == "\n".join(mk.lines()) + "\n"


def test_convert_row_maps_roles_and_keeps_text():
    row = {"conversations": [t("system", "Be brief."), t("human", "Hi"), t("gpt", "Hello"), t("human", "Bye"), t("gpt", "Bye!")]}
    messages, reason = convert_row(row, 0)
    assert reason is None
    assert messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye!"},
    ]


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"source": "x"}, "missing_conversations"),
        ({"conversations": []}, "missing_conversations"),
        ({"conversations": "hi"}, "missing_conversations"),
        ({"conversations": [t("human", "Hi"), t("bot", "Yo")]}, "unknown_role"),
        ({"conversations": [t("human", "Hi"), {"value": "Yo"}]}, "unknown_role"),
        ({"conversations": [t("human", "Hi"), t("gpt", " \n")]}, "empty_value"),
        ({"conversations": [t("human", "Hi"), {"from": "gpt", "value": None}]}, "empty_value"),
        ({"conversations": [t("gpt", "Hi"), t("human", "Yo")]}, "bad_first_turn"),
        ({"conversations": [t("system", "S"), t("gpt", "Hi")]}, "bad_first_turn"),
        ({"conversations": [t("human", "Hi"), t("system", "S"), t("gpt", "Yo")]}, "misplaced_system"),
        ({"conversations": [t("human", "Hi"), t("human", "Hi?"), t("gpt", "Yo")]}, "consecutive_roles"),
        ({"conversations": [t("human", "Hi"), t("gpt", "Yo"), t("gpt", "Yo!")]}, "consecutive_roles"),
        ({"conversations": [t("human", "Hi")]}, "no_final_assistant"),
        ({"conversations": [t("system", "S"), t("human", "Hi"), t("gpt", "Yo"), t("human", "?")]}, "no_final_assistant"),
    ],
)
def test_convert_row_rejects_with_reason(row, reason):
    assert convert_row(row, 3) == (None, reason)


def test_prepare_fixture_selection_files_and_counts(tmp_path):
    summary = prepare(str(SAMPLE), tmp_path, 40, 15, max_bad_fraction=0.2)
    train, held = read_jsonl(tmp_path / "train.jsonl"), read_jsonl(tmp_path / "eval.jsonl")
    assert (len(train), len(held)) == (40, 15)
    # every kind of bad row in the fixture is skipped and counted (bad bytes and lone surrogates have their own
    # test below: the fixture is text)
    for reason in set(finetome.REASONS) - {"invalid_utf8", "invalid_text"}:
        assert summary["skipped_by_reason"].get(reason, 0) >= 1, reason
    # the train set is the first 40 valid rows in file order; eval comes strictly after them
    expected = []
    for line in SAMPLE.read_text().splitlines():
        try:
            messages, reason = convert_row(json.loads(line))
        except json.JSONDecodeError:
            continue
        if messages is not None:
            expected.append(messages)
    assert [r["messages"] for r in train] == expected[:40]
    assert max(int(r["id"].split("-")[1]) for r in train) < min(int(r["id"].split("-")[1]) for r in held)
    # stable ids and content hashes
    for r in train + held:
        assert set(r) == {"id", "messages", "hash"}
        assert r["hash"] == content_hash(r["messages"])
    # the two sets share no conversation (the fixture holds a duplicate of train row 0 among eval candidates)
    assert summary["skipped_by_reason"]["held_out_duplicate"] == 1
    assert not {r["hash"] for r in train} & {r["hash"] for r in held}
    assert not {json.dumps(r["messages"]) for r in train} & {json.dumps(r["messages"]) for r in held}
    assert len({r["id"] for r in train + held}) == 55
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["ids"]["train"] == [r["id"] for r in train]
    assert manifest["hashes"]["eval"] == [r["hash"] for r in held]
    assert manifest["files_sha256"]["train.jsonl"] == sha256_file(tmp_path / "train.jsonl")
    card = (tmp_path / "card.md").read_text()
    assert "| train | 40 |" in card and "| unknown_role | 1 |" in card


def test_prepare_is_deterministic(tmp_path):
    prepare(str(SAMPLE), tmp_path / "a", 30, 10, max_bad_fraction=0.2)
    prepare(str(SAMPLE), tmp_path / "b", 30, 10, max_bad_fraction=0.2)
    for name in ("train.jsonl", "eval.jsonl", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_same_selection_from_parquet_and_json(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = []
    for line in SAMPLE.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row.get("conversations"), list) and all(isinstance(x, dict) and isinstance(x.get("value"), str) for x in row["conversations"]):
            rows.append({"conversations": row["conversations"], "source": row.get("source"), "score": row.get("score")})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "s.parquet")
    (tmp_path / "s.json").write_text(json.dumps(rows))
    a = prepare(str(tmp_path / "s.parquet"), tmp_path / "pq", 20, 5, max_bad_fraction=0.3)
    b = prepare(str(tmp_path / "s.json"), tmp_path / "js", 20, 5, max_bad_fraction=0.3)
    assert a["skipped_by_reason"] == b["skipped_by_reason"]
    assert (tmp_path / "pq" / "train.jsonl").read_bytes() == (tmp_path / "js" / "train.jsonl").read_bytes()


def test_too_many_bad_rows_fails_naming_the_first_ones(tmp_path):
    with pytest.raises(ValueError) as e:
        prepare(str(SAMPLE), tmp_path / "out", 40, 10)  # default max_bad_fraction=0.01
    msg = str(e.value)
    assert "finetome_sample.jsonl" in msg and "line 5 (missing_conversations)" in msg
    assert "line 21 (unknown_role)" in msg
    assert not (tmp_path / "out").exists()


def test_not_enough_rows_fails(tmp_path):
    # 60 good rows + the duplicate of row 0 (duplicates are only dropped from the held-out set)
    with pytest.raises(ValueError, match="only 61 valid train rows"):
        prepare(str(SAMPLE), tmp_path, 100, 0, max_bad_fraction=0.5)


def test_missing_source_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        prepare(str(tmp_path / "nope.jsonl"), tmp_path / "o", 1, 1)


def test_read_jsonl_errors_name_file_and_line(tmp_path):
    p = tmp_path / "x.jsonl"
    write_jsonl(p, [{"a": 1}])
    with open(p, "a") as f:
        f.write("\n{broken\n")
    with pytest.raises(ValueError, match=r"x\.jsonl:3: not a valid JSON row"):
        read_jsonl(p)


def test_cli_prints_counts_and_fails_on_bad_fraction(tmp_path):
    cmd = [sys.executable, "-m", "llamatune", "data", "finetome", "--source", str(SAMPLE), "--train", "40", "--eval", "10"]
    ok = subprocess.run(cmd + ["--out", str(tmp_path / "ok"), "--max-bad-fraction", "0.2"], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert "train 40, eval 10, bad 8" in ok.stdout and "skipped unknown_role: 1" in ok.stdout
    bad = subprocess.run(cmd + ["--out", str(tmp_path / "bad")], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "line 5 (missing_conversations)" in bad.stderr


def test_hub_source_goes_through_load_dataset(tmp_path, monkeypatch):
    """A hub id is loaded with datasets.load_dataset(id, split="train") (here replaced: tests stay offline);
    bad rows are then named by their 0-based row index."""
    datasets = pytest.importorskip("datasets")
    rows = [{"conversations": [t("human", f"Q{i}"), t("gpt", f"A{i}")], "source": "s", "score": 5 - i / 100} for i in range(30)]
    rows[3] = {"conversations": [t("human", "Q")], "source": "s", "score": 1.0}
    calls = []

    def fake_load_dataset(name, split=None):
        calls.append((name, split))
        return rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    summary = prepare("mlabonne/FineTome-100k", tmp_path, 20, 5, max_bad_fraction=0.1)
    assert calls == [("mlabonne/FineTome-100k", "train")]
    assert summary["skipped_by_reason"] == {"no_final_assistant": 1}
    assert read_jsonl(tmp_path / "train.jsonl")[3]["id"] == "finetome-000004"
    with pytest.raises(ValueError, match=r"row 3 \(no_final_assistant\)"):
        prepare("mlabonne/FineTome-100k", tmp_path / "strict", 20, 5, max_bad_fraction=0.01)


def test_bad_bytes_and_lone_surrogates_are_bad_rows_named_by_line(tmp_path):
    """One non-UTF-8 byte or a lone surrogate skips that row (named by its line), never the whole preparation;
    the files written are valid UTF-8."""
    good = [{"conversations": [t("human", f"question {i}"), t("gpt", f"answer {i}")]} for i in range(6)]
    lines = [json.dumps(r).encode() for r in good]
    lines.insert(2, b'{"conversations": [{"from": "human", "value": "caf\xe9"}, {"from": "gpt", "value": "ok"}]}')
    lines.insert(4, b'{"conversations": [{"from": "human", "value": "x\\ud800y"}, {"from": "gpt", "value": "ok"}]}')
    src = tmp_path / "src.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    summary = prepare(str(src), tmp_path / "out", 4, 2, max_bad_fraction=0.5)
    assert summary["skipped_by_reason"] == {"invalid_utf8": 1, "invalid_text": 1}
    assert (summary["train"], summary["eval"]) == (4, 2)
    for split in ("train", "eval"):
        (tmp_path / "out" / f"{split}.jsonl").read_bytes().decode("utf-8")  # strict: raises on a bad byte
    sel = finetome.select(str(src), 4, 2)
    assert sel["bad"] == [("line 3", "invalid_utf8"), ("line 5", "invalid_text")]
