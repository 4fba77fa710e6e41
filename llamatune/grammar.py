"""Calls valid by construction: a GBNF grammar per request from the offered tools, and its lazy triggers.

:func:`call_grammar` turns the tools of a request (OpenAI-style schemas, as the chat templates render them) and
a template's :class:`CallSyntax` into a :class:`CallGrammar`: the grammar text and the trigger patterns/tokens
that ``llama_sampler_init_grammar_lazy_patterns`` takes (llama.cpp's own lazy tool-call grammars, as its server
builds them). Sampling is free until the trigger (the call opener, or a JSON call at the start of the reply)
appears; from there the grammar allows only::

    opener  call  closer        call: {"name": <one offered tool>, "<arguments key>": <that tool's arguments>}
    opener  [call, call, ...]  closer      (where the syntax takes a list; several calls where it allows them)

The JSON part is written by llama-cpp-python's JSON-schema-to-GBNF converter
(``llama_cpp.llama_grammar.SchemaConverter``) from one schema built here: a ``$defs`` entry per tool
(``name`` a ``const``, the arguments an object with that tool's properties), an ``anyOf`` over them. What an
argument may hold follows what :func:`llamatune.toolcall.validate_call` checks, and a little more:

* property names: exactly the tool's, **no unknown keys**; nested objects that list properties are closed too
  (unless their schema names ``additionalProperties``); required keys must be written, optional ones may be left out;
* **key order**: the converter writes the required keys first, then the optional ones, each group in schema
  order (not any order). The project's tools list required arguments first (they come from Python signatures)
  and its data writes them in schema order, so that is the order the models learnt;
* types: ``string``, ``integer`` (no fraction or exponent), ``number``, ``boolean``, ``null``, arrays with their
  item types, tuples (``items`` as a list), nested objects, ``enum`` and ``const`` values, type lists and
  ``anyOf``/``oneOf``; JSON as the templates write it (``tojson``: one optional space around ``:`` and after
  ``,``, no line breaks, non-ASCII as is);
* not constrained (left to the scorer): string ``format``/``pattern``/lengths, numeric ranges, array lengths;
* what the converter cannot express falls back to any JSON value there (a missing or unknown type, such as BFCL's
  ``any``/``tuple``/``dict`` where they were left unconverted; a schema that is not a dict), and an enum that
  contradicts its type (BFCL's live schemas: ``"type": "boolean", "enum": ["True", "False", "dontcare"]``) allows
  both readings, or, on an array, is taken for its items. Each such argument is listed in
  :attr:`CallGrammar.fallbacks`. BFCL's docs reach the model already converted to JSON schema
  (:func:`llamatune.evals.bfcl_data.convert_function`), so their grammar is built from what the model sees.

Two rules of the converter are replaced by JSON's own: strings hold no raw control characters (``json.loads``
would reject the call), and an exponent may have leading zeros (``1e-09``, as Python writes it). Where the closer
starts ``</`` (SmolLM2's ``</tool_call>``) a string holds no raw ``</`` either (JSON writes it ``<\\/``), so no
closer stands inside an argument and a parser that cuts at the first closer (the project's, other runtimes') reads
the call whole.

For the decoding loop (:meth:`CallGrammar.sampler`): put the grammar sampler before the one that picks the
token, and feed it only generated tokens (never the prompt). llama.cpp aborts the process (an uncaught C++
exception) when a grammar is made to accept a token it does not allow, so a token must pass the grammar's
``apply`` before it is accepted; the triggers are built so that the text they hand over is always allowed
(see :func:`triggers`). Near the end of a sequence's budget the loop closes an open call where the grammar first
allows (:mod:`llamatune.sampling`, ``CLOSE_RESERVE``), so a call cut by the budget is rare rather than the rule.
"""

from __future__ import annotations

import ctypes
import json
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Callable

from llamatune.chatformat import FORMATS, chat_format

ANY = {"type": ["object", "array", "string", "number", "boolean", "null"]}
_SCALARS = ("string", "integer", "number", "boolean", "null")
_PY = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,), "null": (type(None),),
       "array": (list,), "object": (dict,)}
# llama.cpp's common/json-schema-to-grammar.cpp: no raw control characters inside JSON strings
_ESCAPE = r'[\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
_CHAR_RULE = r'char ::= [^"\\\x7F\x00-\x1F] | ' + _ESCAPE
# where the closer starts "</" (SmolLM2's </tool_call>), a string never holds a raw "</" (JSON writes it <\/), so no
# closer can stand inside an argument: a parser that cuts at the first closer reads the call whole
_STRING = r'string ::= "\"" char* "\"" space'
_CHAR_RULE_NO_CLOSER = (r'char ::= [^"\\\x7F\x00-\x1F<] | ' + _ESCAPE + r' | "<"+ ([^"\\\x7F\x00-\x1F</] | '
                        + _ESCAPE + ")")
# the converter's exponent takes no leading zero, but JSON (and Python's json.dumps: 1e-09) does
_EXPONENT, _JSON_EXPONENT = "([eE] [-+]? integral-part)", "([eE] [-+]? [0-9]{1,16})"


@dataclass(frozen=True)
class CallSyntax:
    """How a chat template writes tool calls (the part a grammar needs).

    ``opener``/``closer``: literal text around the call(s) (``"<tool_call>"``), or ``None``;
    ``opener_optional``: the call may also start bare (Llama 3.2's ``<|python_tag|>``);
    ``form``: ``"object"`` (one bare call object), ``"list"`` (a JSON list of calls) or ``"either"``;
    ``parallel``: several calls (in a list) allowed; ``name_key``/``arguments_key``: the call object's keys.
    """

    opener: str | None = None
    closer: str | None = None
    form: str = "object"
    parallel: bool = False
    name_key: str = "name"
    arguments_key: str = "arguments"
    opener_optional: bool = False

    def __post_init__(self):
        if self.form not in ("object", "list", "either"):
            raise ValueError(f"CallSyntax.form must be 'object', 'list' or 'either', got {self.form!r}")
        if self.parallel and self.form == "object":
            raise ValueError("CallSyntax: several calls need a list form ('list' or 'either')")
        if self.opener_optional and not self.opener:
            raise ValueError("CallSyntax: opener_optional without an opener")
        if not self.name_key or not self.arguments_key or self.name_key == self.arguments_key:
            raise ValueError("CallSyntax: name_key and arguments_key must be two different non-empty keys")


def syntax_of(template: str) -> CallSyntax:
    """The call syntax of a project template, read from the call-syntax contract (:mod:`llamatune.chatformat`):
    SmolLM2's ``<tool_call>[…]</tool_call>`` list; Meta's Llama 3.2 object (a list for parallel calls), which may
    start with ``<|python_tag|>``; the project's Gemma 3 template, as Llama 3.2 without the tag."""
    fmt = chat_format(template)
    form = "list" if fmt.always_list else "either" if fmt.parallel else "object"
    if fmt.call_open:
        opener, optional = fmt.call_open, False
    else:
        opener, optional = fmt.optional_opener or None, bool(fmt.optional_opener)
    return CallSyntax(opener=opener, closer=fmt.call_close or None, form=form, parallel=fmt.parallel,
                      arguments_key=fmt.args_key, opener_optional=optional)


SMOLLM2, LLAMA_3_2, GEMMA_3 = syntax_of("smollm2"), syntax_of("llama-3.2"), syntax_of("gemma-3")
PRESETS = {name: syntax_of(name) for name in FORMATS}


@dataclass(frozen=True)
class CallGrammar:
    """A request's call grammar: ``grammar`` (GBNF, start rule ``root``), the lazy triggers, the offered ``tools``
    (names, sorted), and the arguments held looser than their schema (``fallbacks``: ``tool.arg.path``, see the
    module doc).

    ``trigger_patterns`` are regexes (ECMAScript, as ``std::regex``) matched against the generated text; the
    grammar is fed from the first capture group of the match (or the whole match). ``trigger_words`` are the
    literal openers among them: those a vocabulary holds as one token also go in as trigger tokens
    (:meth:`trigger_tokens`)."""

    grammar: str
    trigger_patterns: tuple[str, ...]
    trigger_words: tuple[str, ...]
    tools: tuple[str, ...]
    fallbacks: tuple[str, ...] = field(default=())
    root: str = "root"
    opener: str | None = None  # the syntax's call opener and closer (what the decoding loop's closing rule writes)
    closer: str | None = None
    schemas: str = ""  # JSON [[name, call schema], ...] as converted here (the closing rule's required keys)

    def trigger_tokens(self, tokenize: Callable[[str], list[int]]) -> tuple[int, ...]:
        """Ids of the trigger words that ``tokenize`` (special tokens parsed) turns into one token."""
        return tuple(ids[0] for w in self.trigger_words if len(ids := list(tokenize(w))) == 1)

    def may_trigger(self, text: str) -> bool:
        """Whether the lazy grammar could have begun anywhere in ``text`` (a generation, special tokens rendered):
        a trigger word in it, or a trigger pattern matching some part of it (its end anchor dropped: a superset of
        the prefixes llama.cpp tries). ``False``: the grammar never acted, the text is what it decodes to."""
        return any(w in text for w in self.trigger_words) or any(
            re.search(p.removesuffix("$"), text) for p in self.trigger_patterns)

    def sampler(self, vocab, lazy: bool = True):
        """A llama.cpp grammar sampler on ``vocab`` (a ``llama_vocab_p``): lazy (free until a trigger) or
        active from the first token. The caller owns it (``llama_sampler_free``, or a chain that took it).
        Raises ``ValueError`` if llama.cpp does not take the grammar."""
        import llama_cpp

        grammar, root = self.grammar.encode("utf-8"), self.root.encode("utf-8")
        if not lazy:
            smpl = llama_cpp.llama_sampler_init_grammar(vocab, grammar, root)
        else:
            patterns = [p.encode("utf-8") for p in self.trigger_patterns]
            tokens = self.trigger_tokens(lambda s: tokenize(vocab, s))
            c_patterns = (ctypes.c_char_p * max(1, len(patterns)))(*patterns)
            c_tokens = (llama_cpp.llama_token * max(1, len(tokens)))(*tokens)
            smpl = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
                vocab, grammar, root, c_patterns, len(patterns), c_tokens, len(tokens))
        if not smpl:
            raise ValueError(f"llama.cpp rejected the call grammar for tools {', '.join(self.tools)}")
        return smpl

    def accepts(self, vocab, text: str, lazy: bool = False) -> bool:
        """Whether llama.cpp's own grammar sampler lets ``text`` be generated: each token of its tokenization on
        ``vocab`` is allowed in turn (``llama_sampler_apply`` on that one candidate, then ``llama_sampler_accept``),
        and then the generation may end (an end-of-generation token is allowed: the grammar is complete)."""
        import llama_cpp

        smpl = self.sampler(vocab, lazy=lazy)
        try:
            for token in tokenize(vocab, text):
                if not allowed(smpl, token):
                    return False
                llama_cpp.llama_sampler_accept(smpl, token)
            end = llama_cpp.llama_vocab_eot(vocab)
            return allowed(smpl, end if end >= 0 else llama_cpp.llama_vocab_eos(vocab))
        finally:
            llama_cpp.llama_sampler_free(smpl)


def allowed(smpl, token: int) -> bool:
    """Whether sampler ``smpl`` leaves ``token`` possible (its logit not set to -inf by ``llama_sampler_apply``)."""
    import llama_cpp

    data = (llama_cpp.llama_token_data * 1)(llama_cpp.llama_token_data(token, 0.0, 0.0))
    arr = llama_cpp.llama_token_data_array(data, 1, -1, False)
    llama_cpp.llama_sampler_apply(smpl, ctypes.byref(arr))
    return data[0].logit != float("-inf")


def tokenize(vocab, text: str) -> list[int]:
    """``text`` → token ids on a llama.cpp ``vocab`` (special tokens parsed, no BOS)."""
    import llama_cpp

    raw = text.encode("utf-8")
    n_max = len(raw) + 8
    buf = (llama_cpp.llama_token * n_max)()
    n = llama_cpp.llama_tokenize(vocab, raw, len(raw), buf, n_max, False, True)
    if n < 0:
        raise ValueError(f"could not tokenize {text[:40]!r}")
    return list(buf[:n])


# --- schemas ------------------------------------------------------------------------------------------------

def _fits(value: Any, types: list) -> bool:
    if not types:
        return True
    return any(isinstance(value, _PY.get(t, (object,))) and not (isinstance(value, bool) and t in ("integer", "number"))
               for t in types)


def _value(schema: Any, path: str, fallbacks: list[str]) -> dict:
    """One argument's JSON schema → the converter-safe schema of what it may hold (see the module doc)."""
    if not isinstance(schema, dict):
        fallbacks.append(path)
        return ANY
    alts = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(alts, list) and alts:
        return {"anyOf": [_value(a, f"{path}|{i}", fallbacks) for i, a in enumerate(alts)]}
    if "const" in schema:
        return {"const": schema["const"]}
    t = schema.get("type")
    types = t if isinstance(t, list) else [t] if t is not None else []
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        values = schema["enum"]
        if all(_fits(v, types) for v in values):
            return {"enum": values}
        fallbacks.append(path)  # the enum contradicts the type (BFCL's live schemas): allow both readings
        items = schema.get("items") if isinstance(schema.get("items"), dict) else {}
        if types == ["array"] and all(_fits(v, [items.get("type")] if items.get("type") else []) for v in values):
            return {"type": "array", "items": {"enum": values}}  # an enum on the array means its items
        rest = {k: x for k, x in schema.items() if k != "enum"}
        return {"anyOf": [_value(rest, path, []), {"enum": values}]}
    if isinstance(t, list):
        alts = [_value({**schema, "type": x}, path, fallbacks) for x in t]
        return alts[0] if len(alts) == 1 else {"anyOf": alts}
    if t in _SCALARS:
        return {"type": t}
    if t == "array":
        items = schema.get("items")
        if isinstance(items, list) and items:
            return {"type": "array", "items": [_value(x, f"{path}[{i}]", fallbacks) for i, x in enumerate(items)]}
        return {"type": "array", "items": _value(items, f"{path}[]", fallbacks) if isinstance(items, dict) else ANY}
    if t in ("object", None) and isinstance(schema.get("properties"), dict) and schema["properties"]:
        return _object(schema, path, fallbacks, closed=False)
    if t == "object":
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            return {"type": "object", "additionalProperties": _value(extra, f"{path}.*", fallbacks)}
        return {"type": "object"}  # a free-form object: any keys, any JSON values
    fallbacks.append(path)
    return ANY


def _object(schema: dict, path: str, fallbacks: list[str], closed: bool) -> dict:
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = [r for r in schema.get("required") or [] if r in props]
    out = {"type": "object", "properties": {k: _value(v, f"{path}.{k}", fallbacks) for k, v in props.items()},
           "required": required}
    extra = schema.get("additionalProperties")
    if not closed and extra is True:
        out["additionalProperties"] = True
    elif not closed and isinstance(extra, dict):
        out["additionalProperties"] = _value(extra, f"{path}.*", fallbacks)
    return out


def _function(tool: dict) -> dict:
    fn = tool.get("function", tool) if isinstance(tool, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise ValueError(f"a tool must be a schema with a non-empty string 'name', got {str(tool)[:80]!r}")
    return fn


def call_schema(tool: dict, syntax: CallSyntax, fallbacks: list[str] | None = None) -> dict:
    """The JSON schema of one call of ``tool`` in ``syntax``: ``{name_key: const, arguments_key: {...}}``, both
    required, the arguments closed (the tool's parameters only, as :func:`~llamatune.toolcall.validate_call`)."""
    fn = _function(tool)
    params = fn.get("parameters") if isinstance(fn.get("parameters"), dict) else {}
    args = _object(params, fn["name"], [] if fallbacks is None else fallbacks, closed=True)
    return {"type": "object", "properties": {syntax.name_key: {"const": fn["name"]}, syntax.arguments_key: args},
            "required": [syntax.name_key, syntax.arguments_key]}


# --- the grammar --------------------------------------------------------------------------------------------

def _literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a GBNF literal: "…" with \" and \\ escaped


def _escape(text: str) -> str:
    """A literal inside an ECMAScript ``std::regex`` (llama.cpp's own ``regex_escape``)."""
    return re.sub(r"[.^$|()*+?\[\]{}\\]", lambda m: "\\" + m.group(0), text)


def _any_prefix(parts: list[str | None]) -> str:
    """A regex for any prefix (the empty one too) of a sequence of characters and ``None`` (an optional space)."""
    out = ""
    for part in reversed(parts):
        out = f" ?{out}" if part is None else f"(?:{_escape(part)}{out})?"
    return out


def triggers(syntax: CallSyntax) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(patterns, words)`` that start the grammar: the opener; where the call may start bare, its JSON at the
    very start of the reply (``{"name"``, or ``[{"name"`` where a list may come).

    Every pattern ends at the end of the text (``$``), and what it matches after the opener (or after
    ``{"name"``) is only a prefix of what the grammar expects next (``[{"name": "``, with its optional spaces):
    llama.cpp feeds the grammar the matched text plus the rest of the token that completed the match, and a
    piece the grammar rejects there aborts the process (an uncaught C++ exception). So the grammar starts only
    at a token that ends inside that safe prefix; a token that runs past it (``<tool_call>[{"na`` merged with
    more) leaves the reply unconstrained, never broken."""
    name = list(json.dumps(syntax.name_key))
    head = ["{", None, *name, None, ":", None, '"']  # {"name": "  (None: the converter's optional space)
    listed = ["[", None, *head]
    after = {"object": _any_prefix(head), "list": _any_prefix(listed),
             "either": f"(?:{_any_prefix(listed)}|{_any_prefix(head)})"}[syntax.form]
    patterns, words = [], []
    if syntax.opener:
        patterns.append(f"({_escape(syntax.opener)}[ \\n]?{after})$")
        words.append(syntax.opener)
    if not syntax.opener or syntax.opener_optional:
        lead = {"object": "", "list": r"\[ ?", "either": r"(?:\[ ?)?"}[syntax.form]
        start = r"\{ ?" + _escape(json.dumps(syntax.name_key))
        patterns.append(f"^\\s*({lead}{start}{_any_prefix(head[len(name) + 2:])})$")
    return tuple(patterns), tuple(words)


def grammar_for(tools: list[dict] | None, template: str) -> CallGrammar | None:
    """The call grammar of ``tools`` in the syntax of chat template ``template`` (cached); ``None`` without tools.
    What the agent, the endpoint and the evals' ``--constrain`` hand the decoding loop (``Request.grammar``)."""
    return call_grammar(tools, syntax_of(template)) if tools else None


def call_grammar(tools: list[dict], syntax: CallSyntax) -> CallGrammar:
    """The grammar of a call (or calls) of ``tools`` in ``syntax``, with its lazy triggers; built once per tool
    set and syntax (descriptions and tool order do not matter). ``ValueError`` names a malformed tool."""
    if not tools:
        raise ValueError("a call grammar needs at least one tool")
    fallbacks: list[str] = []
    schemas = sorted(((_function(t)["name"], call_schema(t, syntax, fallbacks)) for t in tools), key=lambda x: x[0])
    names = [n for n, _ in schemas]
    if len(set(names)) != len(names):
        raise ValueError(f"two offered tools share a name: {sorted({n for n in names if names.count(n) > 1})}")
    # the cached grammar (keyed by the schemas, so it already names these tools) with this request's fallbacks
    return replace(_build(json.dumps(schemas, ensure_ascii=False), syntax), fallbacks=tuple(fallbacks))


def _converter_class():
    from llama_cpp.llama_grammar import SchemaConverter

    class Converter(SchemaConverter):
        """llama-cpp-python's converter, with ``const``/``enum`` values written as the templates write JSON
        (``tojson`` with ``ensure_ascii=False``: "Zürich", not "Z\\u00fcrich")."""

        def _generate_constant_rule(self, value):
            return self._format_literal(json.dumps(value, ensure_ascii=False))

    return Converter


@lru_cache(maxsize=256)
def _build(key: str, syntax: CallSyntax) -> CallGrammar:
    converter = _converter_class()
    schemas = json.loads(key)
    defs, refs = {}, []
    for i, (name, schema) in enumerate(schemas):
        slug = f"tool{i}-" + re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")  # rule names: [A-Za-z0-9-], unique
        defs[slug] = schema
        refs.append({"$ref": f"#/$defs/{slug}"})
    defs["call"] = {"anyOf": refs} if len(refs) > 1 else refs[0]
    many = {"type": "array", "items": {"$ref": "#/$defs/call"}, "minItems": 1}
    if not syntax.parallel:
        many["maxItems"] = 1
    top = {"object": {"anyOf": [{"$ref": "#/$defs/call"}]}, "list": many,  # (a top-level $ref hides $defs)
           "either": {"anyOf": [{"$ref": "#/$defs/call"}, many]}}[syntax.form]
    conv = converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    schema = conv.resolve_refs({"$defs": defs, **top}, "")
    conv.visit(schema, "calls")
    no_closer = (syntax.closer or "").startswith("</")
    rules = re.sub(r"^char ::= .*$", lambda _: _CHAR_RULE_NO_CLOSER if no_closer else _CHAR_RULE,
                   conv.format_grammar(), flags=re.M)
    if no_closer and "\nstring ::=" in rules:  # a "<" may still end a string
        if _STRING not in rules:
            raise RuntimeError(f"llama-cpp-python's string rule is no longer {_STRING!r}: update grammar.py")
        rules = rules.replace(_STRING, _STRING.replace('char* "\\""', 'char* "<"* "\\""'))
    rules = rules.replace(_EXPONENT, _JSON_EXPONENT)
    # the list of calls: a newline as well as a space around its items (SmolLM2's template writes "[\n{..},\n{..}\n]")
    rules = re.sub(r'^(calls(?:-\d+)?) ::= "\[" space (\S+) \("," space \S+\)\* "\]" space$',
                   lambda m: f'{m.group(1)} ::= "[" lsp {m.group(2)} (lsp "," lsp {m.group(2)})* lsp "]"', rules,
                   flags=re.M)
    rules = rules.rstrip("\n") + ("\nlsp ::= [ \\n]?" if "lsp" in rules else "")
    body = "calls"
    if syntax.closer:
        body += f" ws {_literal(syntax.closer)}"
    if syntax.opener and syntax.opener_optional:
        head = f"({_literal(syntax.opener)} ws)? "
    elif syntax.opener:
        head = f"{_literal(syntax.opener)} ws "
    else:
        head = ""
    ws = "ws ::= [ \\n]?\n" if syntax.opener or syntax.closer else ""
    grammar = f"root ::= {head}{body}\n{ws}{rules}\n"
    patterns, words = triggers(syntax)
    return CallGrammar(grammar, patterns, words, tuple(n for n, _ in schemas), opener=syntax.opener,
                       closer=syntax.closer, schemas=key)
