"""BFCL v4 data, read from the ``bfcl-eval`` wheel, converted to the project's tools and ``expected``.

The Berkeley Function Calling Leaderboard (Apache-2.0, github.com/ShishirPatil/gorilla) ships its test data and
ground truths in the PyPI wheel ``bfcl-eval==2026.3.23`` (1.9 MB): ``bfcl_eval/data/BFCL_v4_<category>.json``
(JSON lines ``{"id", "question": [[messages]], "function": [docs]}``) and
``bfcl_eval/data/possible_answer/BFCL_v4_<category>.json`` (``{"id", "ground_truth": [{func: {arg: [accepted
values]}}]}``, ``""`` among the accepted values = the argument may be omitted). The wheel is fetched once with
``pip download --no-deps`` (:func:`llamatune.pypi.pip_download`), sha256-checked and cached under
``$LLAMATUNE_CACHE/wheels``; it is never installed (its dependencies would break this environment) and its files
are read straight out of the zip.

Conversion, as BFCL does it for function-calling (FC) models (``bfcl_eval.model_handler.utils.convert_to_tool``
with ``GORILLA_TO_OPENAPI``, OpenAI style): ``.`` in a function name becomes ``_``; the parameters' ``type``
becomes ``object``; every property type is mapped (``dict``→``object``, ``float``→``number`` with ``format:
float`` and " This is a float type value." appended to its description, ``tuple``→``array``, ``any``→``string``,
an unknown or missing type → ``string``), recursing into nested ``properties`` and array ``items`` the way BFCL
does. The ground truth becomes the project's ``expected`` (see :func:`convert_ground_truth`).

    python -m llamatune.evals.bfcl_data        # fetch the wheel into the cache (make install does this)
"""

from __future__ import annotations

import copy
import json
import random
import re
import zipfile
from functools import lru_cache
from pathlib import Path

from llamatune import pypi
from llamatune.embedded import verified

PACKAGE = "bfcl-eval"
VERSION = "2026.3.23"
WHEEL_NAME = "bfcl_eval-2026.3.23-py3-none-any.whl"
WHEEL_SHA256 = "3bb6dfa5f0c68ad403c9ec50b00db2bb3b4cc9b38ab1ff33f48fe30d853d3a0a"
DATA = "bfcl_eval/data"

DEFAULT_CATEGORIES = ("simple_python", "multiple", "parallel", "irrelevance", "live_simple", "live_multiple",
                      "live_irrelevance")
# single-turn categories scored by BFCL's AST checker (or, for the irrelevance ones, by "no call")
AST_CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "live_simple", "live_multiple",
                  "live_parallel", "live_parallel_multiple")
IRRELEVANCE_CATEGORIES = ("irrelevance", "live_irrelevance")
SUPPORTED = AST_CATEGORIES + IRRELEVANCE_CATEGORIES
NON_LIVE_AST = ("simple_python", "multiple", "parallel", "parallel_multiple")
LIVE_AST = ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple")
# need executing the functions, multi-turn state, a memory backend or the web; or another language's types
OUT_OF_SCOPE = ("exec", "multi_turn", "memory", "web_search", "format_sensitivity", "live_relevance", "simple_java",
                "simple_javascript")

# bfcl_eval.constants.type_mappings.GORILLA_TO_OPENAPI
GORILLA_TO_OPENAPI = {
    "integer": "integer", "number": "number", "float": "number", "string": "string", "boolean": "boolean",
    "bool": "boolean", "array": "array", "list": "array", "dict": "object", "object": "object", "tuple": "array",
    "any": "string", "byte": "integer", "short": "integer", "long": "integer", "double": "number", "char": "string",
    "ArrayList": "array", "Array": "array", "HashMap": "object", "Hashtable": "object", "Queue": "array",
    "Stack": "array", "Any": "string", "String": "string", "Bigint": "integer",
}
FLOAT_NOTE = " This is a float type value."


def wheel_path() -> Path:
    """The sha256-checked ``bfcl-eval`` wheel in the cache, downloaded once with ``pip download --no-deps``."""
    wheels = pypi.cache_dir() / "wheels"
    wheel = wheels / WHEEL_NAME
    if verified(wheel, WHEEL_SHA256):
        return wheel
    if not wheel.exists():
        pypi.pip_download(f"{PACKAGE}=={VERSION}", wheels)
    pypi.checked(wheel, WHEEL_SHA256)
    return wheel


def _jsonl(zf: zipfile.ZipFile, member: str) -> list[dict]:
    return [json.loads(line) for line in zf.read(member).decode("utf-8").splitlines() if line.strip()]


@lru_cache(maxsize=32)
def _raw(category: str, wheel: str) -> tuple[list[dict], dict]:
    with zipfile.ZipFile(wheel) as zf:
        rows = _jsonl(zf, f"{DATA}/BFCL_v4_{category}.json")
        answers = {}
        if category not in IRRELEVANCE_CATEGORIES:
            member = f"{DATA}/possible_answer/BFCL_v4_{category}.json"
            answers = {a["id"]: a["ground_truth"] for a in _jsonl(zf, member)}
    return rows, answers


def load_raw(category: str, wheel: str | Path | None = None) -> list[dict]:
    """BFCL's rows of ``category`` as shipped, each with its ``ground_truth`` (``None`` for irrelevance)."""
    if category not in SUPPORTED:
        why = "out of scope (needs execution, multi-turn state, memory or the web)" if any(
            category.startswith(c) for c in OUT_OF_SCOPE) else "unknown"
        raise ValueError(f"BFCL category {category!r}: {why}; supported: {', '.join(SUPPORTED)}")
    rows, answers = _raw(category, str(wheel or wheel_path()))
    out = []
    for r in rows:
        if category not in IRRELEVANCE_CATEGORIES and r["id"] not in answers:
            raise ValueError(f"BFCL {category}: no possible answer for {r['id']}")
        out.append({**copy.deepcopy(r), "ground_truth": copy.deepcopy(answers.get(r["id"]))})
    return out


# --- converters -------------------------------------------------------------------------------------------

def tool_name(name: str) -> str:
    """BFCL's FC name: ``.`` is not allowed in OpenAI-style function names, so it becomes ``_``."""
    return re.sub(r"\.", "_", name)


def _cast(properties: dict) -> dict:
    """``_cast_to_openai_type`` of BFCL (on a copy): the property types in JSON-schema terms."""
    for key, value in properties.items():
        if "type" not in value:
            value["type"] = "string"
        else:
            var_type = value["type"]
            if var_type == "float":
                value["format"] = "float"
                value["description"] = value.get("description", "") + FLOAT_NOTE
            value["type"] = GORILLA_TO_OPENAPI.get(var_type, "string")
        if value["type"] in ("array", "object"):
            if "properties" in value:
                value["properties"] = _cast(value["properties"])
            elif "items" in value:
                items = value["items"]
                items["type"] = GORILLA_TO_OPENAPI[items["type"]]
                if items["type"] == "array" and "items" in items:
                    items["items"]["type"] = GORILLA_TO_OPENAPI[items["items"]["type"]]
                elif items["type"] == "object" and "properties" in items:
                    items["properties"] = _cast(items["properties"])
    return properties


def convert_function(doc: dict) -> dict:
    """One BFCL function doc → the OpenAI-style tool schema the project's templates take."""
    fn = copy.deepcopy(doc)
    fn["name"] = tool_name(fn["name"])
    params = fn.setdefault("parameters", {})
    params["type"] = "object"
    params["properties"] = _cast(params.get("properties", {}))
    return {"type": "function", "function": fn}


def _example(accepted: list):
    """A value a correct model could give: the first accepted one that is not the 'omitted' marker; dicts (and
    lists of dicts) of accepted values resolved the same way, key by key."""
    for v in accepted:
        if v != "":
            return _resolve(v)
    return None


def _resolve(v):
    if isinstance(v, dict) and all(isinstance(x, list) for x in v.values()):
        return {k: _example(x) for k, x in v.items() if "" not in x}
    if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
        return [_resolve(x) for x in v]
    return v


def convert_call(gt: dict, required=()) -> dict:
    """One ground-truth call ``{func: {arg: [accepted]}}`` → ``{"name", "arguments", "possible", "optional"}``:
    ``name`` as the model sees it (:func:`tool_name`), ``arguments`` one correct call (the first accepted value of
    every argument that may not be omitted, or that the schema lists in ``required``), ``possible`` BFCL's
    accepted values per argument as shipped (the scorer uses these), ``optional`` the arguments that may be
    omitted."""
    (func, args), = gt.items()
    arguments = {a: _example(vals) for a, vals in args.items()
                 if any(v != "" for v in vals) and ("" not in vals or a in required)}
    return {"name": tool_name(func), "bfcl_name": func, "arguments": arguments, "possible": args,
            "optional": sorted(a for a, vals in args.items() if "" in vals)}


def convert_ground_truth(ground_truth: list[dict] | None, category: str, functions=()) -> dict | list[dict] | None:
    """BFCL's ground truth → the project's ``expected``: ``None`` (no call is right) for the irrelevance
    categories; one call (a dict) for simple/multiple categories; a list of calls, matched in any order, for the
    parallel ones."""
    if category in IRRELEVANCE_CATEGORIES or ground_truth is None:
        return None
    required = {f["name"]: f.get("parameters", {}).get("required", []) for f in functions}
    calls = [convert_call(g, required.get(next(iter(g)), ())) for g in ground_truth]
    if "parallel" in category:
        return calls
    if len(calls) != 1:
        raise ValueError(f"BFCL {category}: {len(calls)} ground-truth calls where one is expected")
    return calls[0]


def convert_row(raw: dict, category: str) -> dict:
    """A BFCL row → ``{"id", "category", "messages", "tools", "expected", "bfcl_function"}`` (BFCL's id kept)."""
    turns = raw["question"]
    if len(turns) != 1:
        raise ValueError(f"BFCL {raw['id']}: {len(turns)} turns (multi-turn is out of scope)")
    return {"id": raw["id"], "category": category, "messages": copy.deepcopy(turns[0]),
            "tools": [convert_function(f) for f in raw["function"]],
            "expected": convert_ground_truth(raw["ground_truth"], category, raw["function"]),
            "bfcl_function": raw["function"]}


def load_rows(categories=DEFAULT_CATEGORIES, limit: int | None = None, seed: int = 0,
              wheel: str | Path | None = None) -> list[dict]:
    """Converted rows of ``categories``; ``limit``: at most that many per category (a stratified sample),
    drawn by a seeded shuffle of each category (so a smaller limit gives a subset of a larger one), kept in
    BFCL's order."""
    rows = []
    for cat in categories:
        raw = load_raw(cat, wheel)
        if limit is not None and limit < len(raw):
            idx = list(range(len(raw)))
            random.Random(f"{seed}:{cat}").shuffle(idx)
            raw = [raw[i] for i in sorted(idx[:limit])]
        rows += [convert_row(r, cat) for r in raw]
    return rows


def category_sizes(categories, wheel=None) -> dict[str, int]:
    """Full size of each category (the weights of BFCL's live summary)."""
    return {c: len(load_raw(c, wheel)) for c in categories}


def main() -> None:
    print(wheel_path())


if __name__ == "__main__":
    main()
