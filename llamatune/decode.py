"""The one llama.cpp decoding loop: several sequences in one context, one ``llama_decode`` per step for all of them.

A CPU decode step is bound by memory bandwidth (every token reads all the weights), so N sequences in one batch cost
little more than one. :class:`Decoder` runs :class:`Request` s on ``n_seq`` slots (:func:`llamatune.runtime.
open_decoder`): continuous batching (a finished sequence's slot takes the next request in the same step), prefix
reuse (a sequence starts from the longest prefix of its tokens any slot holds, via ``llama_memory_seq_rm`` /
``seq_cp``; sorted prompts evaluate shared system text and tool schemas once), and per request a budget, a stop rule
(end-of-generation tokens, ``stop_ids``, ``stop`` strings, a ``stop_when`` predicate), its own sampler chain (a
factory called once per sequence; greedy by default) and optionally a call grammar (:mod:`llamatune.grammar`),
sampled by :func:`llamatune.sampling.sample`. Text is detokenised token by token (stop strings held back until they
cannot start): streaming costs nothing. A full KV cache evicts idle slots' prefixes, then pauses the newest sequence
(re-evaluated on resumption: exact). Finished sequences' cells stay only as their slot's prefix cache (the previous
turn :class:`llamatune.runtime.LlamaCppModel` reuses). Not thread-safe: one caller drives :meth:`Decoder.step`.
"""

from __future__ import annotations

import codecs
import ctypes
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np

from llamatune.sampling import CLOSE_RESERVE, Candidates, Closer, greedy, sample, sampler_factory  # noqa: F401


@dataclass
class Request:
    """One generation: ``ids`` (the prompt's tokens) continued for at most ``max_tokens`` tokens.

    It ends at the vocabulary's end-of-generation tokens and at ``stop_ids`` (finish ``"stop"``, the token not in
    the text), at the first of the ``stop`` strings (the text cut before it), when ``stop_when(text so far)`` is
    true (the text kept whole), or at the budget (finish ``"length"``). ``sampler`` is a factory
    ``sampler(decoder) -> chain`` (a ``llama_cpp._internals.LlamaSampler`` or any object with the ``llama_sampler``
    pointer as ``.sampler``; closed with ``.close()`` when the sequence ends), called once when the sequence starts;
    ``None`` takes the decoder's default (greedy). ``grammar``: anything with ``.sampler(vocab, lazy=)`` returning a
    llama.cpp grammar sampler (a :class:`llamatune.grammar.CallGrammar`), ``lazy`` (free until its trigger) or active
    from the first token; ``None``: free; ``close_reserve``: with a grammar, the last tokens of budget in which the
    closing rule may close a call that could not end in time otherwise (:mod:`llamatune.sampling`; 0: never).
    ``special``: special tokens are detokenised as text. ``tag`` is the caller's, handed back on the sequence."""

    ids: list[int]
    max_tokens: int = 128
    stop: tuple[str, ...] | list[str] = ()
    stop_ids: frozenset[int] | set[int] = frozenset()
    stop_when: Callable[[str], bool] | None = None
    sampler: Callable[[Decoder], object] | None = None
    grammar: object = None
    lazy: bool = True
    close_reserve: int = CLOSE_RESERVE
    special: bool = True
    tag: object = None


@dataclass(eq=False)
class Sequence:
    """A request in flight and, once ``finish`` is set, its result: ``text`` (cut at a stop string), ``ids`` (the
    generated tokens, the end-of-generation one excluded), ``generated`` (tokens sampled, that one included),
    ``prompt_tokens``, ``cached_tokens`` (prompt tokens the KV cache already held), ``ttft`` (submit → first token,
    s), ``decode_s`` (first → last token, s) and ``constrained`` (tokens the grammar changed)."""

    request: Request
    index: int
    text: str = ""
    ids: list[int] = field(default_factory=list)
    finish: str | None = None  # "stop" | "length" | "cancelled"
    generated: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    t_submit: float = 0.0
    ttft: float | None = None
    decode_s: float = 0.0
    constrained: int = 0
    slot: int | None = None
    _pending: list[int] = field(default_factory=list)  # tokens still to evaluate (prompt, or the last sampled one)
    _emitted: int = 0  # characters of text handed out in events
    _chain: object = None
    _grammar: object = None  # the llama.cpp grammar sampler (kept across a pause)
    _utf8: object = None
    _budget: int = 0  # max_tokens, within the context
    _closing: bool = False  # the closing rule has begun (llamatune.sampling.Closer)

    @property
    def done(self) -> bool:
        return self.finish is not None


class Event(NamedTuple):
    """What a step produced for one sequence: new ``text`` (may be empty) and, once, ``done``."""
    seq: Sequence
    text: str
    done: bool = False


@dataclass
class _Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # tokens whose KV cells this sequence id holds, in order
    seq: Sequence | None = None
    used: int = 0  # when it last took a request (the newest is paused first, the least recent cache evicted first)


def common_prefix(a, b) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.nonzero(np.asarray(a[:n]) != np.asarray(b[:n]))[0]
    return int(diff[0]) if len(diff) else n


MIN_COPY = 32  # with a KV stream per slot, a prefix is copied (a whole stream) only when it saves this many tokens


class Decoder:
    """The decoding loop over one ``llama_cpp.Llama`` context (see the module docstring). ``llm`` comes from
    :func:`llamatune.runtime.open_llama` (``n_seq`` slots); ``sampler`` is the default sampler factory."""

    def __init__(self, llm, *, sampler: Callable[[Decoder], object] | None = None, share_prefixes: bool = True):
        import llama_cpp

        self._lib = llama_cpp
        self.llm = llm
        self.model = llm._model  # llama_cpp._internals.LlamaModel (its .vocab for grammar samplers)
        self.ctx = llm._ctx.ctx
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.vocab = self.model.vocab
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx = llama_cpp.llama_n_ctx_seq(self.ctx)  # positions one sequence can hold
        self.n_batch = llama_cpp.llama_n_batch(self.ctx)
        self.n_seq = llama_cpp.llama_n_seq_max(self.ctx)
        # one KV buffer for all slots (a prefix is shared cell by cell) or one stream per slot (a prefix is shared by
        # copying the source stream whole: worth it from MIN_COPY tokens on)
        self.unified = self.n_seq == 1 or bool(llm.context_params.kv_unified)
        self.default_sampler = sampler or greedy
        self.share_prefixes = share_prefixes  # False: every prompt evaluated whole (what the sharing buys, measured)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, self.n_seq)
        self.slots = [_Slot(i) for i in range(self.n_seq)]
        self.waiting: deque[Sequence] = deque()
        # counts: requests submitted and admitted, tokens run through the model (prefix reuse saves the rest),
        # llama_decode calls, sequences paused for room in the KV cache
        self.n_submitted = self.n_admitted = self.n_evaluated = self.n_steps = self.n_paused = 0
        self.seconds = {"prompt": 0.0, "generate": 0.0}  # in llama_decode: steps with prompt tokens, steps without
        self._pieces: dict[bool, dict[int, bytes]] = {True: {}, False: {}}
        self._kv_full = False
        self.max_active: int | None = None  # sequences running at once (None: n_seq)
        self._candidates = Candidates(self.n_vocab)  # the full candidate array a grammar's refusal needs
        self._closer = None  # the closing rule's lookups (llamatune.sampling.Closer), built at first use

    def piece(self, token: int, special: bool = True) -> bytes:
        """The bytes of one token (cached)."""
        out = self._pieces[special].get(token)
        if out is None:
            buf = ctypes.create_string_buffer(256)
            n = self._lib.llama_token_to_piece(self.vocab, token, buf, 256, 0, special)
            out = self._pieces[special][token] = buf.raw[:max(0, n)]
        return out

    def seq_pos_max(self, seq_id: int) -> int:
        """The last position a slot holds in the KV cache (-1: none)."""
        return int(self._lib.llama_memory_seq_pos_max(self.mem, seq_id))

    def submit(self, request: Request) -> Sequence:
        """Queue ``request``; it starts when a slot is free (:meth:`step`)."""
        if not request.ids:
            raise ValueError("a request needs at least one prompt token")
        if len(request.ids) >= self.n_ctx:
            raise ValueError(f"prompt of {len(request.ids)} tokens does not fit the context of {self.n_ctx}")
        seq = Sequence(request, self.n_submitted, prompt_tokens=len(request.ids), t_submit=time.perf_counter(),
                       _pending=list(request.ids))
        self.n_submitted += 1
        self.waiting.append(seq)
        return seq

    def run(self, requests: Iterable[Request], max_active: int | None = None) -> Iterator[Event]:
        """Decode ``requests`` together, ``n_seq`` (or ``max_active``) at a time, pulling the next one whenever a
        slot frees; yields the events of every step (text deltas as they become safe to show, then one ``done`` per
        sequence)."""
        self.max_active = max_active
        todo, mine, left = iter(requests), set(), 0
        try:
            while True:
                while len(self.waiting) < self.n_seq and (req := next(todo, None)) is not None:
                    mine.add(self.submit(req))
                    left += 1
                if not left:
                    return
                for ev in self.step():
                    if ev.seq in mine:
                        left -= ev.done
                        yield ev
        finally:  # the caller stopped early (a closed stream): what it started stops too
            for seq in mine:
                self.cancel(seq)

    def generate(self, requests: Iterable[Request]) -> list[Sequence]:
        """Every request decoded (:meth:`run`), the finished sequences in the order of ``requests``."""
        out = [ev.seq for ev in self.run(requests) if ev.done]
        return sorted(out, key=lambda s: s.index)

    def busy(self) -> bool:
        return bool(self.waiting) or any(s.seq is not None for s in self.slots)

    def cancel(self, seq: Sequence) -> None:
        """Stop ``seq`` now (finish ``"cancelled"``); its slot takes the next request."""
        if seq.done:
            return
        if seq in self.waiting:
            self.waiting.remove(seq)
        elif seq.slot is not None:
            self.slots[seq.slot].seq = None
        self._end(seq, "cancelled")

    def clear(self) -> None:
        """Forget every cached prefix (the KV cache emptied); waiting and running sequences are cancelled."""
        for seq in [s.seq for s in self.slots if s.seq is not None] + list(self.waiting):
            self.cancel(seq)
        self._lib.llama_memory_clear(self.mem, True)
        self.slots = [_Slot(i) for i in range(self.n_seq)]

    def close(self) -> None:
        if getattr(self, "batch", None) is not None:
            self.clear()
            self._lib.llama_batch_free(self.batch)
            self.batch = None

    def step(self) -> list[Event]:
        """Admit waiting requests into free slots, evaluate one batch (every decoding sequence's last token and as
        much pending prompt as fits ``n_batch``), sample, apply the stop rules. Returns the events."""
        if not self._kv_full:
            self._admit()
        while True:
            outputs = self._fill()
            if outputs is None:
                return []
            t0 = time.perf_counter()
            rc = self._lib.llama_decode(self.ctx, self.batch)
            if rc == 0:
                kind = "generate" if self.batch.n_tokens == len(outputs) and all(
                    s.seq.generated for s, _, _ in outputs) else "prompt"
                self.seconds[kind] += time.perf_counter() - t0
                break
            if rc == 1 and (self._evict_idle() or self._pause_newest()):
                continue
            raise RuntimeError(f"llama_decode returned {rc}" + (
                f": the KV cache ({self.n_ctx} cells) cannot hold this sequence" if rc == 1 else ""))
        self.n_steps += 1
        events = []
        for slot, take, idx in outputs:
            seq = slot.seq
            slot.tokens += seq._pending[:take]
            seq._pending = seq._pending[take:]
            self.n_evaluated += take
            if idx is not None:
                close = None
                left = seq._budget - seq.generated
                if seq._grammar is not None and (seq._closing or left <= seq.request.close_reserve):
                    self._closer = self._closer or Closer(self.vocab, self.piece, self.n_vocab)
                    close = self._closer(seq.ids, seq.request.grammar, left, seq._closing)
                    seq._closing = seq._closing or close is not None  # once closing, the call closes to its end
                token, changed = sample(self.ctx, idx, seq._chain.sampler, seq._grammar, self._candidates, close,
                                        self.piece)
                seq.constrained += changed
                events.append(self._accept(seq, token))
        return events

    def _admit(self) -> None:
        free = [s for s in self.slots if s.seq is None]
        if self.max_active:
            free = free[:max(0, self.max_active - (self.n_seq - len(free)))]
        while self.waiting and free:
            seq = self.waiting[0]
            ids = seq._pending
            # the free slot whose cache shares most with the request (the least recently used on a tie)
            slot = max(free, key=lambda s: (common_prefix(s.tokens, ids), -s.used))
            have = max(common_prefix(s.tokens, ids) for s in self.slots)
            # a running slot that will hold a longer shared prefix once its prompt is evaluated: wait for it
            if self.share_prefixes and any(s.seq is not None and s.seq._pending and len(s.seq._pending) > 1
                   and common_prefix(s.tokens + s.seq._pending, ids) > have + 16 for s in self.slots):
                return
            self.waiting.popleft()
            free.remove(slot)
            keep = self.place(slot.seq_id, ids)
            if seq._chain is None:  # a paused sequence keeps its chain
                seq.cached_tokens = keep
                seq._chain = (seq.request.sampler or self.default_sampler)(self)
                if seq.request.grammar is not None:
                    seq._grammar = seq.request.grammar.sampler(self.vocab, lazy=seq.request.lazy)
                seq._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
                seq._budget = max(1, min(seq.request.max_tokens, self.n_ctx - len(ids)))
            seq._pending = ids[keep:]
            seq.slot = slot.seq_id
            self.n_admitted += 1
            slot.used, slot.seq = self.n_admitted, seq

    def place(self, seq_id: int, ids: list[int]) -> int:
        """Make slot ``seq_id`` hold the longest prefix of ``ids`` that any slot holds (trimming its own cells or
        sharing another's), at most ``len(ids) - 1`` tokens (the last one is evaluated for its logits); returns
        that length. Only evaluated tokens count: a slot's pending tokens are not in the cache yet."""
        lib, slot = self._lib, self.slots[seq_id]
        cap = len(ids) - 1 if self.share_prefixes else 0
        own = min(common_prefix(slot.tokens, ids), cap)
        src = max(self.slots, key=lambda s: min(common_prefix(s.tokens, ids), cap))
        best = min(common_prefix(src.tokens, ids), cap)
        if best > own + (0 if self.unified else MIN_COPY) and src is not slot:
            self.share(src.seq_id, seq_id, best)
            return best
        lib.llama_memory_seq_rm(self.mem, seq_id, own, -1)
        slot.tokens = slot.tokens[:own]
        return own

    def share(self, src: int, dst: int, n: int) -> None:
        """Slot ``dst`` holds the first ``n`` tokens of slot ``src`` and nothing else: in a unified cache the cells
        gain ``dst``'s sequence id; with a stream per slot the source stream is copied whole, then cut at ``n``."""
        lib = self._lib
        lib.llama_memory_seq_rm(self.mem, dst, 0, -1)
        if self.unified:
            lib.llama_memory_seq_cp(self.mem, src, dst, 0, n)
        else:
            lib.llama_memory_seq_cp(self.mem, src, dst, -1, -1)
            lib.llama_memory_seq_rm(self.mem, dst, n, -1)
        self.slots[dst].tokens = list(self.slots[src].tokens[:n])

    def _fill(self):
        """Fill the batch: one token per decoding sequence, then pending prompts in admission order up to
        ``n_batch``, written in slot order (with a stream per slot, llama.cpp splits a batch wherever the slot ids
        are not consecutive). Returns ``[(slot, tokens taken, batch index of its logits or None)]``, or None."""
        active = sorted((s for s in self.slots if s.seq is not None and s.seq._pending), key=lambda s: (
            len(s.seq._pending) > 1 or s.seq.generated == 0, s.used))
        takes, room = {}, self.n_batch
        for slot in active:
            take = min(len(slot.seq._pending), room)
            if take <= 0:
                break
            takes[slot.seq_id], room = take, room - take
        n, outputs = 0, []
        for seq_id in sorted(takes):
            slot, take = self.slots[seq_id], takes[seq_id]
            pending, pos, last = slot.seq._pending, len(slot.tokens), takes[seq_id] == len(slot.seq._pending)
            for j in range(take):
                self.put(n + j, pending[j], pos + j, seq_id, last and j == take - 1)
            n += take
            outputs.append((slot, take, n - 1 if last else None))
        self.batch.n_tokens = n
        return outputs or None

    def _accept(self, seq: Sequence, token: int) -> Event:
        """Apply a sampled token to ``seq``: stop rules, text, budget."""
        now = time.perf_counter()
        req = seq.request
        seq.generated += 1
        seq.ttft = now - seq.t_submit if seq.ttft is None else seq.ttft
        seq.decode_s = now - seq.t_submit - seq.ttft
        if self._lib.llama_vocab_is_eog(self.vocab, token) or token in req.stop_ids:
            return self._finish(seq, "stop", flush=True)
        seq.ids.append(token)
        seq.text += seq._utf8.decode(self.piece(token, req.special))
        hold = max((len(s) for s in req.stop), default=1) - 1  # chars that might start a stop string
        if req.stop:
            found = (seq.text.find(s, max(0, seq._emitted - hold)) for s in req.stop)
            if (cut := min((i for i in found if i >= 0), default=-1)) >= 0:
                seq.text = seq.text[:cut]
                return self._finish(seq, "stop", flush=False)
        if req.stop_when is not None and req.stop_when(seq.text):
            return self._finish(seq, "stop", flush=True)
        if seq.generated >= seq._budget:
            return self._finish(seq, "length", flush=True)
        seq._pending, safe = [token], max(seq._emitted, len(seq.text) - hold)
        delta, seq._emitted = seq.text[seq._emitted:safe], safe
        return Event(seq, delta)

    def _finish(self, seq: Sequence, finish: str, flush: bool) -> Event:
        seq.text += seq._utf8.decode(b"", final=True) if flush else ""
        delta, seq._emitted, self.slots[seq.slot].seq = seq.text[seq._emitted:], len(seq.text), None
        self._end(seq, finish)
        return Event(seq, delta, done=True)

    def _end(self, seq: Sequence, finish: str) -> None:
        seq.finish, seq._pending = finish, []
        self._kv_full = False
        chain, seq._chain, grammar, seq._grammar = seq._chain, None, seq._grammar, None
        if chain is not None and hasattr(chain, "close"):
            chain.close()
        if grammar is not None:
            self._lib.llama_sampler_free(grammar)

    def _evict_idle(self) -> bool:
        """Free the cached prefixes of idle slots (least recently used first); False if there were none."""
        idle = sorted((s for s in self.slots if s.seq is None and s.tokens), key=lambda s: s.used)
        for s in idle:
            self.release(s.seq_id)
        return bool(idle)

    def _pause_newest(self) -> bool:
        """Free the newest running sequence's cells and queue it first, to resume from its tokens; False if only
        one sequence runs (then the cache is too small for it)."""
        running = [s for s in self.slots if s.seq is not None]
        if len(running) < 2:
            return False
        slot = max(running, key=lambda s: s.used)
        seq = slot.seq
        seq._pending = slot.tokens + seq._pending
        slot.seq, seq.slot = None, None
        self.release(slot.seq_id)
        self.waiting.appendleft(seq)
        self.n_paused += 1
        self._kv_full = True  # admit nothing more until a sequence finishes
        return True

    def release(self, seq_id: int) -> None:
        """Free every cell of slot ``seq_id`` (it must be idle)."""
        self._lib.llama_memory_seq_rm(self.mem, seq_id, 0, -1)
        self.slots[seq_id].tokens = []

    def put(self, n: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
        """Write batch entry ``n``: ``token`` at position ``pos`` of slot ``seq_id``, its logits wanted or not."""
        b = self.batch
        b.token[n], b.pos[n], b.n_seq_id[n], b.seq_id[n][0], b.logits[n] = token, pos, 1, seq_id, logits
