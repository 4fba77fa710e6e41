"""The tool-using agent: a budget of LLM calls, the project's chat template, and a trace of events.

Protocol for one user turn (``Agent.run``):

1. call 1 renders the conversation with the mode's tools (``llamatune.chat.render``, the same template that is
   embedded in the GGUFs) and streams the model's output. Output that starts like a tool call is buffered;
   anything else is streamed to the user token by token as it is decoded.
2. If the output is plain text, that is the answer: **one** LLM call (the original study always made two).
3. If it parses (``llamatune.toolcall``) to valid calls, the tools run, each call of a parallel turn in order
   (still one LLM call), and each result enters the conversation as a tool turn (the template wraps it: an
   ``ipython`` turn for Llama 3.2, ``<tool_response>`` for SmolLM2; :mod:`llamatune.chatformat`), delimited as
   JSON data (``{"tool", "result", "note"}``), truncated to ``tool_token_budget`` tokens, with special-token
   strings neutralised; then call 2 answers from all the results. An invalid call beside valid ones is not
   executed; its result says why.
4. An invalid call (unknown tool, bad arguments, malformed JSON) is never executed: the agent retries once
   with the reason (if the budget allows) or answers plainly, and says so in the trace.
5. ``max_llm_calls`` (default 2) is never exceeded. When a tool fails and no call is left for the model to
   retry, the tool's user-facing message is the answer. When the first call is also the last allowed one
   (``max_llm_calls=1``) and asks for a tool, the tool runs and its result is shown as it is; a call asked for
   *after* a tool result on the last allowed call is never run (a tool's output must not choose what runs and
   reaches the user): the earlier results answer.

The serving contract (modes, system prompts, the tool-result envelope, neutralising) is :mod:`llamatune.protocol`;
the terminal front end is :mod:`llamatune.terminal` (``llamatune chat``), the web one ``space/app.py``.

With ``constrain`` (the default) and a model that takes a grammar (:class:`llamatune.runtime.LlamaCppModel`), every
call is decoded under the lazy call grammar of the offered tools in the model's template
(:func:`llamatune.grammar.grammar_for`): text answers stay the model's own, a call, once opened, is well-formed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Iterator

from llamatune.chat import render, stop_strings
from llamatune.chatformat import calls_message
from llamatune.protocol import (MODES, check_mode, cut_tool_result, neutralize, tool_result_message,
                                truncate_to_tokens)
from llamatune.protocol import system_prompt as build_system_prompt
from llamatune.toolcall import ToolCall, looks_like_call, parse_output, validate_call

KINDS = ("llm_call", "tool_call", "tool_result", "invalid_call", "token", "final", "note")
EMPTY = "(the model gave an empty answer)"
MIN_ROOM = 16  # a model call needs at least this many free context tokens; _fit always leaves them


@dataclass
class Event:
    """One step of a turn. ``kind`` is one of ``KINDS``; ``data`` holds its details."""

    kind: str
    data: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}")


def format_result(name: str, result) -> str:
    """A tool result as plain lines, for when no model call is left to phrase it."""
    if isinstance(result, dict):
        lines = []
        for k, v in result.items():
            if isinstance(v, list):
                lines.append(f"{k}:")
                lines += [f"  - {json.dumps(x, ensure_ascii=False) if not isinstance(x, str) else x}" for x in v]
            elif v is not None:
                lines.append(f"{k}: {v}")
        return f"Result of {name}:\n" + "\n".join(lines)
    return f"Result of {name}: {result}"


class Agent:
    """A tool-using agent over any :class:`llamatune.llm.ChatModel`.

    ``tools``: tool names or :class:`llamatune.tools.Tool` objects (default: the mode's,
    :data:`llamatune.protocol.MODES`). ``examples``: worked tool-use examples for the system prompt (the caller
    draws them, e.g. :func:`llamatune.data.icl.icl_block`). ``tool_token_budget``: the most tokens a tool result
    may take in the prompt. ``constrain``: decode calls under the tools' lazy grammar when the model takes one
    (``supports_grammar``); the ``final`` event's ``constrained_tokens`` counts the tokens it changed in the turn.
    """

    def __init__(self, model, mode: str = "weather", tools=None, max_llm_calls: int = 2, examples: str = "",
                 tool_token_budget: int = 512, system_prompt: str | None = None, max_new_tokens: int = 512,
                 constrain: bool = True):
        from llamatune.tools import all_tools

        check_mode(mode)
        if max_llm_calls < 1:
            raise ValueError("max_llm_calls must be at least 1")
        registry = all_tools()
        chosen = MODES[mode] if tools is None else tools
        self.tools = {}
        for t in chosen:
            t = registry[t] if isinstance(t, str) else t
            self.tools[t.name] = t
        self.schemas = [t.schema for t in self.tools.values()] or None
        self.model, self.mode = model, mode
        self.max_llm_calls, self.tool_token_budget, self.max_new_tokens = max_llm_calls, tool_token_budget, max_new_tokens
        self.template = getattr(model, "template", "llama-3.2")
        self.stop = stop_strings(self.template)
        self.system_prompt = build_system_prompt(mode, list(self.tools), examples, base=system_prompt)
        self.grammar = None
        if constrain and self.schemas and getattr(model, "supports_grammar", False):
            from llamatune.grammar import grammar_for

            self.grammar = grammar_for(self.schemas, self.template)  # cached per tool set and template

    # --- prompt building ---------------------------------------------------------------------------------

    def render(self, messages: list[dict]) -> str:
        return render(messages, self.schemas, template=self.template, add_generation_prompt=True)

    def _clean_history(self, history: list[dict]) -> list[dict]:
        out = []
        for m in history or []:
            role = m.get("role")
            if role in ("user", "assistant") and isinstance(m.get("content"), str) and "tool_calls" not in m:
                out.append({"role": role, "content": neutralize(m["content"])})
            elif role == "assistant" and m.get("tool_calls"):
                out.append({"role": "assistant", "tool_calls": neutralize(list(m["tool_calls"]))})
            elif role in ("tool", "ipython"):
                out.append({"role": "tool", "content": neutralize(m.get("content"))})
        while out and (out[0]["role"] != "user"):
            out.pop(0)
        return out

    def _fit(self, history: list[dict], user_msg: str) -> tuple[list[dict], list[str]]:
        """The messages for call 1, dropping the oldest turns and truncating the user message to fit."""
        n_ctx = self.model.n_ctx
        reserve = max(MIN_ROOM, min(self.max_new_tokens, max(32, n_ctx // 4)))
        if self.schemas:
            reserve += min(self.tool_token_budget + 64, n_ctx // 8)
        limit = n_ctx - reserve
        system = {"role": "system", "content": self.system_prompt}
        notes = []
        user = {"role": "user", "content": user_msg}

        def fits(i: int) -> bool:
            return self.model.count_tokens(self.render([system, *history[i:], user])) <= limit

        # Keep the longest tail of the history that starts at a user turn and fits: a binary search over the turn
        # starts (fewer turns, fewer tokens), so a long chat costs O(log turns) renders, not one per dropped turn.
        starts = [i for i, m in enumerate(history) if m["role"] == "user"] + [len(history)]
        lo, hi = 0, len(starts) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if fits(starts[mid]):
                hi = mid
            else:
                lo = mid + 1
        dropped = starts[lo]
        history = history[dropped:]
        msgs = [system, *history, user]
        if dropped:
            notes.append(f"The conversation was longer than the model's context ({n_ctx} tokens): "
                         f"the {dropped} oldest messages were left out.")
        total = self.model.count_tokens(self.render(msgs))
        if total > limit:
            base = self.model.count_tokens(self.render([system, {"role": "user", "content": ""}]))
            room = limit - base
            if room < 8:
                raise ContextError(f"The system prompt and tools ({base} tokens) leave no room in the model's "
                                   f"context of {n_ctx} tokens.")
            n_user = self.model.count_tokens(user_msg)
            kept = truncate_to_tokens(user_msg, room, self.model.count_tokens)
            user = {"role": "user", "content": kept}
            msgs = [system, user]
            notes.append(f"Your message was about {n_user} tokens, more than fits the model's context "
                         f"({n_ctx} tokens); only its first {self.model.count_tokens(kept)} tokens were used.")
        return msgs, notes

    def _tool_message(self, name: str, result: dict | None, error: str | None, budget: int) -> tuple[dict, bool]:
        if error is not None:
            return tool_result_message(name, error=neutralize(error)), False
        return cut_tool_result(name, result, budget, self.model.count_tokens)

    # --- one model call ------------------------------------------------------------------------------------

    def _call(self, prompt: str, max_tokens: int) -> Iterator[Event]:
        """Stream one completion; prose is emitted as ``token`` events at once. Returns (text, streamed)."""
        kw = {"grammar": self.grammar} if self.grammar is not None else {}
        pieces = self.model.complete(prompt, max_tokens=max_tokens, stop=self.stop, stream=True, **kw)
        if isinstance(pieces, str):
            pieces = [pieces]
        buf: list[str] = []
        decided = None if self.schemas else False
        started = False
        for p in pieces:
            buf.append(p)
            if decided is None:
                decided = looks_like_call("".join(buf), self.template)
                if decided is not False:
                    continue
                p = "".join(buf)
            if decided is False:
                if not started:
                    p = p.lstrip()
                if p:
                    started = True
                    yield Event("token", {"text": p})
        if self.grammar is not None:
            self._constrained += (getattr(self.model, "stats", None) or {}).get("constrained", 0)
        return "".join(buf).strip(), decided is False

    # --- the turn ------------------------------------------------------------------------------------------

    def run(self, history: list[dict], user_msg: str) -> Iterator[Event]:
        """Answer ``user_msg`` after ``history`` (chat-template messages), yielding :class:`Event` s.

        The ``final`` event carries ``text``, ``llm_calls``, ``tool_calls``, ``constrained_tokens`` and ``messages``
        (the turns to append to the history: the user message, tool calls and results, and the answer).
        """
        t0, self._constrained = time.perf_counter(), 0
        user_msg = neutralize(user_msg)
        try:
            msgs, notes = self._fit(self._clean_history(history), user_msg)
        except ContextError as exc:
            yield Event("note", {"text": str(exc)})
            yield from self._emit_text(str(exc))
            yield self._final(str(exc), 0, 0, [{"role": "user", "content": user_msg}], t0)
            return
        for n in notes:
            yield Event("note", {"text": n})
        start = len(msgs) - 1  # the user message; everything after it is new
        calls, n_tools, retried = 0, 0, False
        last_results: list[tuple[str, dict]] = []
        while True:
            prompt = self.render(msgs)
            n_prompt = self.model.count_tokens(prompt)
            room = self.model.n_ctx - n_prompt
            if room < MIN_ROOM:
                text = "I ran out of context space for this conversation; please start a new one."
                if last_results:
                    text = "\n\n".join(format_result(n, r) for n, r in last_results)
                yield Event("note", {"text": f"prompt of {n_prompt} tokens leaves no room in the context"})
                yield from self._emit_text(text)
                yield self._final(text, calls, n_tools, msgs[start:], t0)
                return
            calls += 1
            yield Event("llm_call", {"n": calls, "of": self.max_llm_calls, "prompt_tokens": n_prompt})
            text, streamed = yield from self._call(prompt, min(self.max_new_tokens, room))
            if streamed or not self.schemas or not parse_output(text).attempted:
                if not streamed or not text:
                    text = text or EMPTY
                    yield from self._emit_text(text)
                yield self._final(text, calls, n_tools, msgs[start:], t0)
                return
            if n_tools and calls >= self.max_llm_calls:
                # A call asked for after a tool result, with no model call left to read its result: it is not run,
                # so a tool's output (a web page) cannot steer the agent into a call whose raw result reaches the
                # user. The results of the user's own request answer instead.
                yield Event("invalid_call", {"text": text, "action": "answer",
                                             "reason": "a call after a tool result on the last allowed model call "
                                                       "is not executed"})
                answer = "\n\n".join(format_result(n, r) for n, r in last_results) if last_results else EMPTY
                yield from self._emit_text(answer)
                yield self._final(answer, calls, n_tools, msgs[start:], t0)
                return
            parsed = parse_output(text)
            checked = [(c, validate_call(c, self.schemas)) for c in parsed.calls]
            valid = [c for c, why in checked if why is None]
            reasons = ([parsed.error] if parsed.error else []) + [str(why) for _, why in checked if why is not None]
            if not valid:
                reason = "; ".join(reasons) or "not a call"
                if not retried and calls < self.max_llm_calls:
                    retried = True
                    yield Event("invalid_call", {"text": text, "reason": reason, "action": "retry"})
                    msgs += [{"role": "assistant", "content": neutralize(text)},
                             {"role": "tool", "content": {"error": f"invalid function call, not executed: {reason}",
                                                          "note": "Answer the user in plain text, or make a "
                                                                  "valid call to an offered function."}}]
                    continue
                yield Event("invalid_call", {"text": text, "reason": reason, "action": "answer"})
                answer = ("Sorry, I could not use my tools for that (the model produced an invalid tool call: "
                          f"{reason}). Could you rephrase the question?")
                if last_results:
                    answer = "\n\n".join(format_result(n, r) for n, r in last_results)
                yield from self._emit_text(answer)
                yield self._final(answer, calls, n_tools, msgs[start:], t0)
                return
            # One assistant turn with every call the model made (a parallel turn is one LLM call), then one result
            # per call in the same order; an invalid call is never executed: its result says why.
            msgs.append(neutralize(calls_message(parsed.calls)))
            errors, results = [], []
            # each result gets the configured budget, or less when the context is nearly full
            used = self.model.count_tokens(self.render(msgs))
            free = self.model.n_ctx - used - min(self.max_new_tokens, self.model.n_ctx // 4) - 32 * len(checked)
            budget = max(16, min(self.tool_token_budget, free // len(checked)))
            for call, why in checked:
                if why is not None:
                    yield Event("invalid_call", {"text": text, "reason": str(why), "action": "skipped"})
                    msgs.append(tool_result_message(neutralize(call.name), error=neutralize(
                        f"invalid function call, not executed: {why}")))
                    continue
                n_tools += 1
                result, error, dt = self._execute(call)
                message, truncated = self._tool_message(call.name, result, error, budget)
                yield Event("tool_call", {"name": call.name, "arguments": call.arguments})
                yield Event("tool_result", {"name": call.name, "result": result, "error": error,
                                            "truncated": truncated, "seconds": round(dt, 3)})
                msgs.append(message)
                (errors if error is not None else results).append((call.name, result if error is None else error))
            last_results = results or last_results
            left = self.max_llm_calls - calls
            if errors and not results and left < 2:
                answer = " ".join(e for _, e in errors)
                yield from self._emit_text(answer)
                yield self._final(answer, calls, n_tools, msgs[start:], t0)
                return
            if left < 1:
                yield Event("note", {"text": f"the budget of {self.max_llm_calls} LLM calls is spent; "
                                             "showing the tool result as it is"})
                answer = "\n\n".join(format_result(n, r) for n, r in results) if results else \
                    " ".join(e for _, e in errors)
                yield from self._emit_text(answer)
                yield self._final(answer, calls, n_tools, msgs[start:], t0)
                return

    def _execute(self, call: ToolCall) -> tuple[dict | None, str | None, float]:
        from llamatune.tools.http import ToolError

        t = time.perf_counter()
        try:
            result = self.tools[call.name](**call.arguments)
            if not isinstance(result, dict):
                result = {"value": result}
            return result, None, time.perf_counter() - t
        except ToolError as exc:
            return None, str(exc), time.perf_counter() - t
        except Exception as exc:  # a tool bug must not take the chat down
            return None, f"The tool {call.name} failed ({type(exc).__name__}).", time.perf_counter() - t

    @staticmethod
    def _emit_text(text: str) -> Iterator[Event]:
        if text:
            yield Event("token", {"text": text})

    def _final(self, text: str, calls: int, n_tools: int, new: list[dict], t0: float) -> Event:
        text = text or EMPTY
        messages = list(new) + [{"role": "assistant", "content": text}]
        return Event("final", {"text": text, "llm_calls": calls, "tool_calls": n_tools, "messages": messages,
                               "seconds": round(time.perf_counter() - t0, 3),
                               "constrained_tokens": getattr(self, "_constrained", 0)})


class ContextError(ValueError):
    """The fixed part of the prompt does not fit the model's context."""
