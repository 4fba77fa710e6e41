"""The model interface the agent talks to: a prompt in, text out (streamed or whole), plus a token counter.

* :class:`ChatModel` is the protocol; :class:`llamatune.runtime.LlamaCppModel` serves a GGUF with it.
* :class:`ScriptedModel` returns scripted outputs (for tests and the browser test), and records its prompts.

Neither renders anything: the agent renders prompts with :func:`llamatune.chat.render`.
"""

from __future__ import annotations

import re
import time
from typing import Callable, Iterator, Protocol, runtime_checkable


@runtime_checkable
class ChatModel(Protocol):
    """What the agent needs from a model. ``template`` names the chat template (see ``llamatune.chat``)."""

    name: str
    template: str
    n_ctx: int

    def complete(self, prompt: str, *, max_tokens: int, stop: list[str], stream: bool) -> Iterator[str] | str:
        """Continue ``prompt`` (already rendered, BOS included); an iterator of text pieces when streaming."""

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens parsed, no BOS added)."""

    def count_tokens(self, text: str) -> int:
        """``len(tokenize(text))``."""


_WORD = re.compile(r"\s*\S+|\s+")


class ScriptedModel:
    """A fake model that answers with scripted outputs, in order. For tests and UI checks, never for results.

    ``outputs`` items are strings or callables ``prompt -> str``; with ``loop=True`` the last one repeats
    forever (a model stuck calling tools). Every prompt is recorded in ``prompts``; ``calls`` counts them.
    Tokens are approximated by words and punctuation, which is enough for budgets and truncation.
    """

    def __init__(self, outputs: list[str | Callable[[str], str]], *, name: str = "scripted", template: str = "llama-3.2",
                 n_ctx: int = 4096, loop: bool = False, delay: float = 0.0):
        self.outputs = list(outputs)
        self.name, self.template, self.n_ctx = name, template, n_ctx
        self.loop, self.delay = loop, delay
        self.prompts: list[str] = []

    @property
    def calls(self) -> int:
        return len(self.prompts)

    def tokenize(self, text: str) -> list[int]:
        return [hash(t) & 0xFFFF for t in re.findall(r"<\|[a-z_]+\|>|\w+|[^\w\s]", text)]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def complete(self, prompt: str, *, max_tokens: int = 512, stop: list[str] | None = None,
                 stream: bool = False) -> Iterator[str] | str:
        if not self.outputs:
            raise RuntimeError("ScriptedModel has no outputs left")
        self.prompts.append(prompt)
        out = self.outputs[0] if (self.loop and len(self.outputs) == 1) else self.outputs.pop(0)
        text = out(prompt) if callable(out) else out
        for s in stop or []:
            if s in text:
                text = text[: text.index(s)]
        if not stream:
            return text
        return self._stream(text)

    def _stream(self, text: str) -> Iterator[str]:
        for piece in _WORD.findall(text):
            if self.delay:
                time.sleep(self.delay)
            yield piece
