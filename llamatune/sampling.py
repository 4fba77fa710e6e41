"""Per-sequence sampling for the decoding loop (:mod:`llamatune.decode`): sampler chains, and a call grammar applied
to them.

A grammar is applied as llama.cpp's ``common_sampler`` does (``grammar_first=false``): the token is sampled by the
sequence's own chain (``llama_sampler_sample``); if the grammar allows it (one candidate; a lazy grammar before its
trigger allows everything) it is accepted into the grammar; only when refused is the full candidate array built from
the logits, the grammar applied, then the chain, and its pick taken (``Sequence.constrained`` counts these). For a
greedy chain that is the best allowed token; for a sampled chain it is rejection sampling from the chain's distribution
renormalised over the allowed tokens: P(t) = q(t) + (1 − q(A))·q(t)/q(A) = q(t)/q(A) for an allowed t (exact for a
chain that only reweights, such as temperature; top-k/top-p/min-p cut the redraw among the allowed tokens, as
llama.cpp's server does). A text answer the grammar never refused is the unconstrained one, token for token.

**Closing at the budget.** A constrained call is closed, where its grammar allows, when it could not end in time
otherwise. :func:`closing_text` reads what the call has left open (a string, objects and lists, then the template's
closer: ``"}}]</tool_call>``). Once the tokens left are no more than writing that text takes, plus one (plus five
where a key, its colon or a value must come first; plus the size of the last call where a list of calls could take
another), and while the grammar refuses an end-of-generation token (a call is open; an untriggered lazy grammar
allows it), the pick is the token that writes the longest start of that text (spaces before it allowed), among those
the grammar allows, the better logit first; where none is allowed (a required key still to write, a name or an enum
value half written) the usual pick. Small models loop inside a call (a list's items again and again, the same call
repeated) until the budget cuts the call in half: such a call now ends well formed, its last value cut short (wrong,
most likely, but a call the scorer can read and the agent can refuse by its arguments), or a list ends after its last
whole call. A call that ends in time is not touched (closing as late as possible: a first version, closing from 16
tokens before the budget, cut legitimate second calls short), nor is a text answer. ``CLOSE_RESERVE`` bounds the
tokens left at which the rule looks at all.

llama.cpp aborts the process when a grammar is made to accept a token it refuses, so a token is accepted into the
grammar only after the grammar's ``apply`` allowed it. The chain has already accepted its first draw (inside
``llama_sampler_sample``); the project's chains (greedy; top-k → top-p → min-p → temperature → draw) keep no state
that depends on it.
"""

from __future__ import annotations

import ctypes
from typing import Callable

import numpy as np

from llamatune.grammar import allowed

_NEG_INF = float("-inf")
CLOSE_RESERVE = 64  # the closing rule looks at sequences with at most this many tokens left (see the module doc)
CONSTRAINED_KEY = f"constrained-close{CLOSE_RESERVE}"  # the caches' setting for constrained generations


class _Scan:
    """Where a call's JSON stands: the structures still open, inside a string or not (a key's?), the last character
    outside strings, and where the newest call of a top-level list began."""

    def __init__(self, text: str):
        self.stack: list[str] = []
        self.in_string = self.escaped = self.key = False
        self.last, self.call_start = "", None
        for i, ch in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string, self.key, self.last = False, False, ch
                continue
            if ch == '"':
                self.in_string, self.key = True, self.stack[-1:] == ["}"] and self.last in "{,"
            elif ch in "{[":
                if ch == "{" and self.stack == ["]"]:
                    self.call_start = i
                self.stack.append("}" if ch == "{" else "]")
            elif ch in "}]" and self.stack:
                self.stack.pop()
            if not ch.isspace() and ch != '"':
                self.last = ch


def _call_text(text: str, opener: str | None) -> str:
    return text[text.rfind(opener) + len(opener):] if opener and opener in text else text


def closing_text(text: str, opener: str | None, closer: str | None) -> str | None:
    """What closes the call that ``text`` (the generation so far) has open: ``"`` inside a string, then ``}``/``]``
    for each object and list still open, innermost first, then ``closer``. The call starts after the last
    ``opener`` (from the start of the text where there is none); ``None`` right after a backslash in a string."""
    return _target(_Scan(_call_text(text, opener)), closer)


def _target(scan: _Scan, closer: str | None) -> str | None:
    if scan.escaped:
        return None
    return ('"' if scan.in_string else "") + "".join(reversed(scan.stack)) + (closer or "")


def token_texts(piece: Callable[[int], bytes], n_vocab: int, longest: int = 16) -> dict[str, list[int]]:
    """Token ids by their text without leading spaces and line breaks (``piece(token) -> bytes``), for the texts of
    at most ``longest`` characters: what :func:`closing_tokens` looks up."""
    out: dict[str, list[int]] = {}
    for t in range(n_vocab):
        text = piece(t).decode("utf-8", errors="replace").lstrip(" \n")
        if text and len(text) <= longest:
            out.setdefault(text, []).append(t)
    return out


def closing_tokens(target: str, by_text: dict[str, list[int]]) -> list[tuple[int, int]]:
    """``(characters, token)`` for every token whose text (leading spaces aside) starts ``target``, longest first."""
    return [(k, t) for k in range(len(target), 0, -1) for t in by_text.get(target[:k], ())]


def sampler_factory(temperature: float = 0.0, *, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                    seed: int = 0) -> Callable[..., object]:
    """A sampler factory: greedy at ``temperature`` 0, else top-k → top-p → min-p → temperature → a seeded draw."""

    def make(decoder):
        from llama_cpp._internals import LlamaSampler

        chain = LlamaSampler()
        if temperature <= 0:
            chain.add_greedy()
            return chain
        chain.add_top_k(top_k), chain.add_top_p(top_p, 1), chain.add_min_p(min_p, 1), chain.add_temp(temperature)
        chain.add_dist(seed)
        return chain

    return make


greedy = sampler_factory(0.0)


class Closer:
    """The closing rule for one vocabulary: ``closer(generated ids, the request's CallGrammar, tokens left)`` → the
    ``close`` argument of :func:`sample` (``None`` while the call can still end in time). ``piece(token) -> bytes``
    renders a token (special tokens as text)."""

    def __init__(self, vocab, piece: Callable[[int], bytes], n_vocab: int):
        import llama_cpp as lib

        eot = lib.llama_vocab_eot(vocab)
        self.eog = eot if eot >= 0 else lib.llama_vocab_eos(vocab)
        self.piece, self.by_text = piece, token_texts(piece, n_vocab)
        self.longest = max(map(len, self.by_text), default=1)

    def tokens_for(self, text: str) -> int:
        """Tokens that writing ``text`` takes, longest match first."""
        i = n = 0
        while i < len(text):
            i += next((k for k in range(min(self.longest, len(text) - i), 0, -1) if text[i:i + k] in self.by_text), 1)
            n += 1
        return n

    def __call__(self, ids: list[int], grammar, left: int) -> tuple[int, list[tuple[int, int]], str] | None:
        opener, closer = getattr(grammar, "opener", None), getattr(grammar, "closer", None)
        pieces = [self.piece(t) for t in ids]
        text = b"".join(pieces).decode("utf-8", errors="replace")
        call = _call_text(text, opener)
        scan = _Scan(call)
        target = _target(scan, closer)
        if target is None:
            return None
        need = self.tokens_for(target) + 1
        if scan.key or (not scan.in_string and scan.last in ":,{["):
            need += 5  # a key, its colon or a value still to write before anything closes
        if scan.stack[:1] == ["]"] and len(scan.stack) <= 2 and scan.last == "}" and scan.call_start is not None:
            # a call of a list has ended (or its arguments have): room for another call as long as this one (its
            # tokens counted), or the list closes now
            start = len(text[:len(text) - len(call) + scan.call_start].encode("utf-8"))
            done = 0
            for i, piece in enumerate(pieces):
                done += len(piece)
                if done > start:
                    need += len(ids) - i + 2
                    break
        if left > need:
            return None
        return self.eog, closing_tokens(target, self.by_text), target


class Candidates:
    """The full candidate array (one ``llama_token_data`` per vocabulary entry) a grammar's refusal needs, allocated
    once per decoder, filled from the logits with numpy."""

    def __init__(self, n_vocab: int):
        self.n_vocab, self._buf = n_vocab, None

    def fill(self, ctx, idx: int):
        """A ``llama_token_data_array`` over the logits of batch entry ``idx`` (ids in vocabulary order)."""
        import llama_cpp as lib

        if self._buf is None:
            self._buf = np.zeros(self.n_vocab, dtype=[("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
            self._ids = np.arange(self.n_vocab, dtype=np.int32)
        buf = self._buf
        buf["id"] = self._ids  # a chain may have sorted the last array in place
        buf["logit"] = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, idx), shape=(self.n_vocab,))
        buf["p"] = 0.0
        return lib.llama_token_data_array(buf.ctypes.data_as(lib.llama_token_data_p), self.n_vocab, -1, False)


def sample(ctx, idx: int, chain, grammar=None, candidates: Candidates | None = None,
           close: tuple[int, list[tuple[int, int]], str] | None = None, piece=None) -> tuple[int, bool]:
    """``(token, changed)`` for batch entry ``idx``: the chain's draw (``llama_sampler_sample``), or, when
    ``grammar`` (a llama.cpp grammar sampler) refuses it, the chain's pick among the tokens the grammar allows
    (``changed``). The token is accepted into the grammar. ``candidates``: a reusable :class:`Candidates`.
    ``close``: ``(end-of-generation token, closing_tokens(...), closing text)`` when the sequence is to close an open
    call (see the module doc): the draw stays if the grammar allows it and its text (``piece(token) -> bytes``) is
    spaces or starts the closing text, else the longest closing token the grammar allows is taken, the better logit
    first (``changed``)."""
    import llama_cpp as lib

    token = int(lib.llama_sampler_sample(chain, ctx, idx))
    if grammar is None:
        return token, False
    if close is not None and close[1] and not allowed(grammar, close[0]) and not (  # a call is open
            allowed(grammar, token) and close[2].startswith(piece(token).decode("utf-8", "replace").lstrip(" \n"))):
        logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, idx), shape=(max(t for _, t in close[1]) + 1,))
        for _, best in sorted(close[1], key=lambda kt: (-kt[0], -logits[kt[1]])):
            if allowed(grammar, best):
                lib.llama_sampler_accept(grammar, best)
                return best, best != token
    changed = not allowed(grammar, token)
    if changed:
        if candidates is None:
            candidates = Candidates(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(lib.llama_get_model(ctx))))
        arr = candidates.fill(ctx, idx)
        lib.llama_sampler_apply(grammar, ctypes.byref(arr))
        lib.llama_sampler_apply(chain, ctypes.byref(arr))
        picked = arr.data[arr.selected] if 0 <= arr.selected < arr.size else None
        if picked is None or picked.logit == _NEG_INF:
            raise RuntimeError("the call grammar allows no token here")
        token = int(picked.id)
    lib.llama_sampler_accept(grammar, token)
    return token, changed
