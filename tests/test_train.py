"""Training stage on the tiny offline model: exact assistant-only labels, learning with a frozen base, resume.

One short uninterrupted run (module fixture) serves the learning, artifact and resume tests; the resumed run is
killed for real (``os._exit`` in a subprocess right after its checkpoint is written) and continued through the
CLI's ``--resume``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, REPO, Capture
from llamatune.data.finetome import prepare
from llamatune.data.io import write_jsonl

pytest.importorskip("trl")
pytest.importorskip("peft")

TINY = REPO / "FineTome" / "recipes" / "tiny-cpu.yaml"
PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
STEPS, SAVE = 8, 4
# Small steps so the suite stays fast on 2 cores: one ≤128-token pack per step.
FAST = ["--max_steps", str(STEPS), "--save_steps", str(SAVE), "--eval_steps", "4", "--eval_samples", "4",
        "--max_length", "128", "--per_device_train_batch_size", "1", "--learning_rate", "5e-3"]

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CONVERSATIONS = [
    {"id": "single", "messages": [{"role": "user", "content": "What is 2+2?"},
                                  {"role": "assistant", "content": "  2 + 2 = 4.\n"}]},
    {"id": "multi", "messages": [{"role": "system", "content": "Answer briefly."},
                                 {"role": "user", "content": "Name a colour."},
                                 {"role": "assistant", "content": "Blue."},
                                 {"role": "user", "content": "Another one?"},
                                 {"role": "assistant", "content": "Green, like grass."}]},
    {"id": "tool", "tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": {"city": "Paris", "temperature_c": 12}},
        {"role": "assistant", "content": "It is 12 °C in Paris."}]},
]


def expected_spans(messages: list[dict]) -> list[str]:
    """What assistant-only loss must train on: each assistant turn as the template renders it, plus <|eot_id|>."""
    out = []
    for m in messages:
        if m["role"] != "assistant":
            continue
        if "tool_calls" in m:
            fn = m["tool_calls"][0]["function"]
            out.append(json.dumps({"name": fn["name"], "parameters": fn["arguments"]}, ensure_ascii=False) + "<|eot_id|>")
        else:
            out.append(m["content"].strip() + "<|eot_id|>")
    return out


def label_spans(tok, labels: list[int]) -> list[str]:
    spans, cur = [], []
    for x in list(labels) + [-100]:
        if x != -100:
            cur.append(x)
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    return spans


def assert_padding_free_loss_equals_padded(trainer, examples):
    """A padding-free batch (sequences concatenated, positions restarting) gives the padded batch's loss: the
    attention does not leak across the packed sequences on this backend."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    pad = trainer.processing_class.pad_token_id
    examples = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples]
    losses = []
    for padding_free in (False, True):
        batch = DataCollatorForLanguageModeling(pad_token_id=pad, padding_free=padding_free)(examples)
        assert ("attention_mask" in batch) != padding_free
        trainer.model.eval()
        with torch.no_grad():
            losses.append(trainer.compute_loss(trainer.model, batch).item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finetome")
    prepare(str(FIXTURES / "finetome_sample.jsonl"), out, 40, 12, max_bad_fraction=0.2)
    return out


def tiny_recipe(data_dir: Path, run_dir: Path, *extra: str) -> dict:
    from llamatune.recipe import load_recipe

    return load_recipe(TINY, [*FAST, "--dataset_path", str(data_dir), "--output_dir", str(run_dir), *extra])




@pytest.fixture(scope="module")
def full_run(data_dir, tmp_path_factory):
    """An uninterrupted tiny run: (run_dir, trained model object)."""
    from llamatune.train import train

    run_dir = tmp_path_factory.mktemp("runs") / "full"
    cap = Capture()
    out = train(tiny_recipe(data_dir, run_dir), callbacks=[cap])
    assert out == run_dir
    return run_dir, type(cap).model


def test_recipes_load_and_validate():
    from llamatune.recipe import load_recipe, split_recipe

    big = load_recipe(REPO / "FineTome" / "recipes" / "llama-3.2-3b-lora.yaml")
    extra, sft, lora = split_recipe(big)
    assert extra["model_name_or_path"] in ("unsloth/Llama-3.2-3B-Instruct", "meta-llama/Llama-3.2-3B-Instruct")
    assert (lora["r"], lora["lora_alpha"], sorted(lora["target_modules"])) == (16, 16, sorted(PROJ))
    assert (sft["num_train_epochs"], sft["learning_rate"], sft["assistant_only_loss"]) == (2, 2e-4, True)
    tiny = load_recipe(TINY, ["--learning_rate", "1e-3", "--max_steps=7", "--target_modules", "[q_proj, v_proj]"])
    assert (tiny["learning_rate"], tiny["max_steps"], tiny["target_modules"]) == (1e-3, 7, ["q_proj", "v_proj"])
    assert tiny["model_name_or_path"] == "tiny" and tiny["run_name"] == "tiny-cpu"
    assert load_recipe(TINY, ["--save_strategy", "no", "--packing", "false"])["save_strategy"] == "no"  # not YAML 1.1 False
    with pytest.raises(ValueError, match=r"learning_rat \(did you mean learning_rate"):
        split_recipe({**tiny, "learning_rat": 1})
    with pytest.raises(ValueError, match="missing a value"):
        load_recipe(TINY, ["--max_steps"])


def test_labels_are_exactly_the_assistant_turns(tmp_path):
    """Non-masked labels decode to the assistant turns + <|eot_id|>: single, multi-turn with system, tool call."""
    from llamatune.train import build_trainer

    write_jsonl(tmp_path / "train.jsonl", CONVERSATIONS)
    write_jsonl(tmp_path / "eval.jsonl", CONVERSATIONS[:1])
    for packing in ("false", "true"):
        recipe = tiny_recipe(tmp_path, tmp_path / f"run-{packing}", "--packing", packing, "--max_length", "1024")
        trainer, info = build_trainer(recipe)
        tok = trainer.processing_class
        rows = trainer.train_dataset
        if packing == "false":
            assert len(rows) == 3
            for conv, row in zip(CONVERSATIONS, rows):
                assert label_spans(tok, row["labels"]) == expected_spans(conv["messages"]), conv["id"]
                # the inputs hold the system/user/tool turns, none of which is trained
                text = tok.decode(row["input_ids"])
                assert all((m.get("content") if isinstance(m.get("content"), str) else "").strip() in text
                           for m in conv["messages"] if m["role"] in ("system", "user"))
            assert '"name": "get_weather"' in tok.decode(rows[2]["input_ids"])  # the tools column reached the prompt
            assert_padding_free_loss_equals_padded(trainer, [rows[i] for i in range(3)])
        else:
            assert info["padding_free"] is True
            got = sorted(s for row in rows for s in label_spans(tok, row["labels"]))
            assert got == sorted(s for c in CONVERSATIONS for s in expected_spans(c["messages"]))


def test_training_lowers_loss_freezes_base_and_moves_lora(full_run, tiny_model_dir):
    from safetensors.torch import load_file

    run_dir, model = full_run
    state = json.loads((run_dir / "trainer_state.json").read_text())
    assert state["global_step"] == STEPS
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    evals = [h["eval_loss"] for h in state["log_history"] if "eval_loss" in h]
    assert len(losses) == STEPS
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert evals[-1] < evals[0]  # held-out loss: eval_on_start vs the end
    # base weights unchanged and frozen; LoRA weights trained
    base = load_file(tiny_model_dir / "model.safetensors")
    trained = {n: p for n, p in model.named_parameters()}
    lora_names = [n for n in trained if "lora_" in n]
    assert {n.split(".")[-4] for n in lora_names if "lora_A" in n} == set(PROJ)
    assert all(trained[n].requires_grad for n in lora_names)
    checked = 0
    for name, p in trained.items():
        if "lora_" in name:
            continue
        assert not p.requires_grad, name
        key = name.replace("base_model.model.", "", 1).replace(".base_layer", "")
        assert key in base, key
        assert p.detach().equal(base[key]), f"base weight changed: {key}"
        checked += 1
    assert checked >= 2 * 7 + 1
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # lora_B starts at zero
    early = load_file(run_dir / f"checkpoint-{SAVE}" / "adapter_model.safetensors")
    assert all(not early[k].equal(adapter[k]) for k in adapter if "lora_A" in k)


def test_run_directory_records(full_run, data_dir):
    from llamatune.data.io import sha256_file
    from llamatune.recipe import load_recipe

    run_dir, _ = full_run
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "done" and run["global_step"] == STEPS
    assert run["recipe"]["r"] == 16 and run["recipe"]["max_steps"] == STEPS
    assert set(run["versions"]) >= {"torch", "transformers", "trl", "peft", "llamatune"}
    assert "commit" in run["git"]
    assert run["data"]["train.jsonl_sha256"] == sha256_file(data_dir / "train.jsonl")
    assert run["data"]["eval_rows_used"] == 4 and run["backend"] == "trl"
    # what one epoch feeds the model (packs: the tiny recipe packs), for rows per step in the demo report
    assert 0 < run["data"]["train_sequences"] <= run["data"]["train_rows"]
    # the precision: what the device rule says here, and that the recipe's bf16: false chose fp32
    prec = run["precision"]
    assert (prec["compute"], prec["weights"], prec["chosen_by"]) == ("float32", "float32", "recipe")
    assert prec["device_rule"] in ("bfloat16", "float32") and prec["reason"] and prec["cpu"]
    assert run["attn_implementation"] == "packed" and run["padding_free"]
    assert "eval_loss" in run["metrics"]
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "adapter" / "adapter_config.json").exists()
    saved_template = (run_dir / "adapter" / "chat_template.jinja").read_text()
    from llamatune.chat import template_text

    assert saved_template.strip() == template_text("llama-3.2").strip()
    assert load_recipe(run_dir / "config.yaml")["learning_rate"] == 5e-3  # the resolved recipe re-loads
    with pytest.raises(FileExistsError, match="--resume"):
        from llamatune.train import train

        train(load_recipe(run_dir / "config.yaml"))


KILL = textwrap.dedent("""
    import os, sys
    from transformers import TrainerCallback
    from llamatune.recipe import load_recipe
    from llamatune.train import train

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == int(sys.argv[2]):
                os._exit(137)  # like SIGKILL: no cleanup, no final save

    train(load_recipe(sys.argv[1], sys.argv[3:]), callbacks=[Kill()])
    sys.exit(0)
""")


def test_kill_then_resume_matches_uninterrupted_run(full_run, data_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    from llamatune import cli

    run_dir, _ = full_run
    killed = tmp_path / "killed"
    args = [*FAST, "--dataset_path", str(data_dir), "--output_dir", str(killed)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", KILL, str(TINY), str(SAVE), *args],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 137, proc.stderr[-2000:]
    assert (killed / f"checkpoint-{SAVE}").is_dir() and not (killed / "adapter").exists()
    assert json.loads((killed / "run.json").read_text())["status"] == "running"

    assert cli.main(["train", str(TINY), *args, "--resume"]) == 0
    run = json.loads((killed / "run.json").read_text())
    assert run["resumed_from"] == f"checkpoint-{SAVE}" and run["global_step"] == STEPS
    a = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    b = load_file(killed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=k)
    la = [h["loss"] for h in json.loads((run_dir / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    lb = [h["loss"] for h in json.loads((killed / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert lb == pytest.approx(la, rel=1e-5)


def test_resume_of_a_finished_run_does_not_train_further(full_run, tmp_path):
    """Resuming from the final checkpoint (a kill right after it, or a rerun) finishes without extra steps."""
    import shutil

    from safetensors.torch import load_file

    from llamatune.recipe import load_recipe
    from llamatune.train import train

    run_dir, _ = full_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "adapter")
    for name in ("trainer_state.json", "run.json", "loss.png"):
        (copy / name).unlink()
    train(load_recipe(run_dir / "config.yaml", ["--output_dir", str(copy)]), resume=True)
    run = json.loads((copy / "run.json").read_text())
    assert run["resumed_from"] == f"checkpoint-{STEPS}" and "train_runtime" not in run["metrics"]
    assert json.loads((copy / "trainer_state.json").read_text())["global_step"] == STEPS
    a, b = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (run_dir, copy))
    assert all(a[k].equal(b[k]) for k in a)


def test_resume_refuses_another_recipe_or_data_and_keeps_the_record(full_run, data_dir, tmp_path):
    """--resume of a run with a changed recipe or changed data stops, naming each difference, before training; a
    resume with the same recipe keeps the first start time and records the resume."""
    import shutil

    from llamatune.recipe import load_recipe
    from llamatune.train import train

    run_dir, _ = full_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    original = json.loads((copy / "run.json").read_text())
    with pytest.raises(ValueError, match=r"learning_rate: 0\.0\d+ → 0\.5"):
        train(load_recipe(run_dir / "config.yaml", ["--output_dir", str(copy), "--learning_rate", "0.5"]), resume=True)
    other = tmp_path / "data"
    shutil.copytree(data_dir, other)
    with open(other / "train.jsonl", "a") as f:
        f.write((other / "train.jsonl").read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match=r"dataset_path: .* → .*train.jsonl_sha256"):
        train(load_recipe(run_dir / "config.yaml", ["--output_dir", str(copy), "--dataset_path", str(other)]),
              resume=True)
    assert json.loads((copy / "run.json").read_text()) == original  # refused: nothing rewritten
    train(load_recipe(run_dir / "config.yaml", ["--output_dir", str(copy)]), resume=True)
    run = json.loads((copy / "run.json").read_text())
    assert run["started"] == original["started"] and run["resumes"][-1]["from"] == f"checkpoint-{STEPS}"


def test_seed_sets_the_lora_init_and_the_order_data_seed_the_order_alone(funccall_data, tmp_path):
    """What README part 13 relies on: TRL seeds before PEFT draws the adapter, and the sampler takes ``data_seed``
    when it is set, so ``data_seed`` changes the order of the training rows and keeps ``seed``'s LoRA initialisation;
    another ``seed`` changes both."""
    import torch

    from llamatune.recipe import load_recipe
    from llamatune.train import build_trainer

    def drawn(name: str, *extra: str) -> tuple[dict, list]:
        out = tmp_path / name
        recipe = load_recipe(REPO / "FuncCall" / "recipes" / "tiny-cpu.yaml", [
            f"--dataset_path={funccall_data}", f"--output_dir={out}", "--eval_samples=0", "--packing=false", *extra])
        trainer, _ = build_trainer(recipe, out)
        lora_a = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_A" in n}
        order = [tuple(b["input_ids"][0].tolist()) for b in trainer.get_train_dataloader()]
        return lora_a, order

    init0, order0 = drawn("seed0")
    init_d1, order_d1 = drawn("data1", "--data_seed=1")
    init1, order1 = drawn("seed1", "--seed=1")
    assert len(order0) == len(set(order0)) >= 15  # distinct rows, so an order is a permutation of them
    assert sorted(order_d1) == sorted(order0) and sorted(order1) == sorted(order0)
    assert order_d1 != order0 and order1 != order0
    assert init_d1.keys() == init0.keys() and all(torch.equal(init_d1[k], init0[k]) for k in init0)
    assert not any(torch.equal(init1[k], init0[k]) for k in init0)
    assert drawn("again", "--data_seed=1")[1] == order_d1  # and each is reproducible
