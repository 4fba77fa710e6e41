"""The one file store (llamatune.jsonl): append-only JSONL caches (answers, verdicts) after a crash mid-write: nothing already written is
lost, the torn fragment never glues onto the next row, and the next read does not fail."""

import json

import pytest

from llamatune.jsonl import append_jsonl, read_jsonl


def test_a_torn_write_is_cut_off_before_the_next_row(tmp_path):
    p = tmp_path / "answers.jsonl"
    append_jsonl(p, {"key": "a", "output": "Åse"})
    whole = json.dumps({"key": "b", "output": "snø og is"}, ensure_ascii=False).encode()
    with open(p, "ab") as f:  # a crash in the middle of a multi-byte character
        f.write(whole[: whole.index("ø".encode()) + 1])
    assert [r["key"] for r in read_jsonl(p, cache=True)] == ["a"]  # no UnicodeDecodeError, the fragment ignored
    append_jsonl(p, {"key": "c", "output": "ok"})
    assert [r["key"] for r in read_jsonl(p, cache=True)] == ["a", "c"]  # the fragment did not swallow the new row
    assert read_jsonl(p, cache=True) == read_jsonl(p, cache=True) and p.read_bytes().count(b"\n") == 2


def test_a_whole_row_missing_only_its_newline_is_kept(tmp_path):
    p = tmp_path / "verdicts.jsonl"
    p.write_text('{"key": "a"}\n{"key": "b"}', encoding="utf-8")
    assert [r["key"] for r in read_jsonl(p, cache=True)] == ["a", "b"]
    append_jsonl(p, {"key": "c"})
    assert [r["key"] for r in read_jsonl(p, cache=True)] == ["a", "b", "c"]


def test_a_bad_row_inside_the_file_names_its_line(tmp_path):
    p = tmp_path / "answers.jsonl"
    p.write_text('{"key": "a"}\n{"key": \n{"key": "c"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"answers.jsonl:2: not a valid JSON row"):
        read_jsonl(p, cache=True)


def test_answers_cache_key_includes_the_template(tmp_path):
    from llamatune.generate import Generator, generate_cached
    from llamatune.model_spec import ModelSpec

    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")

    class Fake(Generator):
        def __init__(self, template):
            self.spec, self.template, self.calls = ModelSpec("gguf", str(model)), template, 0

        def generate(self, messages, max_tokens=512, temperature=0.0, tools=None):
            self.calls += 1
            return f"{self.template}:{messages[-1]['content']}"

    prompts = [{"id": "p", "messages": [{"role": "user", "content": "hi"}]}]
    cache = tmp_path / "answers.jsonl"
    a, b, a2 = Fake("llama-3.2"), Fake("smollm2"), Fake("llama-3.2")
    assert generate_cached(a, prompts, cache, progress=False) == {"p": "llama-3.2:hi"}
    assert generate_cached(b, prompts, cache, progress=False) == {"p": "smollm2:hi"}  # not the other template's
    assert generate_cached(a2, prompts, cache, progress=False) == {"p": "llama-3.2:hi"} and a2.calls == 0
    assert (a.calls, b.calls) == (1, 1)


def test_whole_files_are_replaced_atomically(tmp_path, monkeypatch):
    """A crash while a results file is being rewritten leaves the old file whole, and no temporary file behind."""
    import os

    from llamatune import jsonl

    p = tmp_path / "results.json"
    jsonl.write_json(p, {"n": 1})
    real = os.replace

    def crash(src, dst):
        raise KeyboardInterrupt  # killed between writing the new file and renaming it

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        jsonl.write_json(p, {"n": 2})
    monkeypatch.setattr(os, "replace", real)
    assert jsonl.read_json(p) == {"n": 1} and [f.name for f in tmp_path.iterdir()] == ["results.json"]
    assert jsonl.write_jsonl(tmp_path / "rows.jsonl", [{"a": 1}, {"a": 2}]) == jsonl.sha256_file(tmp_path / "rows.jsonl")
    assert jsonl.read_jsonl(tmp_path / "rows.jsonl") == [{"a": 1}, {"a": 2}]


def test_read_json_names_a_file_that_is_broken_missing_or_of_the_wrong_shape(tmp_path):
    from llamatune import jsonl

    p = tmp_path / "config.json"
    p.write_text("[1, 2]")
    assert jsonl.read_json(p) == [1, 2]  # any document unless a shape is expected
    with pytest.raises(ValueError, match=r"config\.json: expected a JSON object, got list"):
        jsonl.read_json(p, expect=dict)
    p.write_text('{"model_type": "lla')
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        jsonl.read_json(p, expect=dict)
    assert jsonl.read_json(tmp_path / "absent.json", {}, expect=dict) == {}
    with pytest.raises(FileNotFoundError, match=r"absent\.json: no such file"):
        jsonl.read_json(tmp_path / "absent.json")


def test_a_killed_writers_temporary_file_is_cleared_by_the_next_write(tmp_path):
    import subprocess

    from llamatune import jsonl

    p = tmp_path / "manifest.json"
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid now names no process
    (tmp_path / f".manifest.json.tmp{dead.pid}").write_text('{"half":')  # a writer killed before its rename
    (tmp_path / ".other.json.tmp1").write_text("not ours")
    jsonl.write_json(p, {"n": 1})
    assert sorted(f.name for f in tmp_path.iterdir()) == [".other.json.tmp1", "manifest.json"]


def test_replacing_a_file_or_a_directory_is_all_or_nothing(tmp_path):
    from llamatune.jsonl import replacing

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with replacing(gguf) as tmp:
            tmp.write_bytes(b"ne")  # the quantizer fails halfway
            raise RuntimeError("quantize failed")
    assert gguf.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    (tmp_path / "m.gguf.part").write_bytes(b"left by a kill")
    with replacing(gguf) as tmp:
        assert not tmp.exists()  # a leftover of a killed build is cleared first
        tmp.write_bytes(b"new")
    assert gguf.read_bytes() == b"new"
    merged = tmp_path / "merged"
    (merged).mkdir()
    (merged / "stale.bin").write_bytes(b"x")
    with replacing(merged) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in merged.iterdir()) == ["config.json"]
    with pytest.raises(FileNotFoundError, match="finished without writing it"):
        with replacing(tmp_path / "never.gguf"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "merged"]


def test_a_cache_keeps_the_last_row_of_a_key_and_survives_reopening(tmp_path):
    from llamatune.jsonl import JsonlCache

    c = JsonlCache(tmp_path / "v.jsonl")
    c.add({"key": "a", "winner": "invalid"})
    c.add({"key": "a", "winner": "A"})  # a retried verdict wins
    with open(c.path, "ab") as f:
        f.write(b'{"key": "b", "win')  # killed mid-write
    again = JsonlCache(c.path)
    assert len(again) == 1 and again.get("a")["winner"] == "A" and "b" not in again
    again.add({"key": "b", "winner": "tie"})
    assert JsonlCache(c.path).get("b") == {"key": "b", "winner": "tie"}


def test_strict_reads_name_the_file_line_and_field(tmp_path):
    from llamatune.jsonl import read_jsonl

    p = tmp_path / "data.jsonl"
    p.write_bytes(b'{"id": 1}\n{"id": 2, "x": "\xff"}\n')
    with pytest.raises(ValueError, match=r"data.jsonl:2: not a valid JSON row"):
        read_jsonl(p)
    p.write_text('{"id": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"data.jsonl:2: expected a JSON object, got list"):
        read_jsonl(p)
    p.write_text('{"id": 1}\n{"idx": 2}\n')
    with pytest.raises(ValueError, match=r"data.jsonl:2: missing field 'id'"):
        read_jsonl(p, ("id",))
    p.write_text('{"id": 1}\n{"id": 2')  # strict: a torn last line is an error, not skipped
    with pytest.raises(ValueError, match=r"data.jsonl:2"):
        read_jsonl(p)


def test_read_json_names_a_missing_or_broken_file_unless_a_default_is_given(tmp_path):
    from llamatune.jsonl import read_json

    missing, broken = tmp_path / "run.json", tmp_path / "torn.json"
    broken.write_text('{"status": "do')
    assert read_json(missing, {}) == {} and read_json(missing, None) is None
    with pytest.raises(FileNotFoundError, match="run.json: no such file"):
        read_json(missing)
    for default in ((), {}):  # a broken file is an error with or without a default: never taken as empty
        with pytest.raises(ValueError, match="torn.json: not valid JSON"):
            read_json(broken, *default)
