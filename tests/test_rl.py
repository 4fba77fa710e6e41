"""GRPO after the SFT (llamatune.rl): the reward is the project's scorer, prompts never a validation or test prompt,
and a short run on the tiny Llama (real Llama 3.2 tokenizer) trains the SFT adapter, base frozen, into a run directory
that export takes; an interrupted run resumes from its checkpoint."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO, Capture
from llamatune.chatformat import render_calls
from llamatune.data.funccall import DEFAULT_PROPORTIONS, build_split, strip_private, train_style
from llamatune.jsonl import write_jsonl

pytest.importorskip("trl")
pytest.importorskip("peft")

END = "<|im_end|>"


def _rows(n: int = 120, seed: int = 5) -> list[dict]:
    return strip_private(build_split("val", n, seed, DEFAULT_PROPORTIONS, stream="grpo"))


def _first(rows: list[dict], category: str) -> dict:
    return next(r for r in rows if r["category"] == category)


def test_the_reward_is_the_scorers_verdict():
    from llamatune.rl_reward import reward

    rows = _rows()
    call = _first(rows, "single_call")
    right = render_calls([call["expected"]], "smollm2")
    assert reward(right + END + "\nleft-over text after the turn", call)[0] == 1.0
    wrong = {**call["expected"], "arguments": {k: "Nowhere-at-all" for k in call["expected"]["arguments"]}}
    assert reward(render_calls([wrong], "smollm2") + END, call)[0] == 0.0
    assert reward("I think it is probably fine." + END, call)[0] == 0.0  # no call where one is needed
    assert reward('<tool_call>[\n{"name": "' + END, call)[0] == -0.5  # a call attempt that does not parse
    assert reward('<tool_call>[\n{"name": "', call, invalid_penalty=0.0)[0] == 0.0

    none = _first(rows, "no_tool")
    some_tool = none["tools"][0].get("function", none["tools"][0])["name"]
    assert reward(render_calls([{"name": some_tool, "arguments": {}}], "smollm2") + END, none)[0] == 0.0
    assert reward(none["messages"][-1]["content"] + END, none)[0] == 1.0

    after = _first(rows, "tool_result")
    assert reward(after["messages"][-1]["content"] + END, after)[0] == 1.0  # grounded in the tool result
    assert reward("Done! Anything else?" + END, after)[0] == 0.0  # repeats nothing of the result
    assert reward(render_calls([after["expected"] or after["messages"][-3]["tool_calls"][0]], "smollm2") + END,
                  after)[0] == 0.0  # calls again after the result

    par = _first(rows, "parallel")
    assert reward(render_calls(list(reversed(par["expected"])), "smollm2") + END, par)[0] == 1.0  # any order
    assert reward(render_calls(par["expected"][:1], "smollm2") + END, par)[0] == 0.0  # one call missing


def test_prompts_come_from_training_families_and_never_equal_a_validation_or_test_prompt(tmp_path):
    from llamatune.demo_data import prompt_key, validation_rows
    from llamatune.rl import _check_excluded, exclusion_rows, prompt_rows

    free = prompt_rows(40, seed=3)
    assert len(free) == 40 and all(r["id"].startswith("fc-grpo-") for r in free)
    assert len({prompt_key(r) for r in free}) == 40
    assert {r["category"] for r in free} == set(DEFAULT_PROPORTIONS)
    # a directory of exclusions: its JSONL files but train.jsonl (which may share prompts on purpose)
    val = validation_rows(set(), 30)
    test = strip_private(build_split("test", 30, 0))
    write_jsonl(tmp_path / "val.jsonl", val + [free[0]])
    write_jsonl(tmp_path / "eval.jsonl", test + [free[7]])
    write_jsonl(tmp_path / "train.jsonl", [free[9]])
    excluded = exclusion_rows([tmp_path])
    assert len(excluded) == len(val) + len(test) + 2
    rows = prompt_rows(40, seed=3, exclude=excluded)
    banned = {prompt_key(r) for r in excluded}
    assert len(rows) == 40 and not banned & {prompt_key(r) for r in rows}
    assert prompt_key(free[0]) not in {prompt_key(r) for r in rows}
    assert prompt_key(free[9]) in {prompt_key(r) for r in rows}  # train.jsonl is not an exclusion
    with pytest.raises(ValueError, match="equal an excluded"):
        _check_excluded(free, excluded)
    with pytest.raises(FileNotFoundError, match="recipe exclude"):
        exclusion_rows([tmp_path / "missing.jsonl"])


def test_prompt_text_is_the_evals_prompt_token_for_token(tiny_model_dir):
    from transformers import AutoTokenizer

    from llamatune.evals.toolcall import build_prompt
    from llamatune.rl_reward import prompt_text

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    row = _first(_rows(), "tool_result")
    ids = tok(prompt_text(row, "llama-3.2", tok))["input_ids"]
    assert ids == tok(build_prompt(row, template="llama-3.2"), add_special_tokens=False)["input_ids"]
    assert ids.count(tok.bos_token_id) == 1


# --- a tiny run ------------------------------------------------------------------------------------------

# The tiny model is random: its samples are noise, which the scorer counts wrong for every prompt alike, and equal
# rewards in a group give GRPO no gradient. These rows make noise sometimes right: an answer after a tool result is
# grounded when it repeats a value of the result, and these values are common pieces of words, which some samples
# happen to contain and others not.
PIECES = {"endings": ["tion", "ment", "ness", "able", "ally", "ing ", "ated", "ence"]}


def _pieces_row(i: int, question: str) -> dict:
    call = {"type": "function", "function": {"name": "get_word_endings", "arguments": {}}}
    return {"id": f"fc-grpo-t{i}", "category": "tool_result", "expected": None, "tools": [{
        "type": "function", "function": {"name": "get_word_endings", "description": "Common word endings.",
                                         "parameters": {"type": "object", "properties": {}}}}],
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "tool_calls": [call]},
                         {"role": "tool", "content": PIECES}, {"role": "assistant", "content": "42."}]}


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    from llamatune.recipe import load_recipe
    from llamatune.train import train

    root = tmp_path_factory.mktemp("rl")
    rows = strip_private(build_split("train", 6, 0, {"single_call": 0.5, "tool_result": 0.5}, style=train_style(0.0)))
    write_jsonl(root / "data" / "train.jsonl", rows)
    write_jsonl(root / "data" / "eval.jsonl", rows[:1])
    return train(load_recipe(REPO / "FuncCall" / "recipes" / "tiny-cpu.yaml", [
        "--dataset_path", str(root / "data"), "--output_dir", str(root / "sft"), "--max_steps", "2", "--save_steps",
        "2", "--eval_samples", "0", "--packing", "false", "--max_length", "1024"]))




def _stop_at(step: int):
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= step:
                control.should_save = control.should_training_stop = True

    return StopAt()


@pytest.fixture(scope="module")
def grpo_run(sft_run, tmp_path_factory):
    """Two GRPO steps (2 prompts × 4 completions), stopped after the first and resumed: (run_dir, model)."""
    from llamatune.rl import grpo

    prompts = [_pieces_row(0, "Tell me some word endings."), _pieces_row(1, "What suffixes are common?")]
    out = tmp_path_factory.mktemp("rl") / "grpo"
    kw = dict(exclude=[], steps=2, num_generations=4, prompts_per_step=2,
              overrides=["--max_completion_length", "16", "--save_steps", "1", "--learning_rate", "1e-3"])
    grpo(sft_run, prompts, out, callbacks=[_stop_at(1)], **kw)
    first = json.loads((out / "run.json").read_text())
    assert first["global_step"] == 1 and (out / "checkpoint-1").exists()
    cap = Capture()
    grpo(sft_run, prompts, out, callbacks=[cap], **kw)  # resumes from checkpoint-1 (grpo resumes by default)
    return out, type(cap).model


def test_grpo_trains_the_sft_adapter_with_the_base_frozen(grpo_run, sft_run, tiny_model_dir):
    from safetensors.torch import load_file

    run_dir, model = grpo_run
    state = json.loads((run_dir / "trainer_state.json").read_text())
    steps = [h for h in state["log_history"] if "reward" in h]
    assert state["global_step"] == 2 and [h["step"] for h in steps] == [1, 2]
    assert any(h["frac_reward_zero_std"] < 1 for h in steps), "no group had different rewards: no gradient"
    sft = load_file(sft_run / "adapter" / "adapter_model.safetensors")
    tuned = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert set(tuned) == set(sft)
    assert any(not tuned[k].equal(sft[k]) for k in sft), "GRPO left the SFT adapter as it was"
    base = load_file(tiny_model_dir / "model.safetensors")
    checked = 0
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert p.requires_grad, name
            continue
        assert not p.requires_grad, name
        key = name.replace("base_model.model.", "", 1).replace(".base_layer", "")
        assert p.detach().equal(base[key]), f"base weight changed: {key}"
        checked += 1
    assert checked >= 15


def test_the_run_directory_is_one_export_takes(grpo_run, sft_run, tmp_path):
    from llamatune.export import merge, resolve_base
    from llamatune.models import tiny_model_dir

    run_dir, _ = grpo_run
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "done" and run["global_step"] == 2 and run["kind"] == "grpo"
    assert run["recipe"]["model_name_or_path"] == "tiny" and run["recipe"]["chat_template"] == "llama-3.2"
    assert run["resumed_from"] == "checkpoint-1" and len(run["resumes"]) == 1
    assert run["data"]["sft_run"] == str(sft_run) and run["fast_lm_head"] is True
    assert {"reward_first", "reward_last", "correct_last"} <= set(run["reward"])
    assert (run_dir / "reward.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["id"] for r in map(json.loads, (run_dir / "prompts.jsonl").read_text().splitlines())] == \
        ["fc-grpo-t0", "fc-grpo-t1"]
    assert resolve_base(run_dir) == str(tiny_model_dir())
    merged = merge(run_dir, tmp_path / "merged")
    assert (merged / "config.json").exists() and "<|start_header_id|>" in (merged / "chat_template.jinja").read_text()


def test_a_finished_run_is_not_trained_again_nor_overwritten(grpo_run, sft_run):
    from llamatune.rl import grpo

    run_dir, _ = grpo_run
    before = (run_dir / "adapter" / "adapter_model.safetensors").read_bytes()
    prompts = [_pieces_row(0, "Tell me some word endings."), _pieces_row(1, "What suffixes are common?")]
    kw = dict(exclude=[], steps=2, num_generations=4, prompts_per_step=2,
              overrides=["--max_completion_length", "16", "--save_steps", "1", "--learning_rate", "1e-3"])
    with pytest.raises(FileExistsError, match="--resume"):
        grpo(sft_run, prompts, run_dir, resume=False, **kw)
    with pytest.raises(ValueError, match="another recipe or data"):
        grpo(sft_run, prompts[:1], run_dir, **kw)
    grpo(sft_run, prompts, run_dir, **kw)  # the final checkpoint: finished from it, no step more
    assert json.loads((run_dir / "run.json").read_text())["global_step"] == 2
    assert (run_dir / "adapter" / "adapter_model.safetensors").read_bytes() == before


def test_recipe_keys_are_checked():
    from llamatune.rl import RECIPE, split_rl_recipe
    from llamatune.recipe import load_recipe

    recipe = load_recipe(RECIPE)
    extra, cfg = split_rl_recipe(recipe)
    assert cfg["num_generations"] == 4 and cfg["use_vllm"] is False and cfg["beta"] == 0.0
    assert extra["exclude"] and extra["prompt_style"] == "eval"
    with pytest.raises(ValueError, match=r"num_generation \(did you mean num_generations"):
        split_rl_recipe({**recipe, "num_generation": 4})
    with pytest.raises(ValueError, match="'exclude' is required"):
        split_rl_recipe({k: v for k, v in recipe.items() if k != "exclude"})
    with pytest.raises(ValueError, match="select_samples needs select_gguf"):
        split_rl_recipe({**recipe, "select_samples": 4})


def test_the_completion_only_head_gives_trls_log_probs(sft_run, tmp_path):
    """``fast_lm_head`` changes the work, not the numbers: the per-token log-probs and entropies GRPO's loss uses
    equal TRL's stock head's (which scores every prompt position too) on a padded batch of two sequences."""
    import torch

    from llamatune.rl import RECIPE, build_trainer
    from llamatune.recipe import load_recipe

    prompts = [_pieces_row(0, "Tell me some word endings."), _pieces_row(1, "What suffixes are common?")]
    got = {}
    for fast in (False, True):
        recipe = load_recipe(RECIPE, [f"--sft_run={sft_run}", "--exclude=[]", f"--fast_lm_head={str(fast).lower()}"])
        trainer, info = build_trainer(recipe, prompts, tmp_path / str(fast))
        assert info["fast_lm_head"] is fast
        tok = trainer.processing_class
        ids = [tok(p)["input_ids"] + [11, 22, 33, 44, 55][: 3 + 2 * i] for i, p in enumerate(trainer.train_dataset["prompt"])]
        width = max(map(len, ids))
        input_ids = torch.tensor([[tok.pad_token_id] * (width - len(x)) + x for x in ids])  # left-padded, as GRPO
        mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
        with torch.no_grad():
            got[fast] = trainer._get_per_token_logps_and_entropies(trainer.model, input_ids, mask, 5, compute_entropy=True)
    assert got[False][0].shape == (2, 5) and bool((got[False][0] < 0).all()) and bool((got[False][1] > 0).all())
    for stock, fast in zip(got[False][:2], got[True][:2]):
        torch.testing.assert_close(fast, stock, atol=1e-5, rtol=1e-4)


def test_select_samples_trains_on_the_prompts_the_selection_keeps(sft_run, tmp_path, monkeypatch):
    """With ``select_samples`` the prompts (the recipe's drawn ones, or the caller's) go through :func:`llamatune.rl_select.uncertain` (the SFT
    run's template, the recipe's sampling temperature and completion length, a cache in the run directory) and only
    the rows it keeps reach the trainer."""
    from llamatune import rl, rl_select
    from llamatune.recipe import load_recipe

    seen = {}

    def fake_uncertain(rows, gguf, template, k, **kw):
        seen.update(n=len(rows), gguf=gguf, template=template, k=k, **kw)
        return rows[::3], {"candidates": len(rows), "kept": len(rows[::3])}

    class Built(Exception):
        pass

    def fake_build(recipe, prompts, run_dir, callbacks=None):
        seen["prompts"] = prompts
        raise Built

    monkeypatch.setattr(rl_select, "uncertain", fake_uncertain)
    monkeypatch.setattr(rl, "build_trainer", fake_build)
    recipe = load_recipe(rl.RECIPE, [f"--sft_run={sft_run}", "--exclude=[]", "--n_prompts=12", "--select_samples=4",
                                     "--select_gguf=sft.gguf", "--temperature=0.7", "--max_completion_length=32"])
    with pytest.raises(Built):
        rl.train_grpo(recipe, run_dir=tmp_path / "grpo")
    drawn = rl.prompt_rows(12, 0, [], "eval")
    assert seen["n"] == 12 and seen["k"] == 4 and seen["gguf"] == "sft.gguf"
    assert seen["template"] == json.loads((sft_run / "run.json").read_text())["recipe"]["chat_template"]
    assert (seen["temperature"], seen["max_tokens"], seen["cache"]) == (0.7, 32, tmp_path / "grpo" / "select.jsonl")
    assert seen["prompts"] == drawn[::3]

    # prompts given by the caller (bench/grpo_val.py, a sweep) go through the same selection
    given = drawn[1:7]
    with pytest.raises(Built):
        rl.train_grpo(recipe, prompts=given, run_dir=tmp_path / "grpo-given")
    assert seen["n"] == 6 and seen["prompts"] == given[::3]
    assert seen["cache"] == tmp_path / "grpo-given" / "select.jsonl"
