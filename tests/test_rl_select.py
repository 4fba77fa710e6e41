"""Choosing GRPO prompts where the SFT model is unsure (llamatune.rl_select): rewards of seeded samples from a GGUF on
the one decoding loop, cached so an interrupted run resumes, and the selection keeps exactly the rows whose rewards
differ."""

from __future__ import annotations

import pytest

from llamatune.data.funccall import DEFAULT_PROPORTIONS, build_split, strip_private
from llamatune.jsonl import read_jsonl

pytest.importorskip("llama_cpp")


def _rows(n: int = 6) -> list[dict]:
    return strip_private(build_split("val", 40, 3, DEFAULT_PROPORTIONS, stream="grpo"))[:n]


def test_samples_are_seeded_per_completion_cached_and_resumed(tiny_gguf, tmp_path, monkeypatch):
    from llamatune import generate
    from llamatune.rl_select import sample_rewards

    rows, cache = _rows(4), tmp_path / "samples.jsonl"
    first = sample_rewards(rows, tiny_gguf["f16"], "llama-3.2", k=2, max_tokens=8, cache=cache)
    assert len(first) == 4 and all(len(r) == 2 for r in first)
    assert all(x in (1.0, 0.0, -0.5) for r in first for x in r)
    stored = read_jsonl(cache)
    assert len(stored) == 8 and sorted(r["sample"] for r in stored) == [0] * 4 + [1] * 4
    by_row = {}
    for r in stored:
        by_row.setdefault(r["id"], {})[r["sample"]] = r["output"]
    # a random model at temperature 1 over a 128k vocabulary: the two seeds of a row draw different text
    assert all(s[0] != s[1] for s in by_row.values())

    # the same call again reads every completion from the cache: no model is opened
    def no_model(*a, **k):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(generate, "LlamaCppGenerator", no_model)
    assert sample_rewards(rows, tiny_gguf["f16"], "llama-3.2", k=2, max_tokens=8, cache=cache) == first
    monkeypatch.undo()

    # a torn run: half the cache lost; the rest is sampled again and equals the first run (seeded draws)
    cache.write_text("".join(line + "\n" for line in cache.read_text().splitlines()[:3]))
    assert sample_rewards(rows, tiny_gguf["f16"], "llama-3.2", k=2, max_tokens=8, cache=cache) == first
    assert {(r["id"], r["sample"]): r["output"] for r in read_jsonl(cache)} == {
        (r["id"], r["sample"]): r["output"] for r in stored}


def test_bad_settings_are_refused(tiny_gguf, tmp_path):
    from llamatune.rl_select import sample_rewards

    with pytest.raises(ValueError, match="k must be >= 2"):
        sample_rewards(_rows(1), tiny_gguf["f16"], "llama-3.2", k=1)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sample_rewards(_rows(1), tiny_gguf["f16"], "llama-3.2", temperature=0.0)
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        sample_rewards(_rows(1), tmp_path / "missing.gguf", "llama-3.2")


def test_only_prompts_with_a_reward_spread_are_kept(monkeypatch):
    from llamatune import rl_select

    rows = _rows(5)
    rewards = [[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [-0.5, 0.0, 0.0], [-0.5, -0.5, -0.5]]
    monkeypatch.setattr(rl_select, "sample_rewards", lambda rows, gguf, template, k, **kw: rewards)
    kept, stats = rl_select.uncertain(rows, "x.gguf", "smollm2", k=3)
    assert kept == [rows[1], rows[3]]
    assert stats["candidates"] == 5 and stats["kept"] == 2 and stats["frac_reward_zero_std"] == 0.6
    assert stats["mean_reward"] == round(sum(map(sum, rewards)) / 15, 4)
    assert sum(c["candidates"] for c in stats["by_category"].values()) == 5
    assert sum(c["kept"] for c in stats["by_category"].values()) == 2
