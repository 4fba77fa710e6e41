"""Does the project's BFCL scorer agree with BFCL's own checker on the same raw outputs?

Runs only inside the isolated environment ``.venv-bfcl`` (``make bfcl-agreement``: CPU torch, then
``bfcl-eval==2026.3.23`` with its own pins, plus ``soundfile``, which ``qwen-agent`` imports and
``bfcl-eval``'s dependencies do not install). The repo is on ``PYTHONPATH`` for the project's parser and scorer
(standard library only; no llamatune dependency is imported here).

    .venv-bfcl/bin/python bench/bfcl_agreement.py results/bfcl/base.json results/bfcl/tuned.json \
        --out bench/bfcl_agreement.json --md bench/bfcl_agreement.md

For every item of every results file (``llamatune eval bfcl``), with BFCL's prompt entry and possible answer read
from the *installed* ``bfcl_eval`` package (not from the project's cached wheel):

* **ours**: :func:`llamatune.evals.bfcl_score.score_output` on the raw output, the row converted by
  :func:`llamatune.evals.bfcl_data.convert_row` (rescored now, so a results file from older code is not trusted);
* **checker** (the agreement the issue asks for): BFCL's ``ast_checker`` (AST categories) or BFCL's relevance rule
  (``is_empty_output``: irrelevance categories) on the calls the project's parser read from the output, as
  ``[{name: arguments}]``, with the model config ``gpt-4o-2024-11-20-FC`` (an OpenAI-style FC model: ``.`` in
  names becomes ``_``, the conversion the project applies);
* **end to end**: the same, but the raw output decoded by BFCL's own decoder for this call format, the Llama 3.1
  FC handler's ``decode_ast`` (``{"name", "parameters"}`` JSON), so parser differences show too.

Writes the agreement JSON and a markdown report listing every disagreement with its cause.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import bfcl_eval  # noqa: E402
from bfcl_eval.constants.enums import Language  # noqa: E402
from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker  # noqa: E402
from bfcl_eval.model_handler.local_inference.llama_3_1 import LlamaHandler_3_1  # noqa: E402
from bfcl_eval.utils import is_empty_output, is_function_calling_format_output  # noqa: E402

from llamatune.evals.bfcl_data import IRRELEVANCE_CATEGORIES, VERSION, convert_row  # noqa: E402
from llamatune.evals.bfcl_score import score_output  # noqa: E402
from llamatune.toolcall import parse_output  # noqa: E402

MODEL = "gpt-4o-2024-11-20-FC"
DATA = Path(bfcl_eval.__file__).parent / "data"
_LLAMA = object.__new__(LlamaHandler_3_1)  # decode_ast uses no state; __init__ would build an API client


def _jsonl(path: Path) -> dict[str, dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return {r["id"]: r for r in (json.loads(line) for line in lines if line.strip())}


def bfcl_data(category: str):
    prompts = _jsonl(DATA / f"BFCL_v4_{category}.json")
    answers = {} if category in IRRELEVANCE_CATEGORIES else \
        _jsonl(DATA / "possible_answer" / f"BFCL_v4_{category}.json")
    return prompts, answers


def bfcl_verdict(decoded, decode_error, entry: dict, answer: dict | None, category: str) -> dict:
    """BFCL's verdict on a decoded output, as ``eval_runner`` reaches it (relevance rule or AST checker)."""
    if category in IRRELEVANCE_CATEGORIES:
        called = decode_error is None and not is_empty_output(decoded)
        return {"valid": not called, "error_type": "irrelevance_error:decoder_success" if called else None}
    if decode_error is not None:
        return {"valid": False, "error_type": "ast_decoder:decoder_failed", "error": decode_error}
    if not is_function_calling_format_output(decoded):
        return {"valid": False, "error_type": "ast_decoder:decoder_wrong_output_format"}
    try:
        r = ast_checker(entry["function"], decoded, answer["ground_truth"], Language.PYTHON, category, MODEL)
    except Exception as exc:  # noqa: BLE001 - a checker crash is a finding, not a reason to stop
        return {"valid": False, "error_type": "checker_exception", "error": f"{type(exc).__name__}: {exc}"}
    return {"valid": bool(r["valid"]), "error_type": r.get("error_type"), "error": r.get("error")}


def decode_ours(output: str):
    parsed = parse_output(output)
    if not parsed.calls:
        return None, parsed.error or "no call"
    return [{c.name: c.arguments} for c in parsed.calls], None


def decode_bfcl(output: str):
    try:
        return _LLAMA.decode_ast(output, Language.PYTHON, False), None
    except Exception as exc:  # noqa: BLE001 - BFCL counts any decoder exception as "no valid call"
        return None, f"{type(exc).__name__}: {str(exc)[:120]}"


def cause(kind: str, out: str, ours: dict, bfcl: dict) -> str:
    """The reason a disagreement happens, by rule (the report shows the evidence next to it)."""
    text = out.strip()
    if kind == "end_to_end":
        if ours["correct"] == bfcl["valid"]:
            return ""
        body = text.replace("<|python_tag|>", "")
        if any(w in body for w in ("true", "false", "null")) and bfcl.get("error_type") == "ast_decoder:decoder_failed":
            return "decoder: BFCL's Llama 3.1 decoder eval()s the text as Python, so JSON true/false/null fail"
        if re.match(r"^\[?\s*[A-Za-z_][\w.]*\s*\(", body.strip()):
            return "decoder: the project's parser reads pythonic calls f(a=1), BFCL's Llama 3.1 JSON decoder does not"
        if text.startswith("```"):
            return "decoder: the project's parser strips a ```json fence, BFCL's decoder does not"
        if "arguments" in text and '"parameters"' not in text:
            return "decoder: the project's parser accepts \"arguments\" for \"parameters\", BFCL's Llama decoder not"
        if bfcl.get("error_type") == "ast_decoder:decoder_failed":
            return "decoder: BFCL's decoder fails where the project's parser reads a call"
        return "decoder: the two decoders read different calls"
    return "scorer: unexplained (see the evidence)"


def agreement(paths: list[str]) -> dict:
    cache: dict[str, tuple] = {}
    rows = []
    for path in paths:
        res = json.loads(Path(path).read_text(encoding="utf-8"))
        for item in res["items"]:
            cat = item["category"]
            if cat not in cache:
                cache[cat] = bfcl_data(cat)
            prompts, answers = cache[cat]
            entry, answer = prompts[item["id"]], answers.get(item["id"])
            row = convert_row({**entry, "ground_truth": answer["ground_truth"] if answer else None}, cat)
            out = item["output"]
            ours = score_output(out, row["expected"], row["tools"], cat)
            checker = bfcl_verdict(*decode_ours(out), entry, answer, cat)
            e2e = bfcl_verdict(*decode_bfcl(out), entry, answer, cat)
            rows.append({"file": path, "model": res.get("model"), "icl": res.get("icl"), "id": item["id"],
                         "category": cat, "output": out, "ours": ours["correct"], "ours_reason": ours["reason"],
                         "recorded": item["correct"], "checker": checker, "end_to_end": e2e,
                         "variant": item.get("variant")})
    return summarize(rows)


def _rate(rows, key):
    agree = sum(r["ours"] == r[key]["valid"] for r in rows)
    return {"agree": agree, "n": len(rows), "rate": agree / len(rows) if rows else None}


def summarize(rows: list[dict]) -> dict:
    files = list(dict.fromkeys(r["file"] for r in rows))
    out = {"bfcl_eval": getattr(bfcl_eval, "__version__", VERSION), "checker_model_config": MODEL, "n": len(rows),
           "checker": _rate(rows, "checker"), "end_to_end": _rate(rows, "end_to_end"),
           "stale_recorded_verdicts": sum(r["ours"] != r["recorded"] for r in rows),
           "by_file": {f: {"model": next(r["model"] for r in rows if r["file"] == f),
                           "ours_correct": sum(r["ours"] for r in rows if r["file"] == f),
                           "checker": _rate([r for r in rows if r["file"] == f], "checker"),
                           "end_to_end": _rate([r for r in rows if r["file"] == f], "end_to_end")} for f in files},
           "by_category": {c: {"checker": _rate([r for r in rows if r["category"] == c], "checker"),
                               "end_to_end": _rate([r for r in rows if r["category"] == c], "end_to_end")}
                           for c in dict.fromkeys(r["category"] for r in rows)},
           "disagreements": []}
    for r in rows:
        for kind in ("checker", "end_to_end"):
            if r["ours"] != r[kind]["valid"]:
                out["disagreements"].append({"kind": kind, "file": r["file"], "id": r["id"], "variant": r["variant"],
                                             "category": r["category"],
                                             "ours": r["ours"], "ours_reason": r["ours_reason"], "bfcl": r[kind],
                                             "output": r["output"][:400],
                                             "cause": cause(kind, r["output"], {"correct": r["ours"]}, r[kind])})
    out["causes"] = dict(Counter(f"{d['kind']}: {d['cause']}" for d in out["disagreements"]))
    return out


def markdown(res: dict) -> str:
    c, e = res["checker"], res["end_to_end"]
    lines = [f"# BFCL agreement: the project's scorer vs `bfcl_eval` {res['bfcl_eval']}'s checker", "",
             "Generated by `make bfcl-agreement` (`bench/bfcl_agreement.py`); do not edit by hand.", "",
             f"- **Checker agreement** (BFCL's `ast_checker` / relevance rule on the calls the project's parser read): "
             f"**{c['agree']}/{c['n']} = {100 * c['rate']:.2f}%**",
             f"- **End-to-end agreement** (the raw output decoded by BFCL's Llama 3.1 FC decoder instead): "
             f"{e['agree']}/{e['n']} = {100 * e['rate']:.2f}%",
             "- results files whose recorded verdict differs from a rescoring now: "
             f"{res['stale_recorded_verdicts']}", "",
             "| results file | model | n | right (ours) | checker agreement | end-to-end agreement |",
             "|---|---|---|---|---|---|"]
    for f, v in res["by_file"].items():
        lines.append(f"| `{f}` | `{Path(str(v['model'])).name}` | {v['checker']['n']} | {v['ours_correct']} | "
                     f"{100 * v['checker']['rate']:.2f}% | {100 * v['end_to_end']['rate']:.2f}% |")
    lines += ["", "| category | n | checker agreement | end-to-end agreement |", "|---|---|---|---|"]
    for cat, v in res["by_category"].items():
        lines.append(f"| {cat} | {v['checker']['n']} | {100 * v['checker']['rate']:.2f}% | "
                     f"{100 * v['end_to_end']['rate']:.2f}% |")
    lines += ["", f"## Every disagreement ({len(res['disagreements'])})", ""]
    if not res["disagreements"]:
        lines.append("None: on every item both checkers gave the same verdict.")
    if res["causes"]:
        lines += ["| cause | count |", "|---|---|", *(f"| {k} | {n} |" for k, n in res["causes"].items()), ""]
    for d in res["disagreements"]:
        b = d["bfcl"]
        variant = f" {d['variant']}" if d.get("variant") else ""
        lines += [f"- **{d['kind']}** `{d['id']}`{variant} ({Path(d['file']).stem}): "
                  f"ours {'correct' if d['ours'] else 'wrong'} "
                  f"(`{d['ours_reason'][:160]}`), BFCL {'correct' if b['valid'] else 'wrong'} "
                  f"(`{b.get('error_type')}`{': ' + str(b.get('error'))[:160] if b.get('error') else ''}). "
                  f"Cause: {d['cause']}", f"  - output: `{d['output'][:240]!r}`"]
    return "\n".join(lines) + "\n"


def write_readme(path: str, res: dict, md: str) -> None:
    """The summary lines of the report, between ``<!-- bfcl-agreement:begin -->`` and its end marker."""
    begin, end = "<!-- bfcl-agreement:begin -->", "<!-- bfcl-agreement:end -->"
    c, e = res["checker"], res["end_to_end"]
    per = "; ".join(f"{Path(f).stem}: {v['checker']['agree']}/{v['checker']['n']}" for f, v in res["by_file"].items())
    text = (f"Checker agreement **{c['agree']}/{c['n']} = {100 * c['rate']:.2f}%** of the items ({per}); end to end "
            f"(BFCL's Llama 3.1 FC decoder on the raw text instead of the project's parser) {e['agree']}/{e['n']} = "
            f"{100 * e['rate']:.2f}%; {len(res['disagreements'])} disagreements, each listed in [{md}]({md}).")
    doc = Path(path).read_text(encoding="utf-8")
    i, j = doc.find(begin), doc.find(end)
    if i < 0 or j < i:
        raise SystemExit(f"{path}: no {begin} ... {end} block")
    Path(path).write_text(doc[: i + len(begin)] + "\n" + text + "\n" + doc[j:], encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", help="results JSON files of `llamatune eval bfcl`")
    ap.add_argument("--out", default="bench/bfcl_agreement.json")
    ap.add_argument("--md", default="bench/bfcl_agreement.md")
    ap.add_argument("--readme", default=None, help="also write the summary into this file's bfcl-agreement block")
    ap.add_argument("--min-rate", type=float, default=0.99, help="exit 1 when checker agreement is below this")
    args = ap.parse_args(argv)
    res = agreement(args.results)
    Path(args.out).write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    Path(args.md).write_text(markdown(res), encoding="utf-8")
    if args.readme:
        write_readme(args.readme, res, args.md)
    print(json.dumps({k: res[k] for k in ("n", "checker", "end_to_end", "causes")}))
    return 0 if res["checker"]["rate"] is not None and res["checker"]["rate"] >= args.min_rate else 1


if __name__ == "__main__":
    sys.exit(main())
