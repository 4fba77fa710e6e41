"""Serving the agent to many users: the models offered (``space/models.yaml`` or a folder of GGUFs), the limits
a Space owner sets (:class:`ServingLimits`, one place), and a lazy model registry: one model resident by default,
one generation per model at a time, one first-come-first-served line, a busy answer when the line is full, a
deadline per turn. :mod:`llamatune.chat_turn` turns a turn's agent events into chat messages.

``space/app.py`` is a thin Gradio layer over these modules; nothing here imports Gradio.

    specs, settings = load_config("space/models.yaml")                    # or models_from_dir("runs/demo/gguf")
    registry = ModelRegistry(specs, llama_cpp_loader(), limits=ServingLimits.from_settings(settings))
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Callable

from llamatune.chat import model_template
from llamatune.space_models import (ServedModel, ServingLimits, default_model, load_config,  # noqa: F401
                                     models_from_dir, resolve_all, space_title)


def llama_cpp_loader(n_threads: int | None = None, **kwargs) -> Callable[[ServedModel], object]:
    """A loader for :class:`ModelRegistry` that opens specs with :class:`llamatune.runtime.LlamaCppModel`."""

    def load(spec: ServedModel):
        from llamatune.runtime import LlamaCppModel

        path = spec.resolve()
        template = model_template(path) if spec.template == "auto" else spec.template
        return LlamaCppModel(path, n_ctx=spec.n_ctx, n_threads=n_threads, chat_template=template, name=spec.name,
                             **kwargs)

    return load


class SpaceBusy(RuntimeError):
    """The line for the models is full, or its expected wait is longer than the owner allows: the turn is
    answered at once ("busy, try again in a minute") instead of waiting to time out."""


class TurnDeadline(TimeoutError):
    """A turn held its model longer than ``ServingLimits.turn_deadline``: its generation is stopped."""


class _Deadline:
    """A model whose every streamed piece checks the turn's deadline (:class:`TurnDeadline` past it), so a turn
    cannot hold the model longer than the owner allows, wherever in the agent's loop it is."""

    def __init__(self, model, seconds: float):
        self._model, self._seconds = model, seconds
        self._end = time.monotonic() + seconds

    def __getattr__(self, name):
        return getattr(self._model, name)

    def _check(self) -> None:
        if time.monotonic() > self._end:
            raise TurnDeadline(f"this turn reached the Space's limit of {self._seconds:g} s")

    def complete(self, prompt: str, *, stream: bool = False, **kwargs):
        self._check()
        pieces = self._guard(self._model.complete(prompt, stream=True, **kwargs))
        return pieces if stream else "".join(pieces)

    def _guard(self, pieces):
        if isinstance(pieces, str):
            pieces = [pieces]
        try:
            for p in pieces:
                self._check()
                yield p
        finally:
            getattr(pieces, "close", lambda: None)()


class _Pinned:
    """A loaded model whose every call, from loading to closing, runs on its model's own thread (one per model
    name, kept for the next load). llama.cpp keeps state per calling thread (an OpenMP team, a malloc arena that
    keeps what is freed), so a model stepped from whichever Gradio worker was free, or loaded on a new thread each
    time, grew the server by 100-400 MB in 48 turns (bench/space_load.py). Calls from its own thread run directly."""

    __slots__ = ("_model", "_pool", "_tid")

    def __init__(self, load: Callable[[], object], pool):
        object.__setattr__(self, "_pool", pool)
        object.__setattr__(self, "_tid", pool.submit(threading.get_ident).result())
        object.__setattr__(self, "_model", pool.submit(load).result())

    def _run(self, fn, *args, **kwargs):
        if threading.get_ident() == self._tid:
            return fn(*args, **kwargs)
        return self._pool.submit(fn, *args, **kwargs).result()

    def __getattr__(self, name):
        if name in _Pinned.__slots__:
            raise AttributeError(name)
        return getattr(self._model, name)

    def __setattr__(self, name, value):
        setattr(self._model, name, value)

    def tokenize(self, text: str) -> list[int]:
        return self._run(self._model.tokenize, text)

    def count_tokens(self, text: str) -> int:
        return self._run(self._model.count_tokens, text)

    def complete(self, prompt: str, *, stream: bool = False, **kwargs):
        pieces = self._run(self._model.complete, prompt, stream=stream, **kwargs)
        return self._steps(pieces) if stream and not isinstance(pieces, str) else pieces

    def _steps(self, pieces):
        done = object()
        try:
            while (piece := self._run(next, pieces, done)) is not done:
                yield piece
        finally:
            self._run(getattr(pieces, "close", lambda: None))

    def close(self) -> None:
        self._run(getattr(self._model, "close", lambda: None))
        self._run(_trim_heap)


def _trim_heap() -> None:
    """Give the memory a closed model freed back to the system (glibc keeps freed blocks in its arenas)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class _Ticket:
    """A place in the registry's line: the model wanted, and when it joined."""

    __slots__ = ("name", "since")

    def __init__(self, name: str):
        self.name, self.since = name, time.monotonic()


class ModelRegistry:
    """Models by name, loaded lazily; at most ``max_resident`` in memory (least recently used leaves first);
    one generation per model at a time; requests wait in one first-come-first-served line.

    A request in the line goes ahead of an earlier one only when it wants another model that is free and the
    earlier one does not need a model loaded: so a switch waits for the turn in progress (never interrupting it),
    and then for nobody who came later. ``limits`` (:class:`ServingLimits`; keyword overrides such as
    ``wait_timeout=`` or ``max_resident=`` are applied to it) bounds the line and the waits."""

    def __init__(self, specs: list[ServedModel], loader: Callable[[ServedModel], object] | None = None,
                 agent_kwargs: dict | None = None, limits: ServingLimits | None = None, **overrides):
        if not specs:
            raise ValueError("no models to serve")
        self.specs = {s.name: s for s in specs}
        self.loader = loader or llama_cpp_loader()
        self.limits = dataclasses.replace(limits or ServingLimits(), **overrides)
        self.agent_kwargs = dict(agent_kwargs or {})
        self._cond = threading.Condition()
        self._resident: dict[str, object] = {}  # insertion order = least recently used first
        self._threads: dict = {}  # model name -> its one thread
        self._in_use: set[str] = set()  # generating, or being loaded
        self._line: list[_Ticket] = []  # waiting, in arrival order
        self._held_since: dict[str, float] = {}
        self.mean_hold: float | None = None  # seconds a turn holds its model (moving average), for the wait estimate
        self.load_seconds: dict[str, float] = {}

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    @property
    def max_resident(self) -> int:
        return max(1, self.limits.max_resident)

    @property
    def wait_timeout(self) -> float:
        return self.limits.wait_timeout

    def resident(self) -> list[str]:
        with self._cond:
            return list(self._resident)

    def waiting(self) -> int:
        with self._cond:
            return len(self._line)

    def _ready(self, t: _Ticket, ahead: list[_Ticket]) -> bool:
        """Whether ``t`` may take its model now (call with the lock held)."""
        if any(e.name == t.name or e.name not in self._resident for e in ahead):
            return False  # behind an earlier request for the same model, or one that must load a model
        if t.name in self._in_use:
            return False
        if t.name in self._resident:
            return True
        loading = sum(1 for n in self._in_use if n not in self._resident)
        return (len(self._resident) + loading < self.max_resident
                or any(n not in self._in_use for n in self._resident))

    def busy(self, name: str) -> bool:
        """Whether a request for ``name`` made now would wait for others to finish."""
        with self._cond:
            return not self._ready(_Ticket(name), self._line)

    def join(self, name: str) -> _Ticket:
        """Take a place in line for ``name``; :meth:`wait` for the model with it, :meth:`leave` to give it up.
        ``KeyError`` for an unknown model; :class:`SpaceBusy` when the line is full, or when the wait it expects
        (requests ahead × the average time a turn holds its model) is longer than ``wait_timeout``."""
        if name not in self.specs:
            raise KeyError(f"unknown model {name!r}; known: {', '.join(self.specs)}")
        t = _Ticket(name)
        with self._cond:
            if not self._ready(t, self._line):
                ahead = len(self._line) + len(self._in_use)
                expected = ahead * (self.mean_hold or 0.0) / self.max_resident
                if len(self._line) >= self.limits.max_waiting or expected > self.wait_timeout:
                    raise SpaceBusy(f"The Space is busy ({len(self._line)} waiting for a model"
                                    + (f", about {expected:.0f} s" if expected else "")
                                    + "). Please try again in a minute.")
            self._line.append(t)
        return t

    def ahead(self, ticket: _Ticket) -> int:
        """Requests before ``ticket``: those in line before it and those holding a model now."""
        with self._cond:
            i = self._line.index(ticket) if ticket in self._line else 0
            return i + len(self._in_use)

    def wait(self, ticket: _Ticket, timeout: float):
        """The model of ``ticket`` once it is its turn (loading it if needed; pair with :meth:`release`), or
        ``None`` if that did not happen within ``timeout`` seconds (the ticket keeps its place)."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                i = self._line.index(ticket)
                if self._ready(ticket, self._line[:i]):
                    break
                left = end - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            name = ticket.name
            del self._line[i]
            self._in_use.add(name)  # held (or reserved while loading)
            self._held_since[name] = time.monotonic()
            self._cond.notify_all()  # the line moved
            if name in self._resident:
                model = self._resident.pop(name)
                self._resident[name] = model  # most recently used
                return model
            loading = sum(1 for n in self._in_use if n not in self._resident) - 1
            if len(self._resident) + loading >= self.max_resident:
                self._close(next(n for n in self._resident if n not in self._in_use))
        t = time.perf_counter()
        try:
            model = _Pinned(lambda: self.loader(self.specs[name]), self._thread(name))
        except BaseException:
            self.release(name)
            raise
        with self._cond:
            self._resident[name] = model
            self.load_seconds[name] = time.perf_counter() - t
        return model

    def leave(self, ticket: _Ticket) -> None:
        """Give up a place in line (a closed browser tab, a timeout); no-op once the ticket was served."""
        with self._cond:
            if ticket in self._line:
                self._line.remove(ticket)
                self._cond.notify_all()

    def acquire(self, name: str, timeout: float | None = None):
        """Wait in line until ``name`` is free (loading it if needed) and return its model; pair with
        :meth:`release`. ``TimeoutError`` after ``timeout`` seconds (default ``wait_timeout``) of waiting."""
        limit = self.wait_timeout if timeout is None else timeout
        ticket = self.join(name)
        try:
            model = self.wait(ticket, limit)
        finally:
            self.leave(ticket)
        if model is None:
            raise TimeoutError(f"{name} was still busy with other requests after {limit:.0f} s; try again")
        return model

    def release(self, name: str) -> None:
        with self._cond:
            self._in_use.discard(name)
            since = self._held_since.pop(name, None)
            if since is not None:
                held = time.monotonic() - since
                self.mean_hold = held if self.mean_hold is None else 0.7 * self.mean_hold + 0.3 * held
            self._cond.notify_all()

    def _close(self, name: str) -> None:
        getattr(self._resident.pop(name), "close", lambda: None)()

    def _thread(self, name: str):
        """The one thread that runs every call into model ``name`` (see :class:`_Pinned`)."""
        from concurrent.futures import ThreadPoolExecutor

        with self._cond:
            if name not in self._threads:
                self._threads[name] = ThreadPoolExecutor(1, thread_name_prefix=f"model-{name}")
            return self._threads[name]

    def close(self) -> None:
        with self._cond:
            for name in list(self._resident):
                self._close(name)
            for pool in self._threads.values():
                pool.shutdown(wait=False)
            self._threads.clear()

    def agent_factory(self, model_name: str, mode: str, icl: bool | int = False) -> "AgentLease":
        """What the Space calls per message: a lease that yields an :class:`llamatune.agent.Agent`."""
        return AgentLease(self, model_name, mode, icl)


class AgentLease:
    """One turn's hold on its model. ``busy`` and ``needs_load`` are known at once; :meth:`wait` waits in line
    in steps (yielding the number of requests ahead, so a UI can show progress and drop a closed session);
    ``with lease as agent:`` then runs the turn (waiting first if :meth:`wait` was not used) under the
    registry's ``turn_deadline``. :meth:`close` gives everything back, whatever state the lease is in."""

    def __init__(self, registry: ModelRegistry, model_name: str, mode: str, icl: bool | int):
        self.registry, self.model_name, self.mode = registry, model_name, mode
        self.icl = (3 if icl is True else int(icl or 0))
        self.busy = registry.busy(model_name)
        self.needs_load = model_name not in registry.resident()
        self._model = None
        self._ticket = None

    def wait(self, step: float = 1.0):
        """A generator: yields the requests ahead every ``step`` seconds while waiting; returns when the model is
        held. Raises :class:`SpaceBusy` at once when the line is full, ``TimeoutError`` after ``wait_timeout``."""
        reg = self.registry
        if self._model is not None:
            return
        self._ticket = reg.join(self.model_name)
        end = time.monotonic() + reg.wait_timeout
        try:
            while self._model is None:
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.model_name} was still busy with other requests after "
                                       f"{reg.wait_timeout:.0f} s; please try again in a minute")
                self._model = reg.wait(self._ticket, min(step, left))
                if self._model is None:
                    yield reg.ahead(self._ticket)
        finally:
            reg.leave(self._ticket)

    def __enter__(self):
        from llamatune.agent import Agent

        if self._model is None:
            self._model = self.registry.acquire(self.model_name)
        try:
            from llamatune.data.icl import icl_block
            from llamatune.protocol import MODES

            template = getattr(self._model, "template", None)  # the examples write calls in the model's own syntax
            examples = icl_block(self.icl, tools=MODES[self.mode], template=template) if self.icl else ""
            model = _Deadline(self._model, self.registry.limits.turn_deadline)
            return Agent(model, mode=self.mode, examples=examples, **self.registry.agent_kwargs)
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self) -> None:
        if self._ticket is not None:
            self.registry.leave(self._ticket)
        if self._model is not None:
            self._model = None
            self.registry.release(self.model_name)
