"""Serving the agent to many users: a lazy model registry (one model resident at a time by default, one
generation per model at a time, a visible busy state) and the translation of agent events into chat
messages (tool calls and results as collapsible metadata messages, the answer streamed).

``space/app.py`` is a thin Gradio layer over this module; nothing here imports Gradio.

    registry = ModelRegistry(load_config("space/models.yaml"))            # or models_from_dir("runs/demo/gguf")
    for messages in respond(registry.agent_factory, "Weather in Oslo?", [], registry.names[0], "weather", False):
        ...                                                                # each item: the reply so far
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from llamatune.chat import model_template


@dataclass
class ServedModel:
    """One selectable model: a local GGUF ``path``, or a hub ``repo`` + ``file`` (from the Hugging Face cache,
    where a Space's ``preload_from_hub`` puts it at build time, else downloaded). ``origin`` names the config
    entry it came from, for error messages."""

    name: str
    path: str | None = None
    repo: str | None = None
    file: str | None = None
    template: str = "auto"
    n_ctx: int = 4096
    extra: dict = field(default_factory=dict)
    origin: str = ""
    resolved: str | None = field(default=None, repr=False)

    def resolve(self, cache_dir: str | Path | None = None) -> str:
        """The local GGUF path: ``path``, or the cached hub file (no network when it is cached), else a download.
        Errors name the config entry and the file."""
        where = self.origin or f"model {self.name!r}"
        if self.resolved and Path(self.resolved).exists():
            return self.resolved
        if self.path:
            if not Path(self.path).exists():
                raise FileNotFoundError(f"{where}: no GGUF at {self.path}")
            self.resolved = self.path
            return self.path
        if not (self.repo and self.file):
            raise ValueError(f"{where}: give either 'path' or 'repo' and 'file'")
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        cached = try_to_load_from_cache(self.repo, self.file, cache_dir=cache_dir)
        if isinstance(cached, str) and Path(cached).exists():
            self.resolved = cached
            return cached
        try:
            self.resolved = hf_hub_download(self.repo, self.file, cache_dir=cache_dir)
        except Exception as exc:  # offline, no such repo or file, gated, network: all mean "cannot serve it"
            raise FileNotFoundError(f"{where}: {self.file} from the Hub repo {self.repo} is not in the Hugging Face "
                                    f"cache and could not be downloaded ({type(exc).__name__}: {exc})") from exc
        return self.resolved


def resolve_all(specs: list[ServedModel], cache_dir: str | Path | None = None) -> dict[str, str]:
    """Resolve every model at startup (so no user request waits for a download and a missing model stops the app
    before it serves): ``{name: local path}``. Raises FileNotFoundError listing every model that is missing."""
    paths, errors = {}, []
    for spec in specs:
        try:
            paths[spec.name] = spec.resolve(cache_dir)
        except (FileNotFoundError, ValueError) as exc:
            errors.append(str(exc))
    if errors:
        raise FileNotFoundError("missing model(s):\n  " + "\n  ".join(errors))
    return paths


def load_config(path: str | Path) -> tuple[list[ServedModel], dict]:
    """``(specs, settings)`` from a models YAML: ``models: [{name, repo, file | path, template, n_ctx}]`` and
    optional ``settings`` (``max_resident``, ``n_threads``, ``max_llm_calls``…). Errors name the file and entry.
    ``{owner}`` in a ``repo`` is the project's owner (:func:`llamatune.hub.project_owner`)."""
    import yaml

    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty 'models' list")
    specs, seen = [], set()
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not e.get("name"):
            raise ValueError(f"{path}: models[{i}] needs a 'name'")
        if not (e.get("path") or (e.get("repo") and e.get("file"))):
            raise ValueError(f"{path}: models[{i}] ({e['name']}) needs 'path', or 'repo' and 'file'")
        if e["name"] in seen:
            raise ValueError(f"{path}: models[{i}]: duplicate name {e['name']!r}")
        seen.add(e["name"])
        known = {"name", "path", "repo", "file", "template", "n_ctx"}
        p, repo = e.get("path"), e.get("repo")
        if p and not Path(p).is_absolute():
            p = str((path.parent / p).resolve())
        if repo and "{owner}" in repo:
            from llamatune.hub import expand_owner

            repo = expand_owner(repo)
        specs.append(ServedModel(e["name"], p, repo, e.get("file"), e.get("template", "auto"),
                               int(e.get("n_ctx", 4096)), {k: v for k, v in e.items() if k not in known},
                               origin=f"{path}: models[{i}] ({e['name']})"))
    return specs, dict(data.get("settings") or {})


def models_from_dir(directory: str | Path, n_ctx: int = 4096) -> list[ServedModel]:
    """One spec per ``*.gguf`` under ``directory`` (e.g. what ``llamatune export`` or ``make demo`` wrote)."""
    directory = Path(directory)
    files = sorted(directory.rglob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf files under {directory}")
    return [ServedModel(f.stem if f.parent == directory else f"{f.parent.name}/{f.stem}", str(f), n_ctx=n_ctx)
            for f in files]


def default_model(names: list[str]) -> str:
    """The model a new visitor meets: the first function-calling fine-tune (the one the Space exists to show),
    else the first fine-tune, else the first model."""
    for marks in (("funccall",), ("tuned", "finetome")):
        hit = next((n for n in names if any(m in n.lower() for m in marks)), None)
        if hit:
            return hit
    return names[0]


def space_title(names: list[str]) -> str:
    """A title that names what is served: the models' common stem, then what tells them apart."""
    import os.path
    import re

    stem = os.path.commonprefix(list(names)) if len(names) > 1 else ""
    if not all(len(n) > len(stem) and n[len(stem)] in "-_ /" for n in names):  # cut at a word boundary
        stem = stem[: max((m.end() for m in re.finditer(r"[-_ /]", stem)), default=0)]
    parts = [n[len(stem):].strip(" -_/") or n for n in names]
    head = stem.strip(" -_/")
    return f"{head + ': ' if head else ''}{' vs '.join(parts)}, as tool-using agents on CPU"


def llama_cpp_loader(n_threads: int | None = None, **kwargs) -> Callable[[ServedModel], object]:
    """A loader for :class:`ModelRegistry` that opens specs with :class:`llamatune.runtime.LlamaCppModel`."""

    def load(spec: ServedModel):
        from llamatune.runtime import LlamaCppModel

        path = spec.resolve()
        template = model_template(path) if spec.template == "auto" else spec.template
        return LlamaCppModel(path, n_ctx=spec.n_ctx, n_threads=n_threads, chat_template=template, name=spec.name,
                             **kwargs)

    return load


class ModelRegistry:
    """Models by name, loaded lazily; at most ``max_resident`` in memory (least recently used leaves first);
    one generation per model at a time. A 16 GB CPU Space cannot hold three 3B models, hence 1 by default."""

    def __init__(self, specs: list[ServedModel], loader: Callable[[ServedModel], object] | None = None,
                 max_resident: int = 1, agent_kwargs: dict | None = None, wait_timeout: float = 300.0):
        if not specs:
            raise ValueError("no models to serve")
        self.specs = {s.name: s for s in specs}
        self.loader = loader or llama_cpp_loader()
        self.max_resident = max(1, max_resident)
        self.agent_kwargs = dict(agent_kwargs or {})
        self.wait_timeout = wait_timeout  # the longest a request waits for a busy model
        self._cond = threading.Condition()
        self._resident: dict[str, object] = {}  # insertion order = least recently used first
        self._in_use: set[str] = set()  # generating, or being loaded
        self.load_seconds: dict[str, float] = {}

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def resident(self) -> list[str]:
        with self._cond:
            return list(self._resident)

    def busy(self, name: str) -> bool:
        """Whether a request for ``name`` would wait for another one to finish."""
        with self._cond:
            if name in self._in_use:
                return True
            if name in self._resident or len(self._resident) < self.max_resident:
                return False
            return all(n in self._in_use for n in self._resident)

    def acquire(self, name: str, timeout: float | None = None):
        """Wait until ``name`` is free (loading it if needed) and return its model; pair with :meth:`release`.
        ``TimeoutError`` after ``timeout`` seconds (default ``wait_timeout``) of waiting for other requests."""
        if name not in self.specs:
            raise KeyError(f"unknown model {name!r}; known: {', '.join(self.specs)}")
        limit = self.wait_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit

        def wait():
            left = deadline - time.monotonic()
            if left <= 0 or not self._cond.wait(left) and time.monotonic() >= deadline:
                raise TimeoutError(f"{name} was still busy with other requests after {limit:.0f} s; try again")

        with self._cond:
            while True:
                if name in self._in_use:
                    wait()
                    continue
                if name in self._resident:
                    model = self._resident.pop(name)
                    self._resident[name] = model  # most recently used
                    self._in_use.add(name)
                    return model
                loading = sum(1 for n in self._in_use if n not in self._resident)
                if len(self._resident) + loading < self.max_resident:
                    break
                idle = [n for n in self._resident if n not in self._in_use]
                if idle:
                    self._close(idle[0])
                    continue
                wait()
            self._in_use.add(name)  # reserved while loading
        t = time.perf_counter()
        try:
            model = self.loader(self.specs[name])
        except BaseException:
            with self._cond:
                self._in_use.discard(name)
                self._cond.notify_all()
            raise
        with self._cond:
            self._resident[name] = model
            self.load_seconds[name] = time.perf_counter() - t
        return model

    def release(self, name: str) -> None:
        with self._cond:
            self._in_use.discard(name)
            self._cond.notify_all()

    def _close(self, name: str) -> None:
        model = self._resident.pop(name)
        close = getattr(model, "close", None)
        if close:
            close()

    def close(self) -> None:
        with self._cond:
            for name in list(self._resident):
                self._close(name)

    def agent_factory(self, model_name: str, mode: str, icl: bool | int = False) -> "AgentLease":
        """What the Space calls per message: a lease that yields an :class:`llamatune.agent.Agent`."""
        return AgentLease(self, model_name, mode, icl)


class AgentLease:
    """``with lease as agent:`` holds the model for one turn. ``busy`` and ``needs_load`` are known before."""

    def __init__(self, registry: ModelRegistry, model_name: str, mode: str, icl: bool | int):
        self.registry, self.model_name, self.mode = registry, model_name, mode
        self.icl = (3 if icl is True else int(icl or 0))
        self.busy = registry.busy(model_name)
        self.needs_load = model_name not in registry.resident()

    def __enter__(self):
        from llamatune.agent import Agent

        model = self.registry.acquire(self.model_name)
        self._held = True
        try:
            from llamatune.data.icl import icl_block
            from llamatune.protocol import MODES

            examples = icl_block(self.icl, tools=MODES[self.mode]) if self.icl else ""
            return Agent(model, mode=self.mode, examples=examples, **self.registry.agent_kwargs)
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(self, *exc):
        if getattr(self, "_held", False):
            self._held = False
            self.registry.release(self.model_name)
        return False


# --- chat UI messages ------------------------------------------------------------------------------------

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


MAX_MESSAGE_CHARS = 8_000  # a message longer than this is cut (the model's context holds ~4k tokens anyway)
MAX_HISTORY_MESSAGES = 40  # only the newest turns of a long chat reach the agent (which fits them to the context)


def respond(agent_factory, message: str, history: list[dict], model_name: str, mode: str, icl: bool | int,
            *, who: str | None = None, log: Callable[[dict], None] | None = None) -> Iterator[list[dict]]:
    """One chat turn for a UI: yields the reply so far as a list of message dicts (metadata messages for
    the busy state, notes, tool calls and results; then the streamed answer; then a one-line summary).
    Oversized input is cut before it reaches the model (:data:`MAX_MESSAGE_CHARS`, :data:`MAX_HISTORY_MESSAGES`),
    with a note; a model busy for longer than the registry's ``wait_timeout`` ends the turn with a message.
    ``log`` (if given) receives one record per turn: ``who``, model, wall-clock times and the outcome."""
    rec = {"who": who, "model": model_name, "t_enter": time.time(), "t_acquired": None, "outcome": "ended"}
    try:
        yield from _respond(agent_factory, message, history, model_name, mode, icl, rec)
    except GeneratorExit:  # the UI stopped reading: the stop button, or a closed browser tab
        if rec["outcome"] != "answered":
            rec["outcome"] = "closed"
        raise
    except BaseException as exc:
        rec["outcome"] = f"error: {type(exc).__name__}"
        raise
    finally:
        rec["t_end"] = time.time()
        if log is not None:
            log(rec)


def _respond(agent_factory, message, history, model_name, mode, icl, rec):
    reply: list[dict] = []
    message = message if isinstance(message, str) else str(message or "")
    if len(message) > MAX_MESSAGE_CHARS:
        reply.append({"role": "assistant", "metadata": {"title": "ℹ️ Note", "status": "done"},
                      "content": f"Your message has {len(message):,} characters; only the first "
                                 f"{MAX_MESSAGE_CHARS:,} were used."})
        message = message[:MAX_MESSAGE_CHARS]
    history = history_from_chat(history)[-MAX_HISTORY_MESSAGES:]
    lease = agent_factory(model_name, mode, icl)
    waiting = None
    if lease.busy:
        waiting = {"role": "assistant", "content": f"{model_name} is answering another request; yours is next.",
                   "metadata": {"title": "⏳ Busy: waiting for the model", "status": "pending"}}
        reply.append(waiting)
        yield _snapshot(reply)
    elif lease.needs_load:
        waiting = {"role": "assistant", "content": f"Loading {model_name} (first use; models are loaded one at a time).",
                   "metadata": {"title": f"⏳ Loading {model_name}", "status": "pending"}}
        reply.append(waiting)
        yield _snapshot(reply)
    t_wait = time.perf_counter()
    with contextlib.ExitStack() as held:
        try:
            agent = held.enter_context(lease)
        except TimeoutError as exc:
            rec["outcome"] = "timeout"
            if waiting is not None:
                waiting["metadata"] = {**waiting["metadata"], "status": "done"}
            reply.append({"role": "assistant", "content": str(exc)})
            yield _snapshot(reply)
            return
        rec["t_acquired"] = time.time()
        if waiting is not None:
            waiting["metadata"] = {**waiting["metadata"], "status": "done",
                                   "duration": round(time.perf_counter() - t_wait, 2)}
        answer = None
        tool_msgs: dict[int, dict] = {}
        n_tool = 0
        for ev in agent.run(history, message):
            d = ev.data
            if ev.kind == "token":
                if answer is None:
                    answer = {"role": "assistant", "content": ""}
                    reply.append(answer)
                answer["content"] += d["text"]
            elif ev.kind == "note":
                reply.append({"role": "assistant", "content": d["text"], "metadata": {"title": "ℹ️ Note", "status": "done"}})
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
                rec["outcome"] = "answered"
            else:
                continue
            yield _snapshot(reply)
