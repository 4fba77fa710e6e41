"""Synthetic function-calling dataset: deterministic for a seed, split by template family, offline.

    llamatune data funccall --out data/funccall --n 2000 --seed 0
    llamatune data funccall --out DIR --n 2000 --proportions single_call=0.4,no_tool=0.3,parallel=0.3 --masking 0.3
    llamatune data funccall --out DIR --n 2000 --paraphrase-endpoint http://127.0.0.1:8000/v1 --paraphrase-model M
    llamatune data funccall --out DIR --n 2000 --tokenizer smollm2-135m --template smollm2 --max-length 768

Writes ``DIR/train.jsonl``, ``DIR/eval.jsonl`` (the held-out test split), ``DIR/card.md`` (counts per
category and split; with ``--tokenizer``, tokens per row and the rows a length limit keeps) and ``DIR/manifest.json``
(seed, proportions, families per split, row ids, hashes).
Each row is ``{"id", "messages", "tools", "category", "template_id", "expected", "families", "hash"[, "masked"]}``:
``messages`` in the HF format (calls as ``tool_calls``, results as ``{"role": "tool", "content": {...}}``), ``tools``
the offered schemas (the needed tools plus distractors, or an agent mode's set), ``expected`` the target (the last
assistant turn): ``{"name", "arguments"[, "accept"]}`` for a call (``accept``: other spellings the scorer accepts
per argument), a list of those for parallel calls (any order), ``null`` for a text answer. Categories:

* ``single_call``: one call is needed (several phrasings, languages, spellings, units, horizons);
* ``no_tool``: tools are offered but none serves the request (chit-chat, knowledge, maths, tasks);
* ``tool_result``: after the call and its result (a ``tool`` turn), a grounded answer, no second call;
* ``clarify``: a required argument is missing or ambiguous, so the answer is a question;
* ``multi_turn``: a follow-up ("and tomorrow?") after a first exchange; mostly a new call;
* ``near_miss``: a tool of the request's own domain is offered and cannot serve it: a text answer;
* ``injection``: after a call, the result holds text asking for another call or giving orders: answered as data;
* ``parallel``: 2-3 calls in one turn ("the weather in Oslo and in Rome"); ``parallel_result``: one answer
  grounded in all their results.

Training rows are lean (:data:`~llamatune.data.funccall_rows.TRAIN_STYLE`): at most one distractor tool, tool results
cut the way the agent cuts them (:func:`llamatune.protocol.cut_tool_result`) at 160 approximate tokens, and a
``--masking`` share (default 0.3) of the rows offered tools with neutral tool and argument names (``func_k``,
``arg_k``; the renaming is kept in the row's ``masked``). Half of the training rows whose tools are exactly an agent
mode's set start with the agent's system prompt (:func:`llamatune.protocol.system_prompt`), and tool results are
wrapped as the agent wraps them, so the fine-tune sees what it will be served. Test rows have no system prompt
(Meta's official format, where the base model over-calls), all distractors and whole results: the test split is the
rows of the five original categories in their original shares (the same rows as before the new categories, for
the same seed and ``n``), then rows of the new categories (ids ``fc-test-new-…``). Train and test never share a
template family; a held-out family is new phrasing of a concept training shows (a clarify reason, a follow-up kind
has a training family too), except near-miss families, held out whole by design. ``--paraphrase-endpoint``
paraphrases *training* user turns with any OpenAI-compatible server (cached in ``DIR/paraphrase_cache.jsonl``); a
paraphrase that drops a slot value (a city, a number) is rejected and the template text kept. The test split is never
paraphrased.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import Counter
from pathlib import Path

from llamatune.data.funccall_rows import (AGENT_SYSTEM_SHARE, CATEGORIES, DEFAULT_PROPORTIONS,  # noqa: F401 (API)
                                          EVAL_STYLE, NEW_CATEGORIES, ORIGINAL_CATEGORIES, ORIGINAL_PROPORTIONS, TRAIN_STYLE,
                                          Style, agent_system_prompt, build_split, category_counts, strip_private,
                                          train_style)
from llamatune.data.funccall_split import family_groups, split_families, split_for  # noqa: F401 (API)

PARAPHRASE_PROMPT = ("Paraphrase the user's message. Keep its meaning, language and every name, place, number and "
                     "unit exactly as written. Reply with the paraphrase only.")


def parse_proportions(text: str) -> dict[str, float]:
    """``"single_call=0.4,no_tool=0.3"`` → dict (for the CLI)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--proportions: expected category=number, got {part!r}") from None
        if not sep:
            raise ValueError(f"--proportions: expected category=number, got {part!r}")
    return out


def held_out_parts(n_test: int, proportions: dict | None) -> tuple[dict, int, dict]:
    """``(original part's proportions, new rows, new part's proportions)`` of a test split of ``n_test`` rows: the
    original categories in their original shares (default) or in ``proportions``' ratios; the new categories get
    ``n_test`` × their share relative to the original ones'."""
    props = dict(DEFAULT_PROPORTIONS if proportions is None else proportions)
    category_counts(1, props)  # checks the names and values
    old = ORIGINAL_PROPORTIONS if proportions is None else {c: v for c, v in props.items() if c in ORIGINAL_CATEGORIES}
    new = {c: v for c, v in props.items() if c in NEW_CATEGORIES and v > 0}
    old_share = sum(v for c, v in props.items() if c in ORIGINAL_CATEGORIES)
    n_new = round(n_test * sum(new.values()) / old_share) if old_share > 0 else n_test
    return (old if sum(old.values()) > 0 else {}), (n_new if new else 0), new


def generate(n: int, seed: int, proportions: dict | None = None, test_fraction: float = 0.2,
             paraphrase_endpoint: str | None = None, paraphrase_model: str | None = None,
             cache_path: str | Path | None = None, masking: float | None = None,
             foreign: float | None = None, val_fraction: float = 0.0,
             breadth: bool = False, pairs: float | None = None) -> tuple[list[dict], list[dict]]:
    """``(train_rows, test_rows)``: ``n - round(n * test_fraction)`` training rows in ``proportions`` (default
    :data:`DEFAULT_PROPORTIONS`), lean and ``masking``-masked (``foreign``: see :func:`train_style`);
    ``round(n * test_fraction)`` test rows of the original categories plus the new categories' test rows
    (:func:`held_out_parts`). With ``paraphrase_endpoint``, training user turns are paraphrased (cached). With
    ``val_fraction``, the training rows leave out the validation fold's families (:func:`split_families`);
    ``breadth=True`` adds the breadth families (:mod:`~llamatune.data.funccall_breadth`) to the training rows;
    ``pairs``: the share of the training clarify rows built as contrastive pairs (:mod:`~llamatune.data.funccall_pairs`)."""
    train, test, _ = _generate(n, seed, proportions, test_fraction, paraphrase_endpoint, paraphrase_model, cache_path,
                               masking, foreign, val_fraction, breadth, pairs)
    return train, test


def _generate(n, seed, proportions, test_fraction, endpoint, model, cache_path, masking=None, foreign=None,
              val_fraction=0.0, breadth=False, pairs=None):
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    n_test = round(n * test_fraction)
    old, n_new, new = held_out_parts(n_test, proportions)
    train = build_split("train", n - n_test, seed, DEFAULT_PROPORTIONS if proportions is None else proportions,
                        test_fraction, train_style(masking, foreign, pairs), val_fraction=val_fraction,
                        breadth=breadth)
    test = build_split("test", n_test, seed, old, test_fraction) if old and n_test else []
    if n_new:
        test += build_split("test", n_new, seed, new, test_fraction, stream="test-new")
    para = None
    if endpoint:
        para = {"model": model or "default", **paraphrase_rows(train, endpoint, model or "default", cache_path)}
    return strip_private(train), strip_private(test), para


# the clarify families of the two reasons the test holds out (an ambiguous place, a missing unit) that no training row
# uses without breadth: the probe of README part 10
PROBE_FAMILIES = ("cl-ambiguous-c", "cl-nounit-c")


def probe_rows(n: int = 48, seed: int = 0) -> list[dict]:
    """``n`` clarify items (the :data:`PROBE_FAMILIES` in turn while each has distinct prompts: the ambiguous places
    give 18; dressed as test rows): does asking back transfer to phrasings the training rows never use? Read beside
    the validation fold, which has no family of these two reasons; only meaningful for a model trained without
    ``breadth``."""
    pool = strip_private(build_split("train", 12 * n, seed, {"clarify": 1}, style=EVAL_STYLE, stream="probe",
                                     breadth=True))
    by_family: dict[str, list[dict]] = {f: [] for f in PROBE_FAMILIES}
    seen = set()
    for r in pool:
        text = r["messages"][-2]["content"]
        if r["template_id"] in by_family and text not in seen:
            seen.add(text)
            fam = r["template_id"]
            by_family[fam].append({**r, "id": r["id"].replace("fc-probe-", f"fc-probe-{fam}-")})
    # the families in turn, while each lasts
    out = [by_family[f][i] for i in range(n) for f in PROBE_FAMILIES if i < len(by_family[f])][:n]
    if len(out) < n:
        raise ValueError(f"probe: only {len(out)} distinct prompts for n={n}")
    return out


# --- paraphrase (optional) -------------------------------------------------------------------------------

def paraphrase_rows(rows: list[dict], endpoint: str, model: str, cache_path: str | Path | None) -> dict:
    """Paraphrase user turns in place through an OpenAI-compatible server; returns counts that describe the
    dataset (user turns, paraphrases used, rejected), the same whatever a cache held. Answers are cached in
    ``cache_path`` (JSONL, keyed by a hash of model and text), so a rerun makes no request."""
    from openai import OpenAI
    from tqdm import tqdm

    from llamatune.jsonl import JsonlCache
    from llamatune.progress import tqdm_disable

    cache = JsonlCache(cache_path) if cache_path else None
    memory: dict[str, str] = {r["key"]: r["paraphrase"] for r in (cache.rows.values() if cache else ())}
    client = OpenAI(base_url=endpoint, api_key=os.environ.get("OPENAI_API_KEY", "not-needed"), max_retries=2)
    stats = {"turns": 0, "used": 0, "rejected": 0}
    asked = 0
    for row in tqdm(rows, desc="paraphrase", disable=tqdm_disable()):
        for m in row["messages"]:
            if m["role"] != "user":
                continue
            text = m["content"]
            stats["turns"] += 1
            key = hashlib.sha256(f"{model}\n{text}".encode()).hexdigest()
            if key not in memory:
                resp = client.chat.completions.create(model=model, temperature=0, max_tokens=200, messages=[
                    {"role": "system", "content": PARAPHRASE_PROMPT}, {"role": "user", "content": text}])
                memory[key] = (resp.choices[0].message.content or "").strip()
                asked += 1
                if cache is not None:
                    cache.add({"key": key, "text": text, "paraphrase": memory[key]})
            new = memory[key]
            if new and len(new) <= 4 * len(text) + 80 and all(k.lower() in new.lower() for k in m.get("_keep", [])):
                m["content"] = new
                stats["used"] += 1
            else:
                stats["rejected"] += 1
    print(f"paraphrase: {asked} requests to {endpoint}, {stats['turns'] - asked} turns from the cache",
          file=sys.stderr)
    return stats


# --- files -----------------------------------------------------------------------------------------------

def target_calls(row: dict) -> list[str]:
    """The real names of the calls a row expects (none, one, or several in parallel; masked names mapped back)."""
    exp = row["expected"]
    real = {m["name"]: name for name, m in (row.get("masked") or {}).items()}
    return [real.get(e["name"], e["name"]) for e in (exp if isinstance(exp, list) else [exp] if exp else [])]


def _card_notes(train: list[dict], test: list[dict], meta: dict) -> str:
    c_tr, c_te = Counter(r["category"] for r in train), Counter(r["category"] for r in test)
    lines = ["## Categories", "", "| category | train | test | total |", "|---|---:|---:|---:|"]
    for c in CATEGORIES:
        lines.append(f"| {c} | {c_tr[c]} | {c_te[c]} | {c_tr[c] + c_te[c]} |")
    lines.append(f"| **all** | {len(train)} | {len(test)} | {len(train) + len(test)} |")
    for name, rows in (("train", train), ("test", test)):
        calls = Counter(c for r in rows for c in target_calls(r))
        lines += ["", f"Target calls in {name}: " + (", ".join(f"{k} {v}" for k, v in sorted(calls.items())) or "none")
                  + f"; no call expected: {sum(1 for r in rows if not r['expected'])}; parallel targets: "
                  f"{sum(isinstance(r['expected'], list) for r in rows)}; masked rows: "
                  f"{sum('masked' in r for r in rows)}."]
    fams = meta["families"]
    lines += ["", f"Template families: {len(fams['train'])} train, {len(fams.get('val', []))} validation, "
              f"{len(fams['test'])} test (none shared). Test families: {', '.join(fams['test'])}."
              + (f" Validation fold (held out of training): {', '.join(fams['val'])}." if fams.get("val") else ""), "",
              f"Proportions: {', '.join(f'{k}={v:g}' for k, v in meta['proportions'].items())}; "
              f"test fraction {meta['test_fraction']:g}; masking {meta['masking']:g}"
              + ("; the breadth families in training" if meta.get("breadth") else "")
              + (f"; contrastive pairs for {meta['pairs']:g} of the clarify rows" if meta.get("pairs") else "")
              + ". Test split: "
              f"{meta['test_parts']['original']} rows of the original categories in their original shares, "
              f"{meta['test_parts']['new']} of the new ones (ids fc-test-new-…).", "",
              f"Paraphrase: {'none' if not meta.get('paraphrase') else json.dumps(meta['paraphrase'])}."]
    if meta.get("lengths"):
        from llamatune.data.lengths import table_markdown

        ln = meta["lengths"]
        lines += ["", "## Tokens per training row", "", f"Rendered by the `{ln['template']}` template, counted by "
                  f"{ln['tokenizer']}; `kept ≤ L`: rows of at most L tokens (the training length limit"
                  + (f" here: {ln['max_length']}" if ln.get("max_length") else "") + ").", "",
                  table_markdown(ln["table"])]
    return "\n".join(lines)


def build_dataset(out: str | Path, n: int, seed: int = 0, proportions: dict | None = None,
                  test_fraction: float = 0.2, paraphrase_endpoint: str | None = None,
                  paraphrase_model: str | None = None, masking: float | None = None, tokenizer=None,
                  template: str | None = None, max_length: int | None = None, foreign: float | None = None,
                  val_fraction: float = 0.0, breadth: bool = False, pairs: float | None = None) -> dict:
    """Generate and write ``train.jsonl``, ``eval.jsonl``, ``card.md``, ``manifest.json`` under ``out``. With
    ``tokenizer`` and ``template``, the card and the manifest (``lengths``) add the training rows' tokens per
    category and the rows kept at 512, 768, 1024 (and ``max_length``) tokens. ``val_fraction`` > 0 holds a
    validation fold of template families out of the training rows (listed in the manifest and the card; the rows of
    the fold are drawn by ``build_split("val", …, val_fraction=…)``, as ``llamatune demo`` does); ``breadth=True``
    adds the breadth families to the training rows; ``pairs``: see :func:`generate`."""
    from llamatune.data.io import content_hash, write_card, write_jsonl, write_manifest
    from llamatune.data.lengths import LIMITS, measure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, test, para = _generate(n, seed, proportions, test_fraction, paraphrase_endpoint, paraphrase_model,
                                  out / "paraphrase_cache.jsonl", masking, foreign, val_fraction, breadth, pairs)
    for r in train + test:
        r["hash"] = content_hash(r["messages"], r["tools"])
    split = split_for(test_fraction, val_fraction, breadth)
    lengths = None
    if tokenizer is not None:
        limits = sorted({*LIMITS, *([max_length] if max_length else [])})
        name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
        lengths = {"template": template, "tokenizer": name, "max_length": max_length,
                   "table": measure(train, tokenizer, template, limits)}
    style = train_style(masking, foreign, pairs)
    meta = {"source": "llamatune.data.funccall (synthetic, offline)", "n": n, "seed": seed,
            "test_fraction": test_fraction, "val_fraction": val_fraction, "breadth": breadth,
            "proportions": dict(DEFAULT_PROPORTIONS if proportions is None else proportions),
            "masking": style.masking, "foreign": style.foreign_share, "pairs": style.pairs,
            "counts": {"train": dict(Counter(r["category"] for r in train)),
                       "test": dict(Counter(r["category"] for r in test))},
            "test_parts": {"original": sum(not r["id"].startswith("fc-test-new-") for r in test),
                           "new": sum(r["id"].startswith("fc-test-new-") for r in test)},
            "families": {s: sorted(f for f, v in split.items() if v == s) for s in ("train", "val", "test")},
            "paraphrase": para, "lengths": lengths,
            "sha256": {"train.jsonl": write_jsonl(out / "train.jsonl", train),
                       "eval.jsonl": write_jsonl(out / "eval.jsonl", test)},
            "ids": {"train": [r["id"] for r in train], "test": [r["id"] for r in test]}}
    write_card(out / "card.md", "Synthetic function-calling dataset",
               f"Generated offline by `llamatune data funccall --n {n} --seed {seed}` from the project's own "
               "templates (`llamatune/data/funccall_templates.py`) and slot values; tool results are fabricated and "
               "final answers grounded in them. Train and test (`eval.jsonl`) are split by template family.",
               {"train": len(train), "test (eval.jsonl)": len(test)}, None, _card_notes(train, test, meta))
    write_manifest(out / "manifest.json", meta)
    return meta


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--n", type=int, default=2000, help="total rows (train + test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--proportions", default=None,
                        help="category=share,... (categories: " + ", ".join(CATEGORIES) + ")")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="hold ~this share of each group's training template families out of training, a "
                             "validation fold to choose settings on (llamatune demo uses 0.2); default 0")
    parser.add_argument("--breadth", action="store_true",
                        help="add the breadth families (added 2026-12-06) to the training rows; default off: the "
                             "validation fold rejected them (README part 9)")
    parser.add_argument("--pairs", type=float, default=None,
                        help="share of the training clarify rows built as contrastive pairs with a single-call row "
                             "(llamatune.data.funccall_pairs); default 0")
    parser.add_argument("--probe", type=int, default=0, metavar="N",
                        help="also write probe.jsonl: N clarify items in phrasings no training row uses (README part 10)")
    parser.add_argument("--masking", type=float, default=None,
                        help=f"share of training rows with neutral tool names (default {TRAIN_STYLE.masking:g})")
    parser.add_argument("--foreign", type=float, default=None,
                        help="share of training rows with distractors that get foreign tools (tools the project does "
                             "not have; 0.4 × it of the single calls ask for one); default 0: tried, worse (README)")
    parser.add_argument("--paraphrase-endpoint", default=None, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--paraphrase-model", default=None)
    parser.add_argument("--tokenizer", default=None,
                        help="a model name or directory whose tokenizer counts tokens per row for the card")
    parser.add_argument("--template", default=None, help="with --tokenizer: the project template rows are rendered by")
    parser.add_argument("--max-length", type=int, default=None, help="with --tokenizer: the training length limit")


def main(args) -> int:
    props = parse_proportions(args.proportions) if args.proportions else None
    tok = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        from llamatune.chat import model_template
        from llamatune.models import resolve_model

        path = resolve_model(args.tokenizer)
        tok = AutoTokenizer.from_pretrained(path)
        args.template = args.template or model_template(path)
    meta = build_dataset(args.out, args.n, args.seed, props, args.test_fraction, args.paraphrase_endpoint,
                         args.paraphrase_model, args.masking, tok, args.template, args.max_length, args.foreign,
                         args.val_fraction, args.breadth, args.pairs)
    if args.probe:
        from llamatune.data.io import write_jsonl

        write_jsonl(Path(args.out) / "probe.jsonl", probe_rows(args.probe, args.seed))
    print((Path(args.out) / "card.md").read_text(encoding="utf-8"))
    print(f"wrote {len(meta['ids']['train'])} train and {len(meta['ids']['test'])} test rows to {args.out}")
    return 0
