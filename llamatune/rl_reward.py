"""The GRPO policy's prompt and reward, apart from the trainer (:mod:`llamatune.rl`) so that choosing prompts
(:mod:`llamatune.rl_select`) and training share them without importing each other: the prompt is the eval's
rendering of a row, the reward the project's scorer's verdict (see :mod:`llamatune.rl`, "Reward")."""

from __future__ import annotations


def prompt_text(row: dict, template: str, tok=None) -> str:
    """The prompt the eval renders for ``row`` (up to the generation prompt), without a leading BOS when ``tok``
    adds one itself (so ``tok(text)`` gives the eval's ids)."""
    from llamatune.evals.toolcall import build_prompt

    text = build_prompt(row, template=template)
    bos = getattr(tok, "bos_token", None)
    if tok is not None and bos and text.startswith(bos) and tok("")["input_ids"][:1] == [tok.bos_token_id]:
        text = text[len(bos):]
    return text


# --- reward ----------------------------------------------------------------------------------------------

def reward(completion: str, row: dict, invalid_penalty: float = 0.5) -> tuple[float, dict]:
    """``(reward, score)`` of one raw completion (special tokens kept) for ``row``: see the module docstring."""
    from llamatune.evals.scoring import score_output
    from llamatune.evals.toolcall import prompt_messages
    from llamatune.generate import cut_at_stop

    score = score_output(cut_at_stop(completion), row["expected"], row.get("tools") or [], row["category"],
                         prompt_messages(row))
    if score["correct"]:
        return 1.0, score
    return (-float(invalid_penalty) if score["attempted"] and not score["format_valid"] else 0.0), score


def reward_function(rows: list[dict], tok, invalid_penalty: float = 0.5):
    """The TRL reward function over the dataset's ``item`` column (an index into ``rows``); it decodes the completion
    ids itself, keeping special tokens, and logs the share correct and the share of malformed calls."""

    def tool_call_reward(prompts, completions, completion_ids, item, log_metric=None, **_):
        scored = [reward(tok.decode(ids, skip_special_tokens=False), rows[i], invalid_penalty)
                  for ids, i in zip(completion_ids, item)]
        if log_metric is not None and scored:
            log_metric("correct", sum(s["correct"] for _, s in scored) / len(scored))
            log_metric("format_invalid", sum(s["attempted"] and not s["format_valid"] for _, s in scored) / len(scored))
        return [r for r, _ in scored]

    return tool_call_reward
