"""BFCL v4 as the outside yardstick: the field's function-calling test set, scored with BFCL's AST semantics.

    llamatune eval bfcl --model X.gguf|HF_DIR [--out results/bfcl/X.json] \
        [--categories simple_python,multiple,parallel,irrelevance,live_simple,live_multiple,live_irrelevance] \
        [--limit N] [--seed S] [--icl K]
    llamatune eval bfcl --compare results/bfcl/base.json results/bfcl/tuned.json [--out compare.json]
    llamatune eval bfcl --table results/bfcl/base.json results/bfcl/tuned.json [--out table.md]

Data and ground truths come from the ``bfcl-eval`` wheel (:mod:`llamatune.evals.bfcl_data`: downloaded once,
sha256-pinned, never installed); each BFCL function doc is converted to a JSON-schema tool as BFCL converts it for
function-calling models, and the prompt is the BFCL question rendered through the model's own chat template with
those tools (the model answers in its template's call format, which the project's parser reads). Scoring:
:mod:`llamatune.evals.bfcl_score` (BFCL's rules; ``bench/bfcl_agreement.py`` checks them against BFCL's own
``ast_checker``). ``--limit N`` keeps at most N items per category, a seeded sample (``--seed``), so CPU runs
stay short and two runs with the same limit and seed see the same items.

Results have the shape ``eval toolcall`` writes (``kind: "bfcl"``; per-item records with BFCL's ids, the raw
``output`` and the ``reason``; ``aggregate`` with Wilson CIs), plus ``summary``: accuracy per category, BFCL's
non-live AST summary (unweighted mean of the non-live AST categories present), live AST summary (mean weighted by
the full category sizes, as BFCL weighs them) and irrelevance (same weighting), with 95% CIs (per category:
Wilson; summaries: Jeffreys-posterior draws per category, weighted). Generations are cached in
``<out>.generations.jsonl`` (:func:`llamatune.generate.generate_cached`), so a rerun or an interrupted run answers
nothing twice. BFCL is a test set here: nothing in this repo is chosen by looking at it.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from llamatune.chat import model_template
from llamatune.evals import toolcall
from llamatune.evals.bfcl_data import (
    DEFAULT_CATEGORIES,
    IRRELEVANCE_CATEGORIES,
    LIVE_AST,
    NON_LIVE_AST,
    VERSION,
    category_sizes,
    load_rows,
)
from llamatune.evals.bfcl_score import score_output
from llamatune.evals.stats import proportion
from llamatune.generate import Generator, LlamaCppGenerator, generate_cached
from llamatune.model_spec import parse_spec
from llamatune.jsonl import read_json, write_json, write_text
from llamatune.report import bfcl_table, comparison_table

# new tokens per answer: 99% of BFCL's single ground-truth calls are under ~70 SmolLM2 tokens, its parallel ones (2-4
# calls) under ~290
MAX_TOKENS = 128
PARALLEL_FACTOR = 2  # parallel categories get this many times --max-tokens
BEGIN, END = "<!-- bfcl:begin -->", "<!-- bfcl:end -->"  # the README block that --table --readme rewrites
SUMMARIES = (("non_live_ast", NON_LIVE_AST, "unweighted"), ("live_ast", LIVE_AST, "weighted"),
             ("irrelevance", IRRELEVANCE_CATEGORIES, "weighted"))


class _LazyGenerator(Generator):
    """Loads the real generator only when a prompt is not in the cache (a rescoring run loads no model)."""

    def __init__(self, model_spec, template: str, n_ctx: int, n_threads: int | None, batch: int | None = None):
        self.spec, self.template = parse_spec(str(model_spec)), template
        self._args, self._gen = (model_spec, n_ctx, n_threads, template), None
        self._batch = batch

    def _real(self) -> Generator:
        if self._gen is None:
            self._gen = toolcall._load(*self._args, batch=self._batch)
        return self._gen

    @property
    def batch_size(self) -> int:
        return self._real().batch_size

    @property
    def backend(self) -> str:
        return getattr(self._real(), "backend", "")

    @property
    def constrained(self) -> dict:
        return self._real().constrained

    def generate_each(self, conversations, max_tokens=512, temperature=0.0, constrain: bool = False):
        """A llama.cpp generator's greedy answers end as soon as they are prose that can no longer open a call
        (:func:`cannot_be_a_call`): the verdict is the same, the time is not. ``constrain``: calls decoded under
        each conversation's lazy call grammar (llama.cpp only)."""
        gen = self._real()
        if isinstance(gen, LlamaCppGenerator) and not temperature:
            return gen.generate_each(conversations, max_tokens=max_tokens, stop_when=cannot_be_a_call,
                                     constrain=constrain)
        if constrain:
            raise ValueError("constrained decoding (--constrain) runs on llama.cpp: give a .gguf")
        return gen.generate_each(conversations, max_tokens=max_tokens, temperature=temperature)

    def generate_batch(self, conversations, max_tokens=512, temperature=0.0):
        out = dict(self.generate_each(conversations, max_tokens=max_tokens, temperature=temperature))
        return [out[i] for i in range(len(conversations))]

    def close(self):
        if self._gen is not None:
            self._gen.close()


_OPENS_CALL = re.compile(r"^(?:[{\[`<]|[A-Za-z_][\w.]*\s*(?:\(|$))")


def cannot_be_a_call(text: str) -> bool:
    """Whether an answer that begins with ``text`` is prose whatever follows: the project's parser reads a call only
    from an answer that opens with ``{``/``[`` (JSON), ``<|python_tag|>`` or a fence, or a name and ``(``
    (pythonic); BFCL's decoder evaluates the whole text, which fails on prose as well."""
    head = text.lstrip()
    return len(head) >= 2 and not _OPENS_CALL.match(head) and not (head[:1].isalpha() and head.isidentifier())


def _show_progress() -> bool:
    import sys

    from llamatune.progress import in_notebook

    return in_notebook() or sys.stderr.isatty()


def prompt_of(row: dict, icl: int = 0, seed: int = 0) -> dict:
    """``{"id", "messages", "tools"}`` for :func:`generate_cached`: BFCL's question (with ``icl`` worked examples
    of the project's call format in the system prompt, as ``eval toolcall --icl``) and the converted tools."""
    msgs = row["messages"] + [{"role": "assistant", "content": ""}]  # prompt_messages cuts at the target turn
    return {"id": row["id"], "messages": toolcall.prompt_messages({"id": row["id"], "messages": msgs}, icl, seed),
            "tools": row["tools"]}


def malformed_causes(items: list[dict], tools: dict[str, list], template: str) -> dict[str, int]:
    """Why constrained outputs that attempt a call still do not parse: ``no_tools_offered`` (the item offers no
    function, so there is no grammar: the decision to call is the model's error, left visible), ``unclosed`` (the
    template's call closer never came: the token budget cut the call, which a grammar cannot finish), ``other``."""
    from llamatune.grammar import syntax_of

    closer = syntax_of(template).closer
    out = {"no_tools_offered": 0, "unclosed": 0, "other": 0}
    for item in items:
        if not item.get("attempted") or item.get("format_valid"):
            continue
        if not tools.get(item["id"]):
            out["no_tools_offered"] += 1
        elif closer and not item["output"].rstrip().endswith(closer):
            out["unclosed"] += 1
        else:
            out["other"] += 1
    return out


def score_rows(rows: list[dict], outputs: dict[str, str]) -> list[dict]:
    return [{"id": r["id"], "category": r["category"],
             **score_output(outputs[r["id"]], r["expected"], r["tools"], r["category"]), "output": outputs[r["id"]]}
            for r in rows]


# --- summaries ----------------------------------------------------------------------------------------------

def _mix(counts: dict[str, tuple[int, int]], weights: dict[str, float], n_draws: int = 20000, seed: int = 0) -> dict:
    """A weighted mean of category accuracies with a 95% interval from draws of each category's accuracy from its
    Jeffreys posterior, Beta(k + ½, n − k + ½), weighted alike (for one category: the Jeffreys interval, close to
    Wilson's; unlike a plain bootstrap it does not collapse to [0, 0] when no item is right)."""
    cats = [c for c in counts if counts[c][1]]
    if not cats:
        return {"value": None, "low": None, "high": None, "n": 0}
    w = np.array([weights[c] for c in cats], dtype=float)
    w /= w.sum()
    p = np.array([counts[c][0] / counts[c][1] for c in cats])
    rng = np.random.default_rng(seed)
    boot = np.stack([rng.beta(counts[c][0] + 0.5, counts[c][1] - counts[c][0] + 0.5, n_draws) for c in cats], axis=1)
    value = float(p @ w)
    low, high = np.percentile(boot @ w, [2.5, 97.5])
    # as the Jeffreys interval does at k = 0 and k = n: the bound reaches the estimate (draws never hit 0 or 1)
    low = 0.0 if all(k == 0 for k, _ in counts.values()) else min(float(low), value)
    high = 1.0 if all(k == n for k, n in counts.values()) else max(float(high), value)
    return {"value": value, "low": low, "high": high, "n": int(sum(counts[c][1] for c in cats)),
            "categories": cats}


def summarize(items: list[dict], sizes: dict[str, int]) -> dict:
    """Per-category accuracy (Wilson CI) and BFCL's non-live, live and irrelevance summaries."""
    counts = {}
    for c in dict.fromkeys(i["category"] for i in items):
        sub = [i["correct"] for i in items if i["category"] == c]
        counts[c] = (sum(sub), len(sub))
    out = {"by_category": {c: proportion(k, n) for c, (k, n) in counts.items()}}
    for name, cats, how in SUMMARIES:
        present = {c: counts[c] for c in cats if c in counts}
        weights = {c: (sizes.get(c, 1) if how == "weighted" else 1) for c in present}
        out[name] = {**_mix(present, weights), "weighting": how}
    return out


# --- running ------------------------------------------------------------------------------------------------

def evaluate(model_spec, out, categories=DEFAULT_CATEGORIES, limit: int | None = None, seed: int = 0, icl: int = 0,
             max_tokens: int = MAX_TOKENS, n_ctx: int = 8192, n_threads: int | None = None,
             template: str | None = None, wheel=None, batch: int | None = None, constrain: bool = False) -> dict:
    """Run ``model_spec`` greedily on the BFCL items of ``categories`` and write ``out`` (see module docstring);
    a GGUF decodes ``batch`` items together (default :data:`llamatune.generate.DECODE_BATCH`). ``constrain`` (GGUF
    only): calls decoded under the lazy grammar of each item's tools, a serving feature (BFCL's leaderboard scores
    raw generation); a setting of the cache key; the results record ``constrained`` and ``constrained_tokens``."""
    t0 = time.perf_counter()
    template = template or model_template(model_spec)
    rows = load_rows(categories, limit, seed, wheel)
    prompts = {r["id"]: prompt_of(r, icl) for r in rows}
    from llamatune.chat import render

    # sorted by the rendered text, so consecutive prompts share their longest prefix (llama.cpp's KV cache)
    order = sorted(prompts.values(), key=lambda p: render(p["messages"], p["tools"], template=template,
                                                           add_generation_prompt=True))
    cache = Path(out).with_suffix(".generations.jsonl")
    budget = {r["id"]: max_tokens * (PARALLEL_FACTOR if "parallel" in r["category"] else 1) for r in rows}
    gen = _LazyGenerator(model_spec, template, n_ctx, n_threads, batch)
    outputs, records = {}, {}
    try:
        for n_new in sorted(set(budget.values())):
            outputs.update(generate_cached(gen, [p for p in order if budget[p["id"]] == n_new], cache,
                                           max_tokens=n_new, progress=_show_progress(), constrain=constrain,
                                           records=records))
    finally:
        gen.close()
    items = score_rows(rows, outputs)
    meta = {}
    if constrain:
        for item in items:
            item["constrained_tokens"] = records[item["id"]].get("constrained_tokens", 0)
        meta = {"constrained": True, "constrained_tokens": sum(i["constrained_tokens"] for i in items),
                "not_well_formed": malformed_causes(items, {r["id"]: r["tools"] for r in rows}, template)}
    return write_results(items, out, model=str(model_spec), icl=icl, categories=list(categories), limit=limit,
                         seed=seed, max_tokens=max_tokens,
                         max_tokens_parallel=max_tokens * PARALLEL_FACTOR, template=template,
                         decode_batch=toolcall.decode_batch(model_spec, batch),
                         seconds=round(time.perf_counter() - t0, 1), sizes=category_sizes(categories, wheel), **meta)


def write_results(items: list[dict], out, sizes: dict[str, int], **meta) -> dict:
    """``eval toolcall``'s results file (its writer), with ``kind: "bfcl"`` and the BFCL ``summary``."""
    res = toolcall._write_results(items, out, kind="bfcl", bfcl_version=VERSION, category_sizes=sizes,
                                  summary=summarize(items, sizes), **meta)
    print(markdown_table([res], [Path(out).stem]))
    return res


# --- tables -------------------------------------------------------------------------------------------------

def markdown_table(results: list[dict], names: list[str]) -> str:
    """One row per results file: accuracy per category and BFCL's summaries (:func:`llamatune.report.bfcl_table`)."""
    return bfcl_table(results, names, [name for name, _, _ in SUMMARIES])


def write_block(path, text: str) -> None:
    """Replace what stands between ``BEGIN`` and ``END`` in the markdown file ``path`` with ``text``."""
    doc = Path(path).read_text(encoding="utf-8")
    i, j = doc.find(BEGIN), doc.find(END)
    if i < 0 or j < i:
        raise ValueError(f"{path}: no {BEGIN} ... {END} block to rewrite")
    write_text(path, doc[: i + len(BEGIN)] + "\n" + text + "\n" + doc[j:])


# --- command line -------------------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="a .gguf file (llama-cpp-python) or an HF model directory")
    what.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                      help="paired comparison of two results (McNemar + paired bootstrap), as eval toolcall")
    what.add_argument("--table", nargs="+", metavar="RESULTS.json", help="markdown table of one or more results")
    parser.add_argument("--names", default=None, help="comma-separated row names for --table (default: file stems)")
    parser.add_argument("--readme", default=None,
                        help=f"--table: also write it into this markdown file between {BEGIN} and {END}")
    parser.add_argument("--categories", default=",".join(DEFAULT_CATEGORIES),
                        help="comma-separated BFCL v4 categories (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="at most N items per category (a seeded sample)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit sample")
    parser.add_argument("--out", help="results JSON to write (default: results/bfcl/<model>[-iclK].json; "
                        "--table: the markdown file)")
    parser.add_argument("--icl", type=int, default=0, help="k worked tool-use examples in the system prompt")
    parser.add_argument("--max-tokens", type=int, default=MAX_TOKENS,
                        help=f"new tokens per answer (parallel categories: {PARALLEL_FACTOR}x) (default %(default)s)")
    parser.add_argument("--n-ctx", type=int, default=8192, help="llama.cpp context size")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: $LLAMATUNE_THREADS)")
    parser.add_argument("--template", default=None, help="chat template of the prompts (default: the model's own)")
    parser.add_argument("--batch", type=int, default=None,
                        help="GGUF: sequences decoded together (default: eval toolcall's); HF: prompts per call")
    parser.add_argument("--constrain", action="store_true",
                        help="GGUF: decode calls under a lazy grammar of each item's tools (a serving feature; BFCL's "
                             "leaderboard scores raw generation); default out name gets -constrained")


def default_out(model, icl: int = 0, constrain: bool = False) -> Path:
    """``results/bfcl/<model file or directory name>[-icl<K>][-constrained].json``."""
    name = Path(str(model).split("+peft=")[0].rstrip("/")).name.removesuffix(".gguf")
    return Path("results") / "bfcl" / (name + (f"-icl{icl}" if icl else "") + ("-constrained" if constrain else "")
                                       + ".json")


def main(args) -> int:
    if args.compare:
        res = toolcall.compare(*args.compare)
        res["kind"] = "bfcl_compare"
        if args.out:
            write_json(args.out, res)
        print(comparison_table(res))
        return 0
    if args.table:
        results = [read_json(p) for p in args.table]
        names = args.names.split(",") if args.names else [Path(p).stem for p in args.table]
        if len(names) != len(results):
            raise ValueError(f"--names gives {len(names)} names for {len(results)} results")
        text = markdown_table(results, names)
        if args.out:
            write_text(args.out, text + "\n")
        if args.readme:
            write_block(args.readme, text)
        print(text)
        return 0
    out = args.out or default_out(args.model, args.icl, args.constrain)
    cats = [c.strip() for c in args.categories.split(",") if c.strip()]
    evaluate(args.model, out, cats, limit=args.limit, seed=args.seed, icl=args.icl, max_tokens=args.max_tokens,
             n_ctx=args.n_ctx, n_threads=args.threads, template=args.template, batch=args.batch,
             constrain=args.constrain)
    return 0
