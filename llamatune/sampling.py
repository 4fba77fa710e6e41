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
closer: ``"}}]</tool_call>``). With the grammar's schemas (:attr:`~llamatune.grammar.CallGrammar.schemas`) it also
writes what the grammar demands before an object may close: the required keys it still lacks, each with the least
value its schema allows (``""``, ``0``, ``false``, ``[]``, an enum's first value), and a value for a key written
without one. Once the tokens left are no more than writing that text takes, plus two (plus five where a key, its
colon or a value must come first; plus the size of the last call where a list of calls could take another), and
while the grammar refuses an end-of-generation token (a call is open; an untriggered lazy grammar allows it), the
model's own token stays where it writes a start of that text (spaces before it allowed) or, while there is a token to
spare, is only spaces (the template's ``}}\n]``); else the pick is the token that writes the longest start of the
text, among those the grammar allows, the better logit first; where none is allowed the usual pick. A key half
written is finished first, as the schema's order offers, and so is a tool's name or an enum value once what the
model wrote names exactly one (until then the choice is the model's); the tokens closing takes are counted without
tokens that start with a space (a key or a string refuses those), and without a token to spare only the longest
start of the text is taken, the model's own shorter one not. Once begun, the closing goes on to the end of the call (the decoding loop's ``started``),
however many tokens are left.

Small models loop inside a call (a list's items again and again, the same call repeated) until the budget cuts the
call in half: such a call now ends well formed, its last value cut short and any required key it never reached given
its least value (wrong, most likely, but a call the scorer can read and the agent can refuse by its arguments), or a
list ends after its last whole call. A call that ends in time is not touched (closing as late as possible: a first
version, closing from 16 tokens before the budget, cut legitimate second calls short), nor is a text answer.
``CLOSE_RESERVE`` bounds the tokens left at which the rule looks at all.

llama.cpp aborts the process when a grammar is made to accept a token it refuses, so a token is accepted into the
grammar only after the grammar's ``apply`` allowed it. The chain has already accepted its first draw (inside
``llama_sampler_sample``); the project's chains (greedy; top-k → top-p → min-p → temperature → draw) keep no state
that depends on it.
"""

from __future__ import annotations

import ctypes
import json
from functools import lru_cache
from typing import Callable

import numpy as np

from llamatune.grammar import allowed

_NEG_INF = float("-inf")
CLOSE_RESERVE = 64  # the closing rule looks at sequences with at most this many tokens left (see the module doc)
# r5: the fifth closing rule (required keys written, keys and named values finished, closing goes on once begun)
CONSTRAINED_KEY = f"constrained-close{CLOSE_RESERVE}-r5"  # the caches' setting for constrained generations


class _Scan:
    """Where a call's JSON stands: the structures still open (``stack``: their closers, outermost first; ``frames``:
    per structure the key it is the value of (``"[]"`` for a list item), its keys written so far and its string
    values by key), inside a string or not (a key's?), the last character outside strings, and where the newest
    call of a top-level list began."""

    def __init__(self, text: str):
        self.stack: list[str] = []
        self.frames: list[dict] = []
        self.in_string = self.escaped = self.key = self.after_key = False  # after_key: a key's closing quote last
        self.last, self.call_start, chars = "", None, []
        for i, ch in enumerate(text):
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                    chars.append(ch)
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    frame = self.frames[-1] if self.frames else None
                    if frame is not None and self.key:
                        frame["keys"].append("".join(chars))
                        self.after_key = True
                    elif frame is not None and self.stack[-1] == "}" and frame["keys"]:
                        frame["values"][frame["keys"][-1]] = "".join(chars)
                    self.in_string, self.key, self.last = False, False, ch
                else:
                    chars.append(ch)
                continue
            if ch == '"':
                self.in_string, self.key, chars = True, self.stack[-1:] == ["}"] and self.last in "{,", []
            elif ch in "{[":
                if ch == "{" and self.stack == ["]"]:
                    self.call_start = i
                under = None
                if self.frames:
                    under = "[]" if self.stack[-1] == "]" else (self.frames[-1]["keys"] or [None])[-1]
                self.stack.append("}" if ch == "{" else "]")
                self.frames.append({"under": under, "keys": [], "values": {}})
            elif ch in "}]" and self.stack:
                self.stack.pop()
                self.frames.pop()
            if not ch.isspace() and ch != '"':
                self.last, self.after_key = ch, False
        self.chars = "".join(chars) if self.in_string else ""  # the open string so far


def _call_text(text: str, opener: str | None) -> str:
    return text[text.find(opener) + len(opener):] if opener and opener in text else text  # the grammar began there


def closing_text(text: str, opener: str | None, closer: str | None, schemas: list[dict] | None = None) -> str | None:
    """What closes the call that ``text`` (the generation so far) has open: ``"`` inside a string, then ``}``/``]``
    for each object and list still open, innermost first, then ``closer``. The call starts after the first
    ``opener``, where the lazy grammar began (from the start of the text where there is none; an opener inside an
    argument's string does not count); ``None`` right after a backslash in a string.
    With ``schemas`` (the offered tools' call schemas, as the grammar has them: :attr:`CallGrammar.schemas`), an
    object also gets the required keys it still lacks, each with the least value its schema allows (``""``, ``0``,
    ``false``, ``[]``, an enum's first value), and a key written without its value gets one: what the grammar
    demands before the object may close."""
    call = _call_text(text, opener)
    return _target(_Scan(call), closer, schemas, call)


def _least(schema) -> str | None:
    """The shortest JSON value ``schema`` (a grammar's converted schema) allows; ``None`` where unknown."""
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return json.dumps(schema["const"], ensure_ascii=False)
    if schema.get("enum"):
        return json.dumps(schema["enum"][0], ensure_ascii=False)
    if schema.get("anyOf"):
        return _least(schema["anyOf"][0])
    t = schema.get("type")
    t = t[0] if isinstance(t, list) and t else t
    if t == "array":
        items = schema.get("items")
        parts = [_least(x) for x in items] if isinstance(items, list) else []
        return None if None in parts else "[" + ", ".join(parts) + "]"
    if t == "object" or (t is None and "properties" in schema):
        kvs = _missing(schema, [])
        return None if kvs is None else "{" + ", ".join(kvs) + "}"
    return {"string": '""', "integer": "0", "number": "0", "boolean": "false", "null": "null"}.get(t)


def _missing(schema: dict, written: list[str]) -> list[str] | None:
    """``"key": value`` for each required key of ``schema`` not in ``written``, in schema order (the grammar's)."""
    props = schema.get("properties") or {}
    kvs = [(k, _least(props.get(k))) for k in schema.get("required") or [] if k not in written]
    return None if any(v is None for _, v in kvs) else [f"{json.dumps(k, ensure_ascii=False)}: {v}" for k, v in kvs]


def _as(schema, closer: str):
    """``schema`` read as the object (``"}"``) or list (``"]"``) it must be here (an ``anyOf`` or type list)."""
    want = "object" if closer == "}" else "array"
    if not isinstance(schema, dict):
        return None
    for alt in schema.get("anyOf") or [schema]:
        t = alt.get("type") if isinstance(alt, dict) else None
        if t == want or (isinstance(t, list) and want in t) or (want == "object" and t is None and "properties" in alt):
            return {**alt, "type": want}
    return None


def _frame_schemas(scan: _Scan, schemas: list[dict]) -> list | None:
    """The schema of each open structure (``None`` outside the call), from the call object's name down."""
    top = next((i for i, c in enumerate(scan.stack) if c == "}"), None)
    if top is None:
        return None
    values = scan.frames[top]["values"]
    call = next((s for s in schemas if any(isinstance(p, dict) and "const" in p and values.get(k) == p["const"]
                                           for k, p in (s.get("properties") or {}).items())), None)
    if call is None:
        return None
    out = [None] * top + [call]
    for frame, closer in zip(scan.frames[top + 1:], scan.stack[top + 1:]):
        parent = out[-1] or {}
        child = parent.get("items") if frame["under"] == "[]" else (parent.get("properties") or {}).get(frame["under"])
        out.append(_as(child, closer))
    return out


def _strings(schema) -> list[str]:
    """The strings a schema allows by name (``const``, ``enum``, through ``anyOf``); [] for a free string."""
    if not isinstance(schema, dict):
        return []
    values = [schema["const"]] if "const" in schema else schema.get("enum") or []
    return [v for v in values if isinstance(v, str)] + [v for a in schema.get("anyOf") or [] for v in _strings(a)]


def _string_rest(scan: _Scan, schemas: list[dict]) -> str | None:
    """The rest of the key, tool name or enum/const value being written, its closing quote included: for a key the
    first, in the grammar's order, that the text so far starts; for a name or a value the only one it starts.
    ``None`` for a free string, while the text so far starts several names or values (or none), or none at all."""
    frames, i = _frame_schemas(scan, schemas), len(scan.stack) - 1
    top = next((j for j, c in enumerate(scan.stack) if c == "}"), None)
    schema = frames[i] if frames else schemas[0] if i == top else None  # a call's own keys: every call has them
    if scan.stack[i:] == ["]"]:
        options = _strings((schema or {}).get("items"))
    elif scan.key:  # the grammar's order: the required keys still to write, then the optional ones
        written = scan.frames[i]["keys"]
        props, required = (schema or {}).get("properties") or {}, (schema or {}).get("required") or []
        options = [k for k in required if k not in written] + [k for k in props if k not in written + required]
    else:
        key = (scan.frames[i]["keys"] or [None])[-1] if i >= 0 else None
        options = (_strings(((frames[i] or {}).get("properties") or {}).get(key)) if frames else
                   [v for s in schemas for v in _strings((s.get("properties") or {}).get(key))] if i == top else [])
    matches = [o for o in options if o.startswith(scan.chars)]
    if not matches or (not scan.key and (len(matches) > 1 or not scan.chars)):
        return None  # a name or a value is the model's to choose until what it wrote names one
    return json.dumps(matches[0][len(scan.chars):], ensure_ascii=False)[1:-1] + '"'


def _target(scan: _Scan, closer: str | None, schemas: list[dict] | None = None, call: str = "") -> str | None:
    if scan.escaped:
        return None
    plain = ('"' if scan.in_string else "") + "".join(reversed(scan.stack)) + (closer or "")
    if schemas and scan.in_string and (rest := _string_rest(scan, schemas)) is not None:
        after = _target(_Scan(call + rest), closer, schemas, call + rest)  # the string finished, then the rest
        return None if after is None else rest + after
    frames = _frame_schemas(scan, schemas) if schemas and not scan.key else None
    if frames is None:
        return plain
    text, inner = '"' if scan.in_string else "", len(scan.stack) - 1
    for i in range(inner, -1, -1):
        schema, fresh = frames[i], i == inner and not scan.in_string  # the innermost, right after its last character
        if scan.stack[i] == "]":
            if fresh and scan.last == ",":
                item = _least((schema or {}).get("items"))
                if item is None:
                    return plain
                text += item
            text += "]"
            continue
        if schema is not None:
            keys = scan.frames[i]["keys"]
            if fresh and (scan.last == ":" or scan.after_key):  # a key still without its value
                value = _least((schema.get("properties") or {}).get(keys[-1] if keys else None))
                if value is None:
                    return plain
                text += (": " if scan.after_key else "") + value
            kvs = _missing(schema, keys)
            if kvs is None:
                return plain
            if kvs:
                text += ("" if fresh and scan.last in "{," else ", ") + ", ".join(kvs)
        text += "}"
    return text + (closer or "")


def token_texts(piece: Callable[[int], bytes], n_vocab: int, longest: int = 16, strip: bool = True
                ) -> dict[str, list[int]]:
    """Token ids by their text (``piece(token) -> bytes``; without leading spaces and line breaks where ``strip``),
    for the texts of at most ``longest`` characters: what :func:`closing_tokens` looks up."""
    out: dict[str, list[int]] = {}
    for t in range(n_vocab):
        text = piece(t).decode("utf-8", errors="replace")
        text = text.lstrip(" \n") if strip else text
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


@lru_cache(maxsize=256)  # as many tool sets as grammar.py's cache of built grammars
def call_schemas(key: str) -> list[dict]:
    """The call schemas of a grammar's :attr:`~llamatune.grammar.CallGrammar.schemas` (parsed once per tool set)."""
    return [s for _, s in json.loads(key)] if key else []


class Closer:
    """The closing rule for one vocabulary: ``closer(generated ids, the request's CallGrammar, tokens left)`` → the
    ``close`` argument of :func:`sample` (``None`` while the call can still end in time). ``piece(token) -> bytes``
    renders a token (special tokens as text)."""

    def __init__(self, vocab, piece: Callable[[int], bytes], n_vocab: int):
        import llama_cpp as lib

        eot = lib.llama_vocab_eot(vocab)
        self.eog = eot if eot >= 0 else lib.llama_vocab_eos(vocab)
        pieces = [piece(t) for t in range(n_vocab)]  # the vocabulary rendered once, for both lookups
        self.piece, self.by_text = piece, token_texts(pieces.__getitem__, n_vocab)
        self.plain = set(token_texts(pieces.__getitem__, n_vocab, strip=False))  # what can follow a quote
        self.longest = max(map(len, self.by_text), default=1)

    def tokens_for(self, text: str) -> int:
        """Tokens that writing ``text`` takes, longest match first, counting only tokens without a leading space (a
        key or a string refuses those, so counting them would start the closing too late)."""
        i = n = 0
        while i < len(text):
            i += next((k for k in range(min(self.longest, len(text) - i), 0, -1) if text[i:i + k] in self.plain), 1)
            n += 1
        return n

    def __call__(self, ids: list[int], grammar, left: int, started: bool = False
                 ) -> tuple[int, list[tuple[int, int]], str, bool] | None:
        opener, closer = getattr(grammar, "opener", None), getattr(grammar, "closer", None)
        pieces = [self.piece(t) for t in ids]
        text = b"".join(pieces).decode("utf-8", errors="replace")
        call = _call_text(text, opener)
        scan = _Scan(call)
        target = _target(scan, closer, call_schemas(getattr(grammar, "schemas", "")), call)
        if target is None:
            return None
        need = writing = self.tokens_for(target) + 2
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
        if left > need and not started:  # once begun (``started``), closing goes on whatever is left
            return None
        return self.eog, closing_tokens(target, self.by_text), target, left > writing  # room for a space


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
           close: tuple[int, list[tuple[int, int]], str, bool] | None = None, piece=None) -> tuple[int, bool]:
    """``(token, changed)`` for batch entry ``idx``: the chain's draw (``llama_sampler_sample``), or, when
    ``grammar`` (a llama.cpp grammar sampler) refuses it, the chain's pick among the tokens the grammar allows
    (``changed``). The token is accepted into the grammar. ``candidates``: a reusable :class:`Candidates`.
    ``close``: ``(end-of-generation token, closing_tokens(...), closing text, room for a space)`` when the sequence
    is to close an open call (see the module doc): the draw stays if the grammar allows it and its text
    (``piece(token) -> bytes``), leading spaces aside, starts the closing text, or is only spaces and there is room
    for one; else the longest closing token the grammar allows is taken, the better logit first (``changed``)."""
    import llama_cpp as lib

    token = int(lib.llama_sampler_sample(chain, ctx, idx))
    if grammar is None:
        return token, False
    drawn = piece(token).decode("utf-8", "replace").lstrip(" \n") if close is not None else ""
    if close is not None and close[1] and not allowed(grammar, close[0]) and not (  # a call is open
            (close[2].startswith(drawn) and (close[3] or len(drawn) >= close[1][0][0]) if drawn else close[3])
            and allowed(grammar, token)):  # without a token to spare, only the longest start of the text
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
