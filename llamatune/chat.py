"""Render conversations through the project's chat templates (the one definition of the chat format).

The template files in ``llamatune/templates/`` are used three ways: training renders them (via the
tokenizer's ``chat_template``), export embeds them in the GGUF, and the agent renders them here to serve.
This module renders them with the same Jinja settings as ``transformers`` (``trim_blocks``,
``lstrip_blocks``, a non-escaping ``tojson``, ``raise_exception``, ``strftime_now``), so a prompt built here
is byte-identical to ``tokenizer.apply_chat_template(..., tokenize=False)``. ``{% generation %}`` markers
render their body unchanged.

    from llamatune.chat import render
    render([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llamatune.chatformat import FORMATS, calls_message, chat_format
from llamatune.jsonl import read_json

# The per-template facts (tokens, stops, call syntax) live in the call-syntax contract, llamatune.chatformat;
# ``TEMPLATES`` is its view as plain dicts: ``file``, ``bos_token``, ``eos_token``, ``also_stop`` (texts besides the
# end-of-turn ``eos_token`` that end a generated turn).
TEMPLATES = {name: {"file": f.file, "bos_token": f.bos_token, "eos_token": f.eos_token, "also_stop": list(f.also_stop)}
             for name, f in FORMATS.items()}
# A marker in an embedded chat template → the project template of that format (for templates that are not ours).
_FORMAT_MARKERS = (("<start_of_turn>", "gemma-3"), ("<|im_start|>", "smollm2"), ("<|start_header_id|>", "llama-3.2"))
ROLES = ("system", "user", "assistant", "tool", "ipython")
# The fixed "Today Date" of rendered prompts (Llama 3.2's template prints one), so training tokenisation, the
# generation caches and every evaluation are reproducible; the official template's own default is the same date.
DEFAULT_DATE = "26 Jul 2024"


def stop_strings(template: str = "llama-3.2") -> list[str]:
    """The texts that end a generated turn in ``template``, its ``eos_token`` first (unknown names: Llama 3.2's)."""
    return chat_format(template).stops


ALL_STOPS = list(dict.fromkeys(s for name in TEMPLATES for s in stop_strings(name)))  # any template's turn end


def template_text(name: str = "llama-3.2") -> str:
    """The Jinja source of a project template, by name (see ``TEMPLATES``)."""
    if name not in TEMPLATES:
        raise KeyError(f"unknown chat template {name!r}; known: {', '.join(TEMPLATES)}")
    return resources.files("llamatune.templates").joinpath(TEMPLATES[name]["file"]).read_text()


def detect_template(embedded: str | None, architecture: str = "") -> str:
    """The project template for a model whose embedded ``tokenizer.chat_template`` is ``embedded``: the project
    template it equals, else the one whose turn format it uses (Gemma, ChatML, Llama 3), else Llama 3.2's.
    The one place where GGUFs and HF directories are mapped to a template (serving, eval and agent use it)."""
    text = embedded or ""
    for name in TEMPLATES:
        if text and text == template_text(name):
            return name
    for marker, name in _FORMAT_MARKERS:
        if marker in text:
            return name
    return "gemma-3" if architecture.startswith("gemma") else "llama-3.2"


def model_template(model: str | Path) -> str:
    """The project template of a model on disk: a GGUF's embedded ``tokenizer.chat_template`` (its header only, no
    vocabulary load), or an HF directory's ``chat_template.jinja`` / ``tokenizer_config.json`` template."""
    p = Path(str(model))
    if p.suffix == ".gguf":
        from llamatune.gguf_meta import read_gguf_metadata

        meta = read_gguf_metadata(p)
        return detect_template(meta.get("tokenizer.chat_template", ""), meta.get("general.architecture", ""))
    text = ""
    if (p / "chat_template.jinja").exists():
        text = (p / "chat_template.jinja").read_text(encoding="utf-8")
    elif (p / "tokenizer_config.json").exists():
        text = read_json(p / "tokenizer_config.json", expect=dict).get("chat_template") or ""
    arch = read_json(p / "config.json", expect=dict).get("model_type", "") if (p / "config.json").exists() else ""
    return detect_template(text if isinstance(text, str) else "", arch)


class _Generation(Extension):
    """``{% generation %}…{% endgeneration %}``: TRL's training marker; a no-op when serving."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def _raise(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


def render(
    messages: list[dict],
    tools: list[dict] | None = None,
    *,
    template: str = "llama-3.2",
    source: str | None = None,
    add_generation_prompt: bool = False,
    **kwargs: Any,
) -> str:
    """Render ``messages`` (and the tools' JSON schemas) to the prompt text the model sees.

    ``template`` names a project template; ``source`` renders any other Jinja text instead (e.g. the official
    template, in tests). Extra keyword arguments (``date_string``…) are passed to the template.
    """
    spec = TEMPLATES.get(template, TEMPLATES["llama-3.2"])
    text = source if source is not None else template_text(template)
    ctx = {"bos_token": spec["bos_token"], "eos_token": spec["eos_token"], **kwargs}
    if tools is not None:
        ctx["tools"] = tools
    return _compile(text).render(messages=messages, add_generation_prompt=add_generation_prompt, **ctx)


def tool_call_message(name: str, arguments: dict) -> dict:
    """An assistant turn that calls one tool, in the HF/OpenAI ``tool_calls`` shape (several calls:
    :func:`llamatune.chatformat.calls_message`)."""
    return calls_message([{"name": name, "arguments": arguments}])


def validate_messages(messages: Any, where: str = "messages") -> None:
    """Raise ``ValueError`` naming ``where`` and the turn when a conversation is malformed."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: expected a non-empty list of messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ValueError(f"{where}[{i}]: role must be one of {ROLES}, got {m!r:.80}")
        if "tool_calls" not in m and not isinstance(m.get("content"), (str, dict, list)):
            raise ValueError(f"{where}[{i}] ({m['role']}): missing content")
