"""BFCL-style tool-call evaluation: run a model greedily on a test set (or take raw outputs) and score them.

    llamatune eval toolcall --model X.gguf|HF_DIR --data data/funccall/eval.jsonl --out results/base.json [--icl 3]
    llamatune eval toolcall --predictions preds.jsonl --out results/other.json
    llamatune eval toolcall --compare results/base.json results/tuned.json [--out results/compare.json]

A prediction line is ``{"id", "tools", "expected", "output"[, "category"]}``, ``output`` the model's raw text.
Scoring follows BFCL's AST checker (:mod:`llamatune.evals.scoring`).

``results.json`` = ``{"kind": "toolcall", "model", "icl", "items": [{"id", "category", "correct", "reason",
…}], "aggregate": {"overall", "by_category"}}``; every metric is ``{"value", "low", "high", "n"}`` with a Wilson 95%
CI (calls per turn: bootstrap).
Generations are cached in ``<out>.generations.jsonl`` so an interrupted run resumes.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from llamatune.chat import DEFAULT_DATE, model_template
from llamatune.evals.scoring import expected_error, score_output
from llamatune.evals.stats import mean_metric, paired_comparison, proportion
from llamatune.generate import load_generator
from llamatune.grammar import grammar_for
from llamatune.sampling import CONSTRAINED_KEY
from llamatune.model_spec import fingerprint, model_kind, parse_spec
from llamatune.jsonl import JsonlCache, iter_jsonl, read_json, sha256_file, write_json
from llamatune.report import comparison_table, toolcall_table

# --- aggregation ------------------------------------------------------------------------------------------

def _metrics(items: list[dict]) -> dict:
    need = [i for i in items if i["expects_call"]]
    none = [i for i in items if not i["expects_call"]]
    named = [i for i in need if i["name_correct"]]
    clar = [i for i in items if i["category"] == "clarify"]
    calls = mean_metric([i["llm_calls"] for i in items], n_boot=2000, seed=0)
    if items:
        calls["ideal"] = sum(2 if i["expects_call"] else 1 for i in items) / len(items)
    return {
        "n": len(items),
        "accuracy": proportion(sum(i["correct"] for i in items), len(items)),
        "tool_accuracy": proportion(sum(i["correct"] for i in need), len(need)),
        "argument_accuracy": proportion(sum(i["correct"] for i in named), len(named)),
        "irrelevance_accuracy": proportion(sum(not i["attempted"] for i in none), len(none)),
        "format_valid_rate": proportion(sum(i["format_valid"] for i in items), len(items)),
        "clarification_rate": proportion(sum(i["clarified"] for i in clar), len(clar)),
        "calls_per_turn": calls,
    }


def aggregate(items: list[dict]) -> dict:
    cats = sorted({i["category"] for i in items})
    return {"overall": _metrics(items), "by_category": {c: _metrics([i for i in items if i["category"] == c]) for c in cats}}


def _write_results(items: list[dict], out, **meta) -> dict:
    result = {"kind": "toolcall", **meta, "items": items, "aggregate": aggregate(items)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result, indent=1)
    print(toolcall_table(result["aggregate"]))
    return result


def _score_rows(rows: list[dict]) -> list[dict]:
    return [{"id": r["id"], "category": r["category"],
             **score_output(r["output"], r["expected"], r["tools"], r["category"],
                            prompt_messages(r) if r.get("messages") else None), "output": r["output"]}
            for r in rows]


# --- inputs -----------------------------------------------------------------------------------------------

def read_items(path, required: tuple[str, ...]) -> list[dict]:
    """Test items (or predictions) from a JSONL file, checked: a bad row raises ``ValueError`` naming the file,
    line and field."""
    rows = []
    for n, row in iter_jsonl(path):
        for field in required:
            if field not in row:
                raise ValueError(f"{path}:{n}: missing field {field!r}")
        if "output" in required and not isinstance(row["output"], str):
            raise ValueError(f"{path}:{n}: field 'output' must be a string (the model's raw text)")
        if not isinstance(row["tools"], list):
            raise ValueError(f"{path}:{n}: field 'tools' must be a list of tool schemas")
        if (why := expected_error(row["expected"])) is not None:  # parallel calls: a list of calls
            raise ValueError(f"{path}:{n}: field 'expected' must be null or {{\"name\", \"arguments\"}} (or a list of "
                             f"those): {why}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def score_predictions(preds_path, out) -> dict:
    """Score raw outputs that already exist (any system) and write ``out``."""
    rows = read_items(preds_path, ("id", "tools", "expected", "output"))
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
        from llamatune.data.icl import icl_system_prompt

        text = icl_system_prompt(icl, seed)
        if msgs and msgs[0]["role"] == "system":
            msgs[0]["content"] = text + "\n\n" + msgs[0]["content"]
        else:
            msgs.insert(0, {"role": "system", "content": text})
    return msgs


def build_prompt(row: dict, icl: int = 0, template: str = "llama-3.2") -> str:
    from llamatune.chat import render

    return render(prompt_messages(row, icl), row.get("tools") or None, template=template, add_generation_prompt=True,
                  date_string=DEFAULT_DATE)


def _load(model_spec, n_ctx: int, n_threads: int | None, template: str, backend: str = "auto",
          batch: int | None = None):
    """The generator whose ``complete_each`` continues the rendered prompts (a seam the tests replace); ``batch``:
    sequences a GGUF decodes together (default :data:`llamatune.generate.DECODE_BATCH`), prompts per call of an HF
    model (default: its placement's)."""
    if model_kind(model_spec) == "gguf":
        return load_generator(str(model_spec), n_ctx=n_ctx, n_threads=n_threads, template=template, backend=backend,
                              batch=batch)
    return load_generator(str(model_spec), template=template, backend=backend,
                          **({"batch_size": batch} if batch else {}))


def decode_batch(model_spec, batch: int | None) -> int | None:
    """The decode batch a run of ``model_spec`` uses (recorded in the results; outputs should not depend on it, and
    ``bench/decode_batch.py`` measures how far they do)."""
    from llamatune.generate import DECODE_BATCH

    return batch or (DECODE_BATCH if str(model_spec).endswith(".gguf") else None)


def evaluate(model_spec, data_path, out, icl: int = 0, limit: int | None = None, max_tokens: int = 128,
             n_ctx: int = 4096, n_threads: int | None = None, template: str | None = None,
             backend: str = "auto", batch: int | None = None, constrain: bool = False, reuse=None) -> dict:
    """Run ``model_spec`` greedily on every row of ``data_path`` (the generator's ``eval.jsonl``) and score.
    Prompts use ``template`` (default: the model's own, see :func:`model_template`). Outputs are cached per
    item in ``<out>.generations.jsonl`` (keyed by model, prompt and settings), each written as soon as it is
    decoded, so a killed run resumes losing only what was in flight. A GGUF decodes ``batch`` items together
    (:class:`llamatune.generate.LlamaCppGenerator`, continuous batching); an HF model runs on ``backend``
    (:func:`llamatune.generate.load_generator`: transformers, batched on a GPU, or vLLM), ``batch`` prompts a call.
    ``constrain`` (GGUF only): each item's calls decoded under the lazy grammar of its tools
    (:func:`llamatune.grammar.grammar_for`), a serving feature, not the raw model; a setting of the cache key, and the
    results record ``constrained: true`` and ``constrained_tokens`` (tokens the grammar changed). ``reuse`` (with
    ``constrain``): the results file of the raw run of the same model and items; an item whose raw output never
    wrote a trigger of its grammar (:meth:`~llamatune.grammar.CallGrammar.may_trigger`) takes that output
    instead of being decoded again, since the lazy grammar would not have acted on it (``reused`` counts them)."""
    from tqdm import tqdm

    from llamatune.progress import tqdm_disable

    if model_kind(model_spec) != "gguf" and constrain:
        raise ValueError(f"{model_spec}: constrained decoding (--constrain) runs on llama.cpp: give a .gguf")
    template = template or model_template(model_spec)
    rows = read_items(data_path, ("id", "messages", "tools", "expected", "category"))[: limit or None]
    cache_path = Path(out).with_suffix(".generations.jsonl")
    # keyed by the model's content (a re-exported GGUF at the same path is another model), the rendered prompt
    # (template and date included) and the settings; the store cuts a torn last line off before appending
    fp = fingerprint(parse_spec(str(model_spec)))
    cache = JsonlCache(cache_path)
    runner = None
    try:
        prompts = [build_prompt(row, icl, template) for row in rows]
        keys = [_cache_key(fp, p, max_tokens, constrain) for p in prompts]
        # Prompts in sorted order, so that consecutive ones share their longest prefix (system text, tool
        # schemas): llama.cpp evaluates the shared prefix once and shares its KV cache.
        order = sorted(range(len(rows)), key=prompts.__getitem__)
        first: dict[str, int] = {}
        for i in order:
            first.setdefault(keys[i], i)  # a prompt that repeats is generated once
        todo = [i for k, i in first.items() if k not in cache]
        if constrain and reuse and todo:
            todo = _reuse_raw(todo, rows, prompts, keys, cache, fp, max_tokens, template, reuse)
        if todo:
            runner = _load(model_spec, n_ctx, n_threads, template, backend, batch)
            bar = tqdm(total=len(todo), desc=f"toolcall {Path(str(model_spec)).name}", disable=tqdm_disable())
            t0 = time.perf_counter()
            kw = {"grammar": [grammar_for(rows[i]["tools"], template) for i in todo]} if constrain else {}
            for n, (j, output) in enumerate(runner.complete_each([prompts[i] for i in todo], max_tokens, **kw),
                                            start=1):
                i = todo[j]
                seconds = round((time.perf_counter() - t0) / n, 3)  # per item so far (the batch's time shared)
                extra = {"constrained_tokens": runner.constrained.get(j, 0)} if constrain else {}
                cache.add({"id": rows[i]["id"], "key": keys[i], "output": output, "seconds": seconds,
                           "backend": getattr(runner, "backend", ""), **extra})
                bar.update(1)
            bar.close()
        changed = [cache.get(key).get("constrained_tokens", 0) for key in keys]
        reused = sum(bool(cache.get(key).get("reused")) for key in keys)
        for row, key in zip(rows, keys):
            row["output"] = cache.get(key)["output"]
    finally:
        if runner is not None:
            runner.close()
    items = _score_rows(rows)
    if constrain:
        for item, n in zip(items, changed):
            item["constrained_tokens"] = n
    return _write_results(items, out, model=str(model_spec), icl=icl, data=str(data_path),
                          max_tokens=max_tokens, template=template, fingerprint=fp, data_sha256=sha256_file(data_path),
                          limit=limit, decode_batch=decode_batch(model_spec, batch),
                          **({"constrained": True, "constrained_tokens": sum(changed), "reused": reused}
                             if constrain else {}))


def _cache_key(fp: str, prompt: str, max_tokens: int, constrain: bool) -> str:
    """A generation's cache key: the model's content, the rendered prompt and the settings (raw runs keep their
    earlier keys; a constrained one adds :data:`~llamatune.sampling.CONSTRAINED_KEY`)."""
    setting = [max_tokens] + ([CONSTRAINED_KEY] if constrain else [])
    return hashlib.sha256(json.dumps([fp, prompt, *setting]).encode()).hexdigest()


def _reuse_raw(todo: list[int], rows, prompts, keys, cache, fp: str, max_tokens: int, template: str, raw) -> list[int]:
    """Store, for each item of ``todo`` whose raw output (``raw``'s cache, same model, prompt and budget) no trigger
    of its grammar appears in, that output as its constrained one (``reused``); the items still to decode."""
    raw_cache = JsonlCache(Path(raw).with_suffix(".generations.jsonl"))
    left = []
    for i in todo:
        hit = raw_cache.get(_cache_key(fp, prompts[i], max_tokens, constrain=False))
        grammar = grammar_for(rows[i]["tools"], template)
        if hit is None or grammar is None or grammar.may_trigger(hit["output"]):
            left.append(i)
        else:
            cache.add({"id": rows[i]["id"], "key": keys[i], "output": hit["output"], "seconds": 0.0,
                       "backend": hit.get("backend", ""), "constrained_tokens": 0, "reused": True})
    return left


# --- comparison -------------------------------------------------------------------------------------------

def is_current(out, model_spec, data_path, **settings) -> bool:
    """Whether ``out`` holds the results of this model (its content), these test items and ``settings`` (``icl``,
    ``max_tokens``, ``template``, ``limit``): a results file that merely exists may be of a re-exported model."""
    try:
        res = read_json(out)
    except (FileNotFoundError, ValueError):
        return False
    want = {"fingerprint": fingerprint(parse_spec(str(model_spec))), "data_sha256": sha256_file(data_path), **settings}
    return all(res.get(k) == v for k, v in want.items())


def compare(a_json, b_json) -> dict:
    """Paired comparison of two results on their common items (:func:`llamatune.evals.stats.paired_comparison`:
    McNemar exact test and a paired bootstrap 95% CI of accuracy(B) − accuracy(A)), overall and per category."""
    A, B = (read_json(p) for p in (a_json, b_json))
    ia, ib = ({i["id"]: i for i in r["items"]} for r in (A, B))
    ids = [i for i in ia if i in ib]
    if not ids:
        raise ValueError(f"{a_json} and {b_json} share no item ids")
    res = {"kind": "toolcall_compare", "a": {"path": str(a_json), "model": A.get("model"), "icl": A.get("icl")},
           "b": {"path": str(b_json), "model": B.get("model"), "icl": B.get("icl")},
           "only_in_a": len(ia) - len(ids), "only_in_b": len(ib) - len(ids),
           "overall": paired_comparison([ia[i]["correct"] for i in ids], [ib[i]["correct"] for i in ids]),
           "by_category": {}}
    for cat in sorted({ia[i]["category"] for i in ids}):
        sub = [i for i in ids if ia[i]["category"] == cat]
        res["by_category"][cat] = paired_comparison([ia[i]["correct"] for i in sub], [ib[i]["correct"] for i in sub])
    return res


def _default_batch() -> int:
    from llamatune.generate import DECODE_BATCH

    return DECODE_BATCH


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
    parser.add_argument("--batch", type=int, default=None,
                        help="GGUF: sequences decoded together (default %d, measured by bench/decode_batch.py); "
                             "HF: prompts per generate() call" % _default_batch())
    parser.add_argument("--backend", default="auto", choices=("auto", "hf", "vllm"),
                        help="HF models: transformers (batched on a GPU) or vLLM; auto = vLLM when installed and a GPU "
                             "is present")
    parser.add_argument("--constrain", action="store_true",
                        help="GGUF: decode calls under a lazy grammar of each item's tools (a serving feature; "
                             "off by default: raw model quality is what is reported first)")
    parser.add_argument("--reuse", default=None, metavar="RAW.json",
                        help="with --constrain: the raw run's results of the same model and items; outputs that "
                             "never opened a call are taken from it (the lazy grammar would not have acted)")


def main(args) -> int:
    if args.compare:
        res = compare(*args.compare)
        if args.out:
            write_json(Path(args.out), res, indent=1)
        print(comparison_table(res))
        return 0
    if not args.out:
        raise ValueError("--out is required with --model or --predictions")
    if args.predictions:
        score_predictions(args.predictions, args.out)
        return 0
    if not args.data:
        raise ValueError("--data is required with --model")
    evaluate(args.model, args.data, args.out, icl=args.icl, limit=args.limit, max_tokens=args.max_tokens,
             n_ctx=args.n_ctx, n_threads=args.threads, template=args.template, backend=args.backend, batch=args.batch,
             constrain=args.constrain, reuse=args.reuse)
    return 0
