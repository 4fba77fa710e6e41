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

**Closing at the budget.** A constrained call that is still open when its sequence has ``CLOSE_RESERVE`` tokens of
budget left is closed at the first point its grammar allows: from then on, while the grammar refuses an
end-of-generation token (a call is open: an untriggered lazy grammar allows it), the pick is the best token, among
those the grammar allows, whose text only closes JSON (``"``, ``]``, ``}``, with spaces or line breaks); where none is
allowed (a required key still to write, a name or an enum value half written) the usual pick. Small models loop
inside a call (a list's items again and again, the same call repeated) until the budget cuts the call in half: such
a call now ends well formed, its loop cut short (wrong, most likely, but a call the scorer can read and the agent can
refuse by its arguments). Text answers and calls that end in time are unchanged.

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
CLOSE_RESERVE = 16  # tokens of budget left at which an open constrained call is closed (see the module doc)
CONSTRAINED_KEY = f"constrained-close{CLOSE_RESERVE}"  # the caches' setting for constrained generations
_CLOSING = frozenset('"]}')


def closer_mask(piece: Callable[[int], bytes], n_vocab: int) -> np.ndarray:
    """A boolean mask over the vocabulary: tokens whose text is made only of ``"``, ``]``, ``}`` (at least one),
    spaces and line breaks (``piece(token) -> bytes``, special tokens not rendered)."""
    mask = np.zeros(n_vocab, dtype=bool)
    for t in range(n_vocab):
        text = piece(t).decode("utf-8", errors="replace")
        core = text.strip(" \n")
        mask[t] = bool(core) and set(core) <= _CLOSING
    return mask


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
           close: tuple[np.ndarray, int] | None = None) -> tuple[int, bool]:
    """``(token, changed)`` for batch entry ``idx``: the chain's draw (``llama_sampler_sample``), or, when
    ``grammar`` (a llama.cpp grammar sampler) refuses it, the chain's pick among the tokens the grammar allows
    (``changed``). The token is accepted into the grammar. ``candidates``: a reusable :class:`Candidates`.
    ``close``: ``(closer mask, end-of-generation token)`` when the sequence is to close an open call (see the
    module doc); a closing token the grammar allows is then taken, the best by logit (``changed`` if not the draw)."""
    import llama_cpp as lib

    token = int(lib.llama_sampler_sample(chain, ctx, idx))
    if grammar is None:
        return token, False
    if candidates is None:
        candidates = Candidates(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(lib.llama_get_model(ctx))))
    if close is not None and not allowed(grammar, close[1]):  # a call is open
        arr = candidates.fill(ctx, idx)
        lib.llama_sampler_apply(grammar, ctypes.byref(arr))
        buf = candidates._buf
        ok = close[0][buf["id"]] & (buf["logit"] != _NEG_INF)
        if ok.any():
            best = int(buf["id"][ok][np.argmax(buf["logit"][ok])])
            lib.llama_sampler_accept(grammar, best)
            return best, best != token
    changed = not allowed(grammar, token)
    if changed:
        arr = candidates.fill(ctx, idx)
        lib.llama_sampler_apply(grammar, ctypes.byref(arr))
        lib.llama_sampler_apply(chain, ctypes.byref(arr))
        picked = arr.data[arr.selected] if 0 <= arr.selected < arr.size else None
        if picked is None or picked.logit == _NEG_INF:
            raise RuntimeError("the call grammar allows no token here")
        token = int(picked.id)
    lib.llama_sampler_accept(grammar, token)
    return token, changed
