"""Export: LoRA merge, GGUF conversion + quantization, fidelity checks, model card (tiny model, offline)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import requires

pytestmark = requires("llama_cpp", "peft", "transformers")

LORA = dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A fake training run: a random (non-zero) LoRA on the tiny model, saved the way llamatune.train does."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llamatune.models import load_llama_tokenizer

    run = tmp_path_factory.mktemp("runs") / "tinyrun"
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(**LORA, init_lora_weights=False))  # B random: merge changes weights
    peft_model.save_pretrained(run / "adapter")
    load_llama_tokenizer().save_pretrained(run / "adapter")
    recipe = {"model_name_or_path": "tiny", "chat_template": "llama-3.2", "dataset_path": "data/x", **LORA}
    (run / "run.json").write_text(json.dumps({"recipe": recipe}))
    return run


@pytest.fixture(scope="module")
def exported(run_dir) -> dict:
    """``llamatune export RUN --quant f16,q8_0,q4_k_m``, run once for the module."""
    from llamatune.cli import main

    rc = main(["export", str(run_dir), "--quant", "f16,q8_0,q4_k_m"])
    return {"rc": rc, "fidelity": json.loads((run_dir / "fidelity.json").read_text())}


def test_export_writes_merged_ggufs_and_passing_fidelity(run_dir, exported):
    from llamatune.fidelity import THRESHOLDS

    assert exported["rc"] == 0
    names = sorted(p.name for p in (run_dir / "gguf").glob("*.gguf"))
    assert names == ["tinyrun-f16.gguf", "tinyrun-q4_k_m.gguf", "tinyrun-q8_0.gguf"]
    assert not list(run_dir.rglob("*.part"))
    reports = exported["fidelity"]["reports"]
    assert exported["fidelity"]["pass"] is True
    for quant, r in reports.items():
        assert r["tokenization"]["mismatches"] == [], quant
        assert r["chat_template"]["equal"], quant
        assert (r["eos"]["token"], r["eos"]["id"]) == ("<|eot_id|>", 128009)
        assert set(r["per_prompt"]) >= {"chat", "tools", "tool_result"}
        assert r["hf_top1_in_gguf_top5"] >= r["top1_agreement"]
        assert r["thresholds"] == THRESHOLDS[quant]  # every exported quant has an agreement to meet
        assert all(r[metric] is None or r[metric] >= minimum for metric, minimum in r["thresholds"].items())
    # Quantization error grows with coarser types, as it must.
    assert reports["f16"]["max_abs_logit_diff"] < reports["q8_0"]["max_abs_logit_diff"] < reports["q4_k_m"]["max_abs_logit_diff"]


def test_merge_is_base_plus_scaled_lora(run_dir, exported, tiny_model_dir):
    from safetensors.torch import load_file

    base = load_file(tiny_model_dir / "model.safetensors")
    merged = load_file(run_dir / "merged" / "model.safetensors")
    lora = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    scale = LORA["lora_alpha"] / LORA["r"]
    for layer, module in [(0, "self_attn.q_proj"), (1, "mlp.down_proj")]:
        key = f"model.layers.{layer}.{module}"
        a, b = lora[f"base_model.model.{key}.lora_A.weight"], lora[f"base_model.model.{key}.lora_B.weight"]
        expected = base[f"{key}.weight"] + (b @ a) * scale
        assert (merged[f"{key}.weight"] - base[f"{key}.weight"]).abs().max() > 1e-3  # the merge changed it
        assert (merged[f"{key}.weight"] - expected).abs().max() < 1e-5
    untouched = "model.layers.0.self_attn.k_proj.weight"
    assert (merged[untouched] == base[untouched]).all()


def test_merged_tokenizer_carries_template_and_eos(run_dir, exported):
    from transformers import AutoTokenizer, GenerationConfig

    from llamatune.chat import template_text

    tok = AutoTokenizer.from_pretrained(run_dir / "merged")
    assert tok.chat_template == template_text("llama-3.2")
    assert tok.eos_token == "<|eot_id|>"
    assert 128009 in GenerationConfig.from_pretrained(run_dir / "merged").eos_token_id


def test_ggufs_load_and_chat(run_dir, exported):
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from llamatune.chat import render

    messages = [{"role": "user", "content": "Say hi."}]
    prompt = render(messages, add_generation_prompt=True, date_string="1 Jan 2026")
    n_prompt = len(AutoTokenizer.from_pretrained(run_dir / "merged")(prompt, add_special_tokens=False)["input_ids"])
    for path in sorted((run_dir / "gguf").glob("*.gguf")):
        llm = Llama(str(path), n_ctx=256, verbose=False)
        try:
            assert llm.metadata["tokenizer.chat_template"] == (run_dir / "merged" / "chat_template.jinja").read_text()
            out = llm.create_chat_completion(messages, max_tokens=4, temperature=0.0)  # embedded template
            assert out["usage"]["completion_tokens"] >= 1, path.name
            # The rendered prompt starts with <|begin_of_text|>: pass ids (add_bos=False), or llama.cpp adds a 2nd BOS.
            ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
            out = llm.create_completion(ids, max_tokens=4, temperature=0.0)  # project-rendered prompt
            assert out["usage"]["prompt_tokens"] == n_prompt, path.name
            assert out["usage"]["completion_tokens"] >= 1, path.name
        finally:
            llm.close()


def test_rerun_skips_and_push_only_when_asked(run_dir, exported, monkeypatch, capfd):
    import huggingface_hub

    from llamatune import hub
    from llamatune.cli import main

    def no_network(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(huggingface_hub, "HfApi", no_network)
    pushed = []
    monkeypatch.setattr(hub, "push", lambda plan, api=None, **kw: pushed.append(plan) or [hub.url_of(c) for c in plan])
    mtimes = {p: p.stat().st_mtime_ns for p in (run_dir / "gguf").glob("*.gguf")}
    assert main(["export", str(run_dir)]) == 0
    err = capfd.readouterr().err
    assert "exists, skipping merge" in err and err.count("exists, skipping") == 4
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    stamp = json.loads((run_dir / "merged" / "llamatune_merge.json").read_text())
    assert stamp["stamp"]["template"] == "llama-3.2" and stamp["dtype"] == "float32"
    assert pushed == []
    # --push-to-hub is `llamatune push` (llamatune.hub, the one implementation): LoRA, merged and GGUF repos
    assert main(["export", str(run_dir), "--push-to-hub", "someone/tinyrun"]) == 0
    assert [c.repo_id for c in pushed[0]] == ["someone/tinyrun-LoRA", "someone/tinyrun", "someone/tinyrun-GGUF"]
    assert {"tinyrun-f16.gguf", "tinyrun-q8_0.gguf", "tinyrun-q4_k_m.gguf", "fidelity.json"} <= set(pushed[0][2].paths())
    assert "pushed https://huggingface.co/someone/tinyrun-GGUF" in capfd.readouterr().out


def test_model_card(run_dir, exported, tmp_path, monkeypatch):
    from llamatune.model_card import model_card

    monkeypatch.chdir(tmp_path)  # the recipe's dataset_path data/x resolves against the working directory
    (tmp_path / "data" / "x").mkdir(parents=True)
    (tmp_path / "data" / "x" / "manifest.json").write_text(
        json.dumps({"source": "mlabonne/FineTome-100k", "counts": {"train": 20, "eval": 5}}))
    results = tmp_path / "results"
    results.mkdir()
    (results / "arc.json").write_text(json.dumps({"aggregates": {"acc_norm": 0.4321, "n": 100}}))
    card = model_card(run_dir, results_dir=results)
    front = card.split("---")[1]
    assert "library_name: gguf" in front and "tags: [gguf, llama-cpp, lora" in front
    assert 'datasets: ["mlabonne/FineTome-100k"]' in front and "license:" in front
    assert "| `lora_alpha` | `16` |" in card  # recipe table
    assert "source `mlabonne/FineTome-100k` (train: 20, eval: 5)" in card
    assert "| arc.json | acc_norm | 0.4321 |" in card
    for q in ("f16", "q8_0", "q4_k_m"):
        assert f"`tinyrun-{q}.gguf`" in card
    assert "| NO |" not in card


def test_wrong_model_gguf_fails_naming_file_and_check(run_dir, exported, tiny_gguf, tmp_path, capfd):
    """A GGUF of a different model (the un-merged base) in place of the run's f16 must fail the export."""
    from llamatune.cli import main

    broken = tmp_path / "broken"
    (broken / "merged").mkdir(parents=True)
    shutil.copytree(run_dir / "adapter", broken / "adapter")
    shutil.copy2(run_dir / "run.json", broken / "run.json")
    for f in (run_dir / "merged").iterdir():
        (broken / "merged" / f.name).symlink_to(f)
    os.utime(broken / "merged" / "config.json", follow_symlinks=False)  # merged newer than the adapter copy
    (broken / "gguf").mkdir()
    shutil.copyfile(tiny_gguf["f16"], broken / "gguf" / "broken-f16.gguf")  # fresh: newer than merged
    assert main(["export", str(broken), "--quant", "f16"]) == 1
    err = capfd.readouterr().err
    assert "fidelity check failed" in err
    assert "broken-f16.gguf: top1_agreement" in err and "(threshold for f16)" in err
    assert json.loads((broken / "fidelity.json").read_text())["pass"] is False


def test_template_and_eos_checks_fail_on_mismatch(run_dir, exported):
    from llamatune.fidelity import check_gguf

    prompts = {"short": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"}
    report = check_gguf(run_dir / "merged", run_dir / "gguf" / "tinyrun-f16.gguf", prompts, ["héllo 🦙"],
                        expected_template="{{ messages }}")
    assert not report["pass"]
    assert any(f.startswith("chat_template: embedded template") for f in report["failures"])
    assert report["tokenization"]["mismatches"] == [] and report["top1_agreement"] >= 0.99


def test_a_4bit_gguf_is_held_on_the_tokens_the_model_is_sure_of(run_dir, exported, monkeypatch):
    """Q4_K_M (what the Space serves) has an agreement to meet: the HF top-1 where the HF model is sure of it, and
    top-5 containment. The tiny random model is sure almost nowhere, so only top-5 is judged there; counted as sure
    at every position (a margin of 0), its 4-bit flips of near-ties count and the check fails."""
    from llamatune import fidelity

    gguf, hf = run_dir / "gguf" / "tinyrun-q4_k_m.gguf", run_dir / "merged"
    real = exported["fidelity"]["reports"]["q4_k_m"]
    assert real["thresholds"] == {"confident_top1_agreement": 0.97, "hf_top1_in_gguf_top5": 0.97}
    assert real["confident_positions"] < fidelity.MIN_CONFIDENT_POSITIONS and real["confident_top1_agreement"] is None
    assert real["top1_agreement"] < 0.97 <= real["hf_top1_in_gguf_top5"] and real["pass"]
    monkeypatch.setattr(fidelity, "CONFIDENT_MARGIN", 0.0)
    sure = fidelity.check_gguf(hf, gguf)
    assert sure["confident_positions"] == sure["positions"] == real["positions"]
    assert sure["confident_top1_agreement"] == real["top1_agreement"]
    assert not sure["pass"] and sure["failures"] == [
        f"confident_top1_agreement {sure['confident_top1_agreement']:.4f} < 0.97 over {sure['positions']} confident "
        "positions (threshold for q4_k_m)"]
    assert "FAIL tinyrun-q4_k_m.gguf (confident_top1_agreement ≥ 0.97, hf_top1_in_gguf_top5 ≥ 0.97)" in fidelity.format_report(sure)


def test_export_plain_model_dir(tiny_model_dir, tmp_path):
    from llamatune.cli import main

    from llama_cpp import Llama

    from llamatune.chat import template_text

    out = tmp_path / "base"  # fidelity is the same code path as for a run (checked above): skip it here
    assert main(["export", "--model", str(tiny_model_dir), "--out", str(out), "--quant", "f16", "--no-check"]) == 0
    assert (out / "hf" / "model.safetensors").is_symlink()
    assert not (out / "fidelity.json").exists()
    llm = Llama(str(out / "gguf" / "base-f16.gguf"), vocab_only=True, verbose=False)
    try:
        assert llm.metadata["tokenizer.chat_template"] == template_text("llama-3.2")
        assert llm.token_eos() == 128009
    finally:
        llm.close()


def test_bad_inputs_name_the_problem(tmp_path, tiny_model_dir, capsys):
    from llamatune.cli import main
    from llamatune.export import resolve_base

    assert main(["export", str(tmp_path)]) == 2
    assert "no adapter/adapter_config.json" in capsys.readouterr().err
    assert main(["export", str(tiny_model_dir)]) == 2  # plain model without --out
    assert "give an output directory (--out)" in capsys.readouterr().err
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "a/b"}))
    assert resolve_base(tmp_path) == "a/b"
    (tmp_path / "run.json").write_text(json.dumps({"recipe": {"model_name_or_path": "tiny"}}))
    assert resolve_base(tmp_path) == str(tiny_model_dir)
    assert resolve_base(tmp_path, base="c/d") == "c/d"


def test_a_run_whose_training_did_not_finish_is_not_exported(tmp_path, capsys):
    """Killed while training (or while writing adapter/): run.json still says "running", and export stops with the
    command that finishes the run instead of merging a torn or stale adapter."""
    from llamatune.cli import main

    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"torn")
    (run / "run.json").write_text(json.dumps({"status": "running", "recipe": {"model_name_or_path": "tiny"}}))
    assert main(["export", str(run), "--no-check"]) == 2
    err = capsys.readouterr().err
    assert "training did not finish (run.json status 'running')" in err and "--resume" in err
    assert not (run / "merged").exists() and not (run / "gguf").exists()
