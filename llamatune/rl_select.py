"""GRPO prompts where the policy is unsure: a group whose completions all earn the same reward has zero advantage and
teaches nothing, so the prompts are chosen before training by sampling the SFT model on each of them.

This is DAPO's dynamic sampling (Yu et al., 2025: "over-sample and filter out prompts with accuracy equal to 1 and
0") done once, up front, on the SFT model's GGUF with the project's one decoding loop, instead of inside the trainer:
``k`` completions per candidate prompt at the GRPO sampling temperature (no top-k, top-p or min-p cut, as TRL samples),
each scored by :func:`llamatune.rl_reward.reward`; a prompt is kept when its rewards are not all equal. The ``k``
samples of one prompt share its KV prefix (the decoder copies the evaluated prompt), so a candidate costs one prompt
evaluation.

    from llamatune.rl_select import uncertain
    rows, stats = uncertain(prompt_rows(256, exclude=...), "runs/demo/gguf/smollm2-135m-funccall-f16.gguf", "smollm2")

``stats``: candidates and kept, overall and per category, the mean reward of the candidates, the seconds the sampling
took (cached samples cost none), and the share of groups with zero reward spread (TRL logs the same as ``frac_reward_zero_std``), so the run can say what the filter removed.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path


def sample_rewards(rows: list[dict], gguf: str | Path, template: str, k: int = 4, temperature: float = 1.0,
                   max_tokens: int = 64, seed: int = 0, threads: int | None = None, invalid_penalty: float = 0.5,
                   cache: str | Path | None = None) -> list[list[float]]:
    """``k`` rewards per row: completions of the eval's prompt for the row (:func:`llamatune.rl_reward.prompt_text`),
    sampled from ``gguf`` at ``temperature`` with seeds ``seed·k + j`` (one stream per completion, so a row's
    samples differ and a rerun repeats them). ``cache``: a JSONL of the completions (keyed by the GGUF's content, the
    prompt and the sampling settings), so an interrupted run resumes where it stopped."""
    import hashlib
    import json

    from tqdm.auto import tqdm

    from llamatune.jsonl import JsonlCache
    from llamatune.model_spec import fingerprint, parse_spec
    from llamatune.progress import tqdm_disable
    from llamatune.rl_reward import prompt_text, reward
    from llamatune.sampling import sampler_factory

    if k < 2:
        raise ValueError(f"k must be >= 2 (a spread needs two samples), got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 (greedy samples never differ), got {temperature}")
    if not Path(gguf).is_file():
        raise FileNotFoundError(f"{gguf}: no such GGUF (the SFT run exported: llamatune export <run>)")
    spec = parse_spec(str(gguf))
    fp, texts = fingerprint(spec), [prompt_text(r, template) for r in rows]
    store = JsonlCache(cache) if cache else None
    keys = [[hashlib.sha256(json.dumps([fp, t, temperature, max_tokens, seed * k + j]).encode()).hexdigest()
             for j in range(k)] for t in texts]
    todo = [(i, j) for i in range(len(rows)) for j in range(k) if store is None or keys[i][j] not in store]
    done: dict[tuple[int, int], str] = {}
    if todo:
        from llamatune.generate import LlamaCppGenerator

        gen = LlamaCppGenerator(spec, n_threads=threads, template=template)
        try:
            samplers = [sampler_factory(temperature, top_k=0, top_p=1.0, min_p=0.0, seed=seed * k + j) for _, j in todo]
            bar = tqdm(total=len(todo), desc="sampling GRPO candidates", unit="completion", disable=tqdm_disable())
            for n, text in gen.complete_each([texts[i] for i, _ in todo], max_tokens=max_tokens, sampler=samplers):
                i, j = todo[n]
                done[i, j] = text
                if store is not None:
                    store.add({"key": keys[i][j], "id": rows[i].get("id"), "sample": j, "output": text})
                bar.update(1)
            bar.close()
        finally:
            gen.close()
    return [[reward(done[i, j] if (i, j) in done else store.get(keys[i][j])["output"], row, invalid_penalty)[0]
             for j in range(k)] for i, row in enumerate(rows)]


def uncertain(rows: list[dict], gguf: str | Path, template: str, k: int = 4, **kwargs) -> tuple[list[dict], dict]:
    """``(kept rows, stats)``: the rows whose ``k`` sampled rewards (:func:`sample_rewards`, ``kwargs`` passed on)
    are not all equal, in their order."""
    t0 = time.perf_counter()
    rewards = sample_rewards(rows, gguf, template, k=k, **kwargs)
    kept = [r for r, rs in zip(rows, rewards) if max(rs) > min(rs)]
    cats, kept_cats = Counter(r["category"] for r in rows), Counter(r["category"] for r in kept)
    flat = [x for rs in rewards for x in rs]
    stats = {"candidates": len(rows), "kept": len(kept), "k": k, "temperature": kwargs.get("temperature", 1.0),
             "mean_reward": round(sum(flat) / max(1, len(flat)), 4),
             "frac_reward_zero_std": round(1 - len(kept) / max(1, len(rows)), 4),
             "seconds": round(time.perf_counter() - t0, 1),
             "by_category": {c: {"candidates": n, "kept": kept_cats.get(c, 0)} for c, n in sorted(cats.items())}}
    print(f"[rl] {len(kept)} of {len(rows)} candidate prompts have a reward spread over {k} samples "
          f"(mean reward {stats['mean_reward']})", file=sys.stderr)
    return kept, stats
