"""One chat turn for a UI: agent events turned into chat messages (the wait in line, notes, tool calls and results
as collapsible metadata messages, the answer streamed, a summary line), under the owner's limits of
:class:`llamatune.serving.ServingLimits`. ``space/app.py`` calls :func:`respond`; nothing here imports Gradio.

    registry = ModelRegistry(specs, loader)
    for messages in respond(registry.agent_factory, "Weather in Oslo?", [], registry.names[0], "weather", False):
        ...                                                                # each item: the reply so far
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Callable, Iterator

from llamatune.serving import SpaceBusy, TurnDeadline

MAX_MESSAGE_CHARS = 8_000  # a message longer than this is cut (the model's context holds ~4k tokens anyway)
MAX_HISTORY_MESSAGES = 40  # only the newest turns of a long chat reach the agent (which fits them to the context)
WAIT_STEP = 1.0  # seconds between updates while a turn waits in line (each lets the UI drop a closed session)


def history_from_chat(history: list[dict]) -> list[dict]:
    """Gradio "messages" history → the agent's history: user/assistant text only (tool traces and notes, which
    carry a metadata title, are left out). Content may be a string or a list of parts."""
    out = []
    for m in history or []:
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            continue
        if (m.get("metadata") or {}).get("title"):
            continue
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(c if isinstance(c, str) else c.get("text", "") for c in content
                              if isinstance(c, str) or (isinstance(c, dict) and c.get("type", "text") == "text"))
        if isinstance(content, str) and content.strip():
            out.append({"role": m["role"], "content": content})
    return out


def _code(obj) -> str:
    return "```json\n" + json.dumps(obj, ensure_ascii=False, indent=2) + "\n```"


def _snapshot(reply: list[dict]) -> list[dict]:
    return [{**m, "metadata": dict(m["metadata"])} if "metadata" in m else dict(m) for m in reply]


def respond(agent_factory, message: str, history: list[dict], model_name: str, mode: str, icl: bool | int,
            *, who: str | None = None, log: Callable[[dict], None] | None = None) -> Iterator[list[dict]]:
    """One chat turn for a UI: yields the reply so far as a list of message dicts.

    * Oversized input is cut before it reaches the model (:data:`MAX_MESSAGE_CHARS`,
      :data:`MAX_HISTORY_MESSAGES`), with a note.
    * A turn that must wait shows a "⏳" step, updated every :data:`WAIT_STEP` seconds with the requests ahead:
      each update is a point where the UI may close the generator (a closed browser tab), which gives up the
      place in line, so a closed session never holds a model. A full line ("busy, try again in a minute") or a
      wait past ``wait_timeout`` ends the turn with a message.
    * A turn that holds its model past ``turn_deadline`` is stopped, its answer so far kept, with a note.

    ``log`` (if given) receives one record per turn, also for a closed one: ``who``, ``model``, wall-clock
    ``t_enter`` / ``t_acquired`` / ``t_end`` and ``outcome`` (answered, busy, timeout, deadline, closed, error)."""
    rec = {"who": who, "model": model_name, "t_enter": time.time(), "t_acquired": None, "outcome": "ended"}
    try:
        yield from _turn(agent_factory, message, history, model_name, mode, icl, rec)
    except GeneratorExit:  # the UI stopped reading: the stop button, or a closed browser tab
        if rec["outcome"] == "ended":
            rec["outcome"] = "closed"
        raise
    except BaseException as exc:
        rec["outcome"] = f"error: {type(exc).__name__}"
        raise
    finally:
        rec["t_end"] = time.time()
        if log is not None:
            log(rec)


def _turn(agent_factory, message, history, model_name, mode, icl, rec) -> Iterator[list[dict]]:
    reply: list[dict] = []
    message = message if isinstance(message, str) else str(message or "")
    if len(message) > MAX_MESSAGE_CHARS:
        reply.append({"role": "assistant", "metadata": {"title": "ℹ️ Note", "status": "done"},
                      "content": f"Your message has {len(message):,} characters; only the first "
                                 f"{MAX_MESSAGE_CHARS:,} were used."})
        message = message[:MAX_MESSAGE_CHARS]
    history = history_from_chat(history)[-MAX_HISTORY_MESSAGES:]
    with contextlib.closing(agent_factory(model_name, mode, icl)) as lease:
        waiting = None
        busy = {"role": "assistant", "content": f"{model_name} is answering another request; yours is next.",
                "metadata": {"title": "⏳ Busy: waiting for the model", "status": "pending"}}
        if lease.busy:
            waiting = busy
        elif lease.needs_load:
            waiting = {"role": "assistant",
                       "content": f"Loading {model_name} (first use; models are loaded one at a time).",
                       "metadata": {"title": f"⏳ Loading {model_name}", "status": "pending"}}
        if waiting is not None:
            reply.append(waiting)
            yield _snapshot(reply)
        t_wait = time.perf_counter()
        try:
            for ahead in lease.wait(WAIT_STEP):
                if waiting is None:  # the model was taken since the lease was made
                    waiting = busy
                    reply.append(waiting)
                waiting["content"] = (f"{model_name} is answering other requests; {ahead} ahead of yours "
                                      f"(waiting {time.perf_counter() - t_wait:.0f} s).")
                yield _snapshot(reply)
        except (SpaceBusy, TimeoutError) as exc:
            rec["outcome"] = "busy" if isinstance(exc, SpaceBusy) else "timeout"
            if waiting is not None:
                waiting["metadata"] = {**waiting["metadata"], "status": "done"}
            reply.append({"role": "assistant", "content": str(exc),
                          "metadata": {"title": "⏳ Busy: please try again in a minute", "status": "done"}})
            yield _snapshot(reply)
            return
        rec["t_acquired"] = time.time()
        if waiting is not None:
            waiting["metadata"] = {**waiting["metadata"], "status": "done",
                                   "duration": round(time.perf_counter() - t_wait, 2)}
            yield _snapshot(reply)  # the model is ours: one more point to drop a session closed meanwhile
        with lease as agent, contextlib.closing(agent.run(history, message)) as events:
            try:
                yield from _stream(events, reply, model_name, mode)
                rec["outcome"] = "answered"
            except TurnDeadline as exc:
                rec["outcome"] = "deadline"
                reply.append({"role": "assistant", "content": f"Stopped: {exc}; the answer above is what was "
                                                              "written by then. Try a shorter question.",
                              "metadata": {"title": "⏱️ Time limit", "status": "done"}})
                yield _snapshot(reply)


def _stream(events, reply: list[dict], model_name: str, mode: str) -> Iterator[list[dict]]:
    """Agent events → chat messages appended to ``reply``; yields a snapshot after each visible change."""
    answer = None
    tool_msgs: dict[int, dict] = {}
    n_tool = 0
    for ev in events:
        d = ev.data
        if ev.kind == "token":
            if answer is None:
                answer = {"role": "assistant", "content": ""}
                reply.append(answer)
            answer["content"] += d["text"]
        elif ev.kind == "note":
            reply.append({"role": "assistant", "content": d["text"],
                          "metadata": {"title": "ℹ️ Note", "status": "done"}})
        elif ev.kind == "invalid_call":
            reply.append({"role": "assistant",
                          "content": f"Not executed ({d['action']}): {d['reason']}\n\n```\n{d['text'][:500]}\n```",
                          "metadata": {"title": "⚠️ Invalid tool call", "status": "done"}})
        elif ev.kind == "tool_call":
            n_tool += 1
            msg = {"role": "assistant", "content": "Arguments:\n" + _code(d["arguments"]),
                   "metadata": {"title": f"🛠️ {d['name']}", "status": "pending", "id": f"tool-{n_tool}"}}
            tool_msgs[n_tool] = msg
            reply.append(msg)
        elif ev.kind == "tool_result":
            msg = tool_msgs[n_tool]
            shown = ("Error: " + d["error"]) if d["error"] is not None else "Result:\n" + _code(d["result"])
            if d.get("truncated"):
                shown += "\n\n(truncated for the model's context)"
            msg["content"] += "\n\n" + shown
            msg["metadata"] = {**msg["metadata"], "status": "done", "duration": d["seconds"]}
        elif ev.kind == "final":
            calls = d["llm_calls"]
            summary = (f"{calls} LLM call{'s' if calls != 1 else ''} · {d['tool_calls']} tool call"
                       f"{'s' if d['tool_calls'] != 1 else ''} · {d['seconds']:.2f} s")
            if answer is None:
                reply.append({"role": "assistant", "content": d["text"]})
            reply.append({"role": "assistant", "content": f"{model_name}, {mode} mode",
                          "metadata": {"title": summary, "status": "done"}})
        else:
            continue
        yield _snapshot(reply)
