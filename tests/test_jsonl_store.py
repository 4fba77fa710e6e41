"""The append-only JSONL caches (answers, judge verdicts) after a crash mid-write: nothing already written is
lost, the torn fragment never glues onto the next row, and the next read does not fail."""

import json

import pytest

from llamatune.generate import append_jsonl, read_jsonl


def test_a_torn_write_is_cut_off_before_the_next_row(tmp_path):
    p = tmp_path / "answers.jsonl"
    append_jsonl(p, {"key": "a", "output": "Åse"})
    whole = json.dumps({"key": "b", "output": "snø og is"}, ensure_ascii=False).encode()
    with open(p, "ab") as f:  # a crash in the middle of a multi-byte character
        f.write(whole[: whole.index("ø".encode()) + 1])
    assert [r["key"] for r in read_jsonl(p)] == ["a"]  # no UnicodeDecodeError, the fragment ignored
    append_jsonl(p, {"key": "c", "output": "ok"})
    assert [r["key"] for r in read_jsonl(p)] == ["a", "c"]  # the fragment did not swallow the new row
    assert read_jsonl(p) == read_jsonl(p) and p.read_bytes().count(b"\n") == 2


def test_a_whole_row_missing_only_its_newline_is_kept(tmp_path):
    p = tmp_path / "verdicts.jsonl"
    p.write_text('{"key": "a"}\n{"key": "b"}', encoding="utf-8")
    assert [r["key"] for r in read_jsonl(p)] == ["a", "b"]
    append_jsonl(p, {"key": "c"})
    assert [r["key"] for r in read_jsonl(p)] == ["a", "b", "c"]


def test_a_bad_row_inside_the_file_names_its_line(tmp_path):
    p = tmp_path / "answers.jsonl"
    p.write_text('{"key": "a"}\n{"key": \n{"key": "c"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"answers.jsonl:2: not a valid JSON row"):
        read_jsonl(p)


def test_answers_cache_key_includes_the_template(tmp_path):
    from llamatune.generate import Generator, ModelSpec, generate_cached

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
