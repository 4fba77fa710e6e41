"""Helpers for the Space tests: scripted models that route like a tool-using model, and the app module."""

from __future__ import annotations

import json
import re
import socket

from tests.conftest import load_script

USER = "<|start_header_id|>user<|end_header_id|>\n\n"
IPY = "<|start_header_id|>ipython<|end_header_id|>\n\n"


def router(name: str):
    """A scripted model's output function: call a tool when the last user message asks for weather in Oslo
    or about Ada Lovelace (and tools are offered), phrase the tool result after an ipython turn, else chat."""

    def out(prompt: str) -> str:
        last = prompt.rsplit(USER, 1)[-1]
        msg = last.split("<|eot_id|>", 1)[0].rsplit("\n\n", 1)[-1]  # after the tool schemas, if any
        if IPY in last:
            data = json.loads(last.rsplit(IPY, 1)[1].split("<|eot_id|>", 1)[0])
            r = data.get("result") or {}
            fact = r.get("temperature") or r.get("summary", "")[:120] if isinstance(r, dict) else str(r)[:60]
            return f"[{name}] According to {data['tool']}: {fact or data.get('error')}"
        if "Environment: ipython" in prompt:
            if "Oslo" in msg:
                return json.dumps({"name": "get_current_weather", "parameters": {"location": "Oslo"}})
            if "Ada" in msg:
                return json.dumps({"name": "get_wikipedia_summary", "parameters": {"title": "Ada Lovelace"}})
        words = re.sub(r"\s+", " ", msg)[:40]
        return f"Hello from {name}! You said: {words}. This reply is streamed word by word to the browser."

    return out


def scripted_registry(names=("base", "finetome", "funccall"), delay: float = 0.0, n_ctx: int = 4096, **kw):
    from llamatune.llm import ScriptedModel
    from llamatune.serving import ModelRegistry, ServedModel

    specs = [ServedModel(n, path=f"/nonexistent/{n}.gguf", n_ctx=n_ctx) for n in names]
    return ModelRegistry(specs, loader=lambda s: ScriptedModel([router(s.name)], loop=True, name=s.name,
                                                               delay=delay, n_ctx=s.n_ctx), **kw)


def recording_registry(names=("a", "b")):
    """A registry of plain stand-in models that records the names it loads and closes: ``(registry, loaded,
    closed)``."""
    from llamatune.serving import ModelRegistry, ServedModel

    loaded, closed = [], []

    class M:
        def __init__(self, name):
            self.name = name

        def close(self):
            closed.append(self.name)

    reg = ModelRegistry([ServedModel(n, path=n) for n in names], loader=lambda s: loaded.append(s.name) or M(s.name))
    return reg, loaded, closed


def load_app():
    return load_script("space/app.py", "space_app")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
