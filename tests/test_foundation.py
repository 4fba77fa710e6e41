"""The package imports fast, the tiny model is deterministic on the real tokenizer, the CLI is wired."""

import json
import subprocess
import sys

from tests.conftest import REPO, requires


def test_bare_import_is_light_and_fast():
    code = ("import sys, time; t = time.perf_counter(); import llamatune, llamatune.chat, llamatune.toolcall, "
            "llamatune.tools, llamatune.cli; dt = time.perf_counter() - t; "
            "heavy = [m for m in ('torch', 'transformers', 'trl', 'peft', 'llama_cpp', 'gradio', 'lm_eval') if m in sys.modules]; "
            "print(dt, heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    dt, heavy = out.split(" ", 1)
    assert heavy.strip() == "[]"
    assert float(dt) < 1.0


def test_tiny_model_on_real_tokenizer(tiny_model_dir):
    from transformers import AutoConfig, AutoTokenizer

    from llamatune.chat import template_text

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert len(tok) == 128256 and tok.eos_token == "<|eot_id|>" and tok.chat_template == template_text()
    # the real Llama 3 BPE: known ids
    assert tok.encode("Hello world", add_special_tokens=False) == [9906, 1917]
    assert tok.convert_tokens_to_ids(["<|begin_of_text|>", "<|eot_id|>", "<|python_tag|>"]) == [128000, 128009, 128010]
    cfg = AutoConfig.from_pretrained(tiny_model_dir)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (256, 2, 128256)


def test_tiny_model_is_deterministic(tmp_path, tiny_model_dir):
    from safetensors.numpy import load_file

    from llamatune.models import build_tiny_model

    again = build_tiny_model(tmp_path / "again")
    a, b = load_file(tiny_model_dir / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def test_cli_tiny_model(tmp_path):
    out = tmp_path / "tiny"
    subprocess.run([sys.executable, "-m", "llamatune", "tiny-model", "--out", str(out)], check=True, cwd=REPO)
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 256
    assert (out / "tokenizer.json").exists()


@requires("llama_cpp")
def test_tiny_gguf_loads_with_project_template(tiny_gguf):
    from llama_cpp import Llama

    from llamatune.chat import template_text

    llm = Llama(str(tiny_gguf["q8_0"]), n_ctx=256, verbose=False)
    try:
        assert llm.metadata["tokenizer.chat_template"] == template_text()
        assert llm.metadata["tokenizer.ggml.pre"] == "llama-bpe"
        assert llm.token_eos() == 128009
        assert llm.tokenize(b"Hello world", add_bos=False) == [9906, 1917]
        out = llm.create_completion("Hello", max_tokens=4, temperature=0)
        assert out["usage"]["completion_tokens"] >= 1
    finally:
        llm.close()
