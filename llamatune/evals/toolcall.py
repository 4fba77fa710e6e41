"""BFCL-style tool-call evaluation: run a model greedily on a test set (or take raw outputs) and score them.

    llamatune eval toolcall --model X.gguf|HF_DIR --data data/funccall/eval.jsonl --out results/base.json [--icl 3]
    llamatune eval toolcall --predictions preds.jsonl --out results/other.json
    llamatune eval toolcall --compare results/base.json results/tuned.json [--out results/compare.json]

A prediction line is ``{"id", "tools", "expected", "output"[, "category"]}``, ``output`` the model's raw text.
Scoring follows BFCL's AST checker: a call is correct when the function name matches, every required
argument is present, no argument outside the schema appears, types match (int accepted for float) and values
match after normalisation (case, whitespace, surrounding punctuation; other spellings listed in
``expected["accept"]``; an omitted optional argument equals its default). When no call is expected, any call
attempt is wrong; for ``clarify`` items the answer must also ask a question. Nothing in model output crashes
the scorer: malformed calls count as format-invalid.

``results.json`` = ``{"kind": "toolcall", "model", "icl", "items": [{"id", "category", "correct", "reason",
…}], "aggregate": {"overall", "by_category"}}``; metrics carry Wilson 95% CIs (calls per turn: bootstrap).
Generations are cached in ``<out>.generations.jsonl`` so an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import time
import unicodedata
from functools import lru_cache
from pathlib import Path

from llamatune.evals.stats import bootstrap_ci, mcnemar_exact, paired_bootstrap_diff, wilson_ci
from llamatune.generate import append_jsonl, fingerprint, load_generator, model_kind, parse_spec
from llamatune.generate import read_jsonl as read_cache
from llamatune.toolcall import ToolCall, parse_output, validate_call

DATE = "26 Jul 2024"  # fixed "Today Date" so that prompts (and the generation cache) are reproducible
METRICS = ("accuracy", "tool_accuracy", "argument_accuracy", "irrelevance_accuracy", "format_valid_rate",
           "clarification_rate", "calls_per_turn")


# --- scoring ----------------------------------------------------------------------------------------------

def _strip_punct(s: str) -> str:
    i, j = 0, len(s)
    while i < j and (s[i].isspace() or unicodedata.category(s[i]).startswith("P")):
        i += 1
    while j > i and (s[j - 1].isspace() or unicodedata.category(s[j - 1]).startswith("P")):
        j -= 1
    return s[i:j]


def normalize(value):
    """Comparable form of an argument value: strings casefolded, whitespace collapsed, surrounding
    punctuation dropped; numbers as float (so 2 == 2.0); lists and dicts element-wise."""
    if isinstance(value, str):
        return _strip_punct(" ".join(value.split()).casefold())
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    return value


@lru_cache(maxsize=64)
def _project_defaults(name: str) -> tuple:
    from llamatune.tools import all_tools

    tool = all_tools().get(name)
    if tool is None:
        return ()
    return tuple((p, v.default) for p, v in inspect.signature(tool.fn).parameters.items()
                 if v.default is not inspect.Parameter.empty)


def defaults_of(name: str, tools: list[dict]) -> dict:
    """Default argument values of tool ``name``: the schemas' ``default`` fields, else the project's tool."""
    for t in tools:
        fn = t.get("function", t)
        if fn.get("name") == name:
            props = (fn.get("parameters") or {}).get("properties", {})
            found = {k: p["default"] for k, p in props.items() if "default" in p}
            return {**dict(_project_defaults(name)), **found}
    return dict(_project_defaults(name))


def _args_reason(call: ToolCall, expected: dict, tools: list[dict]) -> str | None:
    defaults = defaults_of(call.name, tools)
    want = {**defaults, **expected.get("arguments", {})}
    got = {**defaults, **call.arguments}
    accept = expected.get("accept", {})
    for arg in sorted(set(want) | set(got)):
        if arg not in got:
            return f"missing_argument: {call.name} needs {arg!r}"
        if arg not in want:
            return f"unexpected_argument: {arg}={call.arguments[arg]!r} was not asked for"
        ok = [normalize(v) for v in [want[arg], *accept.get(arg, [])]]
        if normalize(got[arg]) not in ok:
            return f"wrong_value: {arg}={got[arg]!r}, expected {want[arg]!r}"
    return None


_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_FAILURE_WORDS = ("sorry", "could not", "couldn't", "cannot", "can't", "unable", "error", "failed", "not available")


def _leaves(x):
    if isinstance(x, dict):
        for k, v in x.items():
            if k not in ("note", "tool", "url"):
                yield from _leaves(v)
    elif isinstance(x, list):
        for v in x:
            yield from _leaves(v)
    elif x is not None and not isinstance(x, bool):
        yield str(x)


def grounding_reason(answer: str, context: list[dict]) -> str | None:
    """``None`` when ``answer`` uses the last tool result of ``context``: it repeats a number or a value of the
    result that the user did not say (a temperature, a title, a time), or, for an error result, says that it
    failed. Otherwise the reason it counts as ungrounded. When ``context`` does not end with a tool turn: ``None``."""
    tool = context[-1] if context else None
    if tool is None or tool.get("role") not in ("tool", "ipython"):
        return None
    content = tool["content"]
    if isinstance(content, str):
        try:
            content = json.loads(content)
        except json.JSONDecodeError:
            content = {"result": content}
    said = " ".join(str(m.get("content")) for m in context if m.get("role") == "user").casefold()
    text = (answer or "").casefold()
    if isinstance(content, dict) and "error" in content and "result" not in content:
        ok = str(content["error"]).casefold() in text or any(w in text for w in _FAILURE_WORDS)
        return None if ok else "ungrounded: the tool failed, and the answer does not say so"
    numbers = {n.replace(",", ".") for v in _leaves(content) for n in _NUMBER.findall(v)}
    numbers -= {n.replace(",", ".") for n in _NUMBER.findall(said)}
    words = {v.casefold() for v in _leaves(content) if len(v) >= 4 and not _NUMBER.fullmatch(v)}
    words = {w for w in words if w not in said}
    got = {n.replace(",", ".") for n in _NUMBER.findall(text)}
    if numbers & got or any(w in text for w in words):
        return None
    return "ungrounded: the answer repeats no value of the tool result"


def score_output(output: str, expected: dict | None, tools: list, category: str,
                 context: list[dict] | None = None) -> dict:
    """Score one raw output: ``{correct, reason, format_valid, called, attempted, clarified, llm_calls,
    expects_call, name_correct}``. ``llm_calls`` is what the agent would spend on the turn: 1 for a text
    answer, 2 for a call (it runs the tool, then asks the model again). With ``context`` (the conversation before
    the output), a text answer after a tool result must also be grounded in it (:func:`grounding_reason`)."""
    parsed = parse_output(output if isinstance(output, str) else "")
    called = bool(parsed.calls)
    clarified = not parsed.attempted and any(q in (output or "") for q in "?？")
    rec = {"format_valid": parsed.format_valid, "called": called, "attempted": parsed.attempted,
           "clarified": clarified, "llm_calls": 2 if called else 1, "expects_call": expected is not None,
           "name_correct": False}
    if expected is None:
        if not parsed.format_valid:
            reason = f"format_invalid: {parsed.error} (an attempted call where none is needed)"
        elif called:
            reason = f"called_tool: {parsed.calls[0].name} although no call is needed"
        elif not (output or "").strip():
            reason = "empty_output"
        elif category == "clarify" and not clarified:
            reason = "no_question: a required argument is missing but the answer asks nothing"
        else:
            reason = (grounding_reason(output, context) if context else None) or "ok"
        return {"correct": reason == "ok", "reason": reason, **rec}
    if not parsed.format_valid:
        reason = f"format_invalid: {parsed.error}"
    elif not called:
        reason = "no_call: answered in text although a call is needed"
    elif len(parsed.calls) > 1:
        reason = f"multiple_calls: {len(parsed.calls)} calls, one expected"
        rec["name_correct"] = parsed.calls[0].name == expected["name"]
    elif parsed.calls[0].name != expected["name"]:
        reason = f"wrong_tool: {parsed.calls[0].name}, expected {expected['name']}"
    else:
        rec["name_correct"] = True
        invalid = validate_call(parsed.calls[0], tools)
        reason = str(invalid) if invalid else (_args_reason(parsed.calls[0], expected, tools) or "ok")
    return {"correct": reason == "ok", "reason": reason, **rec}


# --- aggregation ------------------------------------------------------------------------------------------

def _prop(k: int, n: int) -> dict:
    low, high = wilson_ci(k, n)
    return {"value": k / n if n else None, "k": k, "n": n, "low": low if n else None, "high": high if n else None}


def _metrics(items: list[dict]) -> dict:
    need = [i for i in items if i["expects_call"]]
    none = [i for i in items if not i["expects_call"]]
    named = [i for i in need if i["name_correct"]]
    clar = [i for i in items if i["category"] == "clarify"]
    calls = [i["llm_calls"] for i in items]
    cpt = {"value": None, "low": None, "high": None, "n": 0}
    if calls:
        low, high = bootstrap_ci(calls, n_boot=2000, seed=0)
        cpt = {"value": sum(calls) / len(calls), "low": low, "high": high, "n": len(calls),
               "ideal": sum(2 if i["expects_call"] else 1 for i in items) / len(items)}
    return {
        "n": len(items),
        "accuracy": _prop(sum(i["correct"] for i in items), len(items)),
        "tool_accuracy": _prop(sum(i["correct"] for i in need), len(need)),
        "argument_accuracy": _prop(sum(i["correct"] for i in named), len(named)),
        "irrelevance_accuracy": _prop(sum(not i["attempted"] for i in none), len(none)),
        "format_valid_rate": _prop(sum(i["format_valid"] for i in items), len(items)),
        "clarification_rate": _prop(sum(i["clarified"] for i in clar), len(clar)),
        "calls_per_turn": cpt,
    }


def aggregate(items: list[dict]) -> dict:
    cats = sorted({i["category"] for i in items})
    return {"overall": _metrics(items), "by_category": {c: _metrics([i for i in items if i["category"] == c]) for c in cats}}


def _cell(m: dict) -> str:
    if m.get("value") is None:
        return "–"
    if "k" in m:
        return f"{100 * m['value']:.0f}% [{100 * m['low']:.0f}, {100 * m['high']:.0f}]"
    return f"{m['value']:.2f} [{m['low']:.2f}, {m['high']:.2f}]"


def markdown_table(agg: dict) -> str:
    head = ["", "n", "accuracy", "tool acc.", "arg. acc.", "irrelevance acc.", "format valid", "clarification",
            "LLM calls/turn"]
    rows = [("**overall**", agg["overall"]), *agg["by_category"].items()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in rows:
        lines.append("| " + " | ".join([name, str(m["n"]), *(_cell(m[k]) for k in METRICS)]) + " |")
    ideal = agg["overall"]["calls_per_turn"].get("ideal")
    if ideal is not None:
        lines += ["", f"LLM calls per turn of a perfect model on these items: {ideal:.2f} (1 per text answer, 2 per call)."]
    return "\n".join(lines)


def _write_results(items: list[dict], out, **meta) -> dict:
    result = {"kind": "toolcall", **meta, "items": items, "aggregate": aggregate(items)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(markdown_table(result["aggregate"]))
    return result


def _score_rows(rows: list[dict]) -> list[dict]:
    return [{"id": r["id"], "category": r["category"],
             **score_output(r["output"], r["expected"], r["tools"], r["category"],
                            prompt_messages(r) if r.get("messages") else None), "output": r["output"]}
            for r in rows]


# --- inputs -----------------------------------------------------------------------------------------------

def read_jsonl(path, required: tuple[str, ...]) -> list[dict]:
    """Rows of a JSONL file; a bad line raises ``ValueError`` naming the file, line and field."""
    from llamatune.data.io import iter_jsonl

    rows = []
    for n, row in iter_jsonl(path):
        for field in required:
            if field not in row:
                raise ValueError(f"{path}:{n}: missing field {field!r}")
        if "output" in required and not isinstance(row["output"], str):
            raise ValueError(f"{path}:{n}: field 'output' must be a string (the model's raw text)")
        if not isinstance(row["tools"], list):
            raise ValueError(f"{path}:{n}: field 'tools' must be a list of tool schemas")
        if row["expected"] is not None and not (isinstance(row["expected"], dict) and "name" in row["expected"]):
            raise ValueError(f"{path}:{n}: field 'expected' must be null or {{\"name\", \"arguments\"}}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def score_predictions(preds_path, out) -> dict:
    """Score raw outputs that already exist (any system) and write ``out``."""
    rows = read_jsonl(preds_path, ("id", "tools", "expected", "output"))
    for r in rows:
        r.setdefault("category", "call" if r["expected"] else "no_call")
    return _write_results(_score_rows(rows), out, model=f"predictions:{preds_path}", icl=None)


# --- running a model --------------------------------------------------------------------------------------

def prompt_messages(row: dict, icl: int = 0, seed: int = 0) -> list[dict]:
    """The conversation up to (not including) the target: the row's last assistant turn."""
    msgs = row["messages"]
    idx = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if idx is None:
        raise ValueError(f"row {row.get('id')!r}: no assistant turn to predict")
    msgs = [dict(m) for m in msgs[:idx]]
    if icl:
        from llamatune.icl import icl_system_prompt

        text = icl_system_prompt(icl, seed)
        if msgs and msgs[0]["role"] == "system":
            msgs[0]["content"] = text + "\n\n" + msgs[0]["content"]
        else:
            msgs.insert(0, {"role": "system", "content": text})
    return msgs


def build_prompt(row: dict, icl: int = 0, template: str = "llama-3.2") -> str:
    from llamatune.chat import render

    return render(prompt_messages(row, icl), row.get("tools") or None, template=template, add_generation_prompt=True,
                  date_string=DATE)


def model_template(model_spec) -> str:
    """The project chat template of a GGUF (its embedded ``tokenizer.chat_template``) or HF directory."""
    from llamatune.chat import detect_template

    p = Path(str(model_spec))
    if p.suffix == ".gguf":
        from llamatune.embedded import read_gguf_metadata

        text = read_gguf_metadata(p).get("tokenizer.chat_template", "")
    else:
        tj = p / "chat_template.jinja"
        text = tj.read_text(encoding="utf-8") if tj.exists() else ""
    return detect_template(text)


def _load(model_spec, n_ctx: int, n_threads: int | None, template: str, backend: str = "auto"):
    """The generator whose ``complete_batch`` continues the rendered prompts (a seam the tests replace)."""
    if model_kind(model_spec) == "gguf":
        return load_generator(str(model_spec), n_ctx=n_ctx, n_threads=n_threads, template=template, backend=backend)
    return load_generator(str(model_spec), template=template, backend=backend)


def evaluate(model_spec, data_path, out, icl: int = 0, limit: int | None = None, max_tokens: int = 128,
             n_ctx: int = 4096, n_threads: int | None = None, template: str | None = None,
             backend: str = "auto") -> dict:
    """Run ``model_spec`` greedily on every row of ``data_path`` (the generator's ``eval.jsonl``) and score.
    Prompts use ``template`` (default: the model's own, see :func:`model_template`). Outputs are cached per
    item in ``<out>.generations.jsonl`` (keyed by model, prompt and settings). An HF model runs on ``backend``
    (:func:`llamatune.generate.load_generator`: transformers, batched on a GPU, or vLLM); missing items go to the
    generator ``batch_size`` prompts at a time (one at a time on llama.cpp and on a CPU)."""
    from tqdm import tqdm

    from llamatune.progress import tqdm_disable

    model_kind(model_spec)
    template = template or model_template(model_spec)
    rows = read_jsonl(data_path, ("id", "messages", "tools", "expected", "category"))[: limit or None]
    cache_path = Path(out).with_suffix(".generations.jsonl")
    # keyed by the model's content (a re-exported GGUF at the same path is another model), the rendered prompt
    # (template and date included) and the settings; the store cuts a torn last line off before appending
    fp = fingerprint(parse_spec(str(model_spec)))
    cache = {e["key"]: e["output"] for e in read_cache(cache_path) if "key" in e}
    runner = None
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        prompts = [build_prompt(row, icl, template) for row in rows]
        keys = [hashlib.sha256(json.dumps([fp, p, max_tokens]).encode()).hexdigest() for p in prompts]
        # Prompts in sorted order, so that consecutive ones share their longest prefix (system text, tool
        # schemas): llama.cpp keeps the KV cache of the common prefix and evaluates only the rest.
        order = sorted(range(len(rows)), key=prompts.__getitem__)
        first: dict[str, int] = {}
        for i in order:
            first.setdefault(keys[i], i)  # a prompt that repeats is generated once
        todo = [i for k, i in first.items() if k not in cache]
        bar = tqdm(total=len(todo), desc=f"toolcall {Path(str(model_spec)).name}", disable=tqdm_disable())
        while todo:
            runner = runner or _load(model_spec, n_ctx, n_threads, template, backend)
            chunk, todo = todo[:max(1, runner.batch_size)], todo[max(1, runner.batch_size):]
            t0 = time.perf_counter()
            outs = runner.complete_batch([prompts[i] for i in chunk], max_tokens)
            seconds = round((time.perf_counter() - t0) / len(chunk), 3)  # per item (a batch's time shared)
            for i, output in zip(chunk, outs, strict=True):
                cache[keys[i]] = output
                append_jsonl(cache_path, {"id": rows[i]["id"], "key": keys[i], "output": output, "seconds": seconds,
                                          "backend": getattr(runner, "backend", "")})
            bar.update(len(chunk))
        bar.close()
        for row, key in zip(rows, keys):
            row["output"] = cache[key]
    finally:
        if runner is not None:
            runner.close()
    return _write_results(_score_rows(rows), out, model=str(model_spec), icl=icl, data=str(data_path),
                          max_tokens=max_tokens, template=template)


# --- comparison -------------------------------------------------------------------------------------------

def _paired(a: list[bool], b: list[bool]) -> dict:
    diff = paired_bootstrap_diff([float(x) for x in b], [float(x) for x in a], n_boot=10000, seed=0)
    return {"n": len(a), "accuracy_a": sum(a) / len(a), "accuracy_b": sum(b) / len(b),
            "mcnemar": mcnemar_exact(a, b),
            "diff_b_minus_a": {"diff": diff["diff"], "low": diff["low"], "high": diff["high"]}}


def compare(a_json, b_json) -> dict:
    """Paired comparison of two results on their common items: McNemar exact test on item correctness and a
    paired bootstrap 95% CI of accuracy(B) − accuracy(A), overall and per category."""
    A, B = (json.loads(Path(p).read_text(encoding="utf-8")) for p in (a_json, b_json))
    ia, ib = ({i["id"]: i for i in r["items"]} for r in (A, B))
    ids = [i for i in ia if i in ib]
    if not ids:
        raise ValueError(f"{a_json} and {b_json} share no item ids")
    res = {"kind": "toolcall-compare", "a": {"path": str(a_json), "model": A.get("model"), "icl": A.get("icl")},
           "b": {"path": str(b_json), "model": B.get("model"), "icl": B.get("icl")},
           "only_in_a": len(ia) - len(ids), "only_in_b": len(ib) - len(ids),
           "overall": _paired([ia[i]["correct"] for i in ids], [ib[i]["correct"] for i in ids]), "by_category": {}}
    for cat in sorted({ia[i]["category"] for i in ids}):
        sub = [i for i in ids if ia[i]["category"] == cat]
        res["by_category"][cat] = _paired([ia[i]["correct"] for i in sub], [ib[i]["correct"] for i in sub])
    return res


def compare_table(res: dict) -> str:
    lines = ["| | n | accuracy A | accuracy B | B − A [95% CI] | McNemar b01/b10 | p |", "|---|---|---|---|---|---|---|"]
    for name, c in [("**overall**", res["overall"]), *res["by_category"].items()]:
        d, m = c["diff_b_minus_a"], c["mcnemar"]
        lines.append(f"| {name} | {c['n']} | {100 * c['accuracy_a']:.0f}% | {100 * c['accuracy_b']:.0f}% | "
                     f"{100 * d['diff']:+.0f} pp [{100 * d['low']:+.0f}, {100 * d['high']:+.0f}] | "
                     f"{m['b01']}/{m['b10']} | {m['p_value']:.3g} |")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="a .gguf file (llama-cpp-python) or an HF model directory")
    what.add_argument("--predictions", help="JSONL of {id, tools, expected, output} to score")
    what.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="paired comparison of two results")
    parser.add_argument("--data", help="test JSONL from `llamatune data funccall` (its eval.jsonl)")
    parser.add_argument("--out", help="results JSON to write")
    parser.add_argument("--icl", type=int, default=0, help="k few-shot tool-use examples in the system prompt")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test items")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--n-ctx", type=int, default=4096, help="llama.cpp context size")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: $LLAMATUNE_THREADS, else the physical cores)")
    parser.add_argument("--template", default=None, help="chat template of the prompts (default: the model's own)")
    parser.add_argument("--backend", default="auto", choices=("auto", "hf", "vllm"),
                        help="HF models: transformers (batched on a GPU) or vLLM; auto = vLLM when installed and a GPU "
                             "is present")


def main(args) -> int:
    if args.compare:
        res = compare(*args.compare)
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
        print(compare_table(res))
        return 0
    if not args.out:
        raise SystemExit("--out is required with --model or --predictions")
    if args.predictions:
        score_predictions(args.predictions, args.out)
        return 0
    if not args.data:
        raise SystemExit("--data is required with --model")
    evaluate(args.model, args.data, args.out, icl=args.icl, limit=args.limit, max_tokens=args.max_tokens,
             n_ctx=args.n_ctx, n_threads=args.threads, template=args.template, backend=args.backend)
    return 0
