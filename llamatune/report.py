"""Markdown tables and PNG plots built from the results files, so that no result number is typed by hand.

    llamatune report results/                         # writes results/report.md and results/*.png
    llamatune report results/ --readme README.md      # also refreshes the README between the markers

Reads every ``*.json`` under the directory that has a ``kind``: ``toolcall`` and ``toolcall_compare``
(``llamatune eval toolcall``), ``arc`` and ``arc_compare`` (``llamatune eval arc``), ``judge`` (``llamatune eval
judge``), and any other kind generically (a table of its ``aggregate`` metrics). Every metric has one shape,
``{"value", "low", "high", "n"}``, and every comparison one shape, ``{"n", "a", "b", "diff", "mcnemar"}`` with
``diff`` = B − A (:mod:`llamatune.evals.stats`); this module is the one place that formats them (the evaluators
print these tables, ``llamatune demo`` puts a header over them). In the README, the generated part sits between
``<!-- llamatune:report:start -->`` and ``<!-- llamatune:report:end -->``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from llamatune.jsonl import write_text

START, END = "<!-- llamatune:report:start -->", "<!-- llamatune:report:end -->"


def load_results(results_dir: str | Path) -> list[dict]:
    """All results json files with a ``kind`` under ``results_dir`` (sorted by path), each with ``_path``."""
    root = Path(results_dir)
    if not root.exists():
        raise FileNotFoundError(f"results directory not found: {root}")
    out = []
    for p in sorted(root.rglob("*.json")):
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("kind"), str):
            data["_path"] = str(p.relative_to(root))
            out.append(data)
    return out


# --- formatting ---------------------------------------------------------------------------------------------
def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def fmt_ci(value, low, high, digits: int = 3, signed: bool = False) -> str:
    if value is None:
        return "–"
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    if low is None or high is None:
        return f.format(value)
    return f"{f.format(value)} [{f.format(low)}, {f.format(high)}]"


def fmt_p(p) -> str:
    if p is None:
        return "–"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}" if p < 0.01 else f"{p:.3f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    esc = [[str(c).replace("|", "\\|") for c in r] for r in [header] + rows]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(lines)


def metric_cell(m: dict | None, digits: int = 3, signed: bool = False) -> str:
    """``value [low, high]`` of a metric (``–`` when it has no value)."""
    if not isinstance(m, dict):
        return "–"
    return fmt_ci(m.get("value"), m.get("low"), m.get("high"), digits, signed)


def pct_cell(m: dict | None, counts: bool = False, signed: bool = False) -> str:
    """A proportion as ``12% [5, 20]`` (``(k/n)`` with ``counts``); a difference as ``+12 pp [+5, +20]``."""
    if not isinstance(m, dict) or m.get("value") is None:
        return "–"
    f = "{:+.0f}" if signed else "{:.0f}"
    text = f"{f.format(100 * m['value'])}{' pp' if signed else '%'}"
    if m.get("low") is not None:
        text += f" [{f.format(100 * m['low'])}, {f.format(100 * m['high'])}]"
    return text + (f" ({m['k']}/{m['n']})" if counts and "k" in m else "")


def num_cell(m: dict | None) -> str:
    return metric_cell(m, digits=2)


# --- sections -----------------------------------------------------------------------------------------------
TOOLCALL_COLUMNS = {"accuracy": "accuracy", "tool_accuracy": "tool acc.", "argument_accuracy": "arg. acc.",
                    "irrelevance_accuracy": "irrelevance acc.", "format_valid_rate": "format valid",
                    "clarification_rate": "clarification", "calls_per_turn": "LLM calls/turn"}


def toolcall_table(agg: dict) -> str:
    """One ``eval toolcall`` aggregate: a row overall and per category."""
    rows = []
    for name, m in [("**overall**", agg["overall"]), *agg["by_category"].items()]:
        rows.append([name, str(m["n"]), *(num_cell(m[k]) if k == "calls_per_turn" else pct_cell(m[k])
                                          for k in TOOLCALL_COLUMNS)])
    text = table(["", "n", *TOOLCALL_COLUMNS.values()], rows)
    ideal = agg["overall"]["calls_per_turn"].get("ideal")
    if ideal is not None:
        text += f"\n\nLLM calls per turn of a perfect model on these items: {ideal:.2f} (1 per text answer, 2 per call)."
    return text


def comparison_rows(name: str, c: dict) -> list[str]:
    m = c["mcnemar"]
    return [name, str(c["n"]), pct_cell(c["a"]), pct_cell(c["b"]), pct_cell(c["diff"], signed=True),
            f"{m['b01']}/{m['b10']}", fmt_p(m["p_value"])]


COMPARISON_HEADER = ["", "n", "accuracy A", "accuracy B", "B − A [95% CI]", "McNemar b01/b10", "p"]


def comparison_table(res: dict) -> str:
    """A paired comparison (``toolcall_compare`` or ``arc_compare``): overall, then per category if any."""
    rows = [comparison_rows("**overall**", res["overall"])]
    rows += [comparison_rows(cat, c) for cat, c in (res.get("by_category") or {}).items()]
    return table(COMPARISON_HEADER, rows)


def bfcl_table(results: list[dict], names: list[str], summaries: list[str]) -> str:
    """BFCL results (``eval bfcl``): one row per file, accuracy % [95% CI] per category and for each of BFCL's
    ``summaries`` present (non-live / live AST, irrelevance); a first row gives n."""
    def cell(m: dict) -> str:
        if not m or m.get("value") is None:
            return "–"
        return f"{100 * m['value']:.1f} [{100 * m['low']:.1f}, {100 * m['high']:.1f}]"

    cats = list(dict.fromkeys(c for r in results for c in r["summary"]["by_category"]))
    sums = [s for s in summaries if any(r["summary"].get(s, {}).get("n") for r in results)]

    def n_of(key, summary=False):
        ns = {(r["summary"][key] if summary else r["summary"]["by_category"].get(key, {})).get("n") for r in results}
        return str(ns.pop()) if len(ns) == 1 else "/".join(str(n) for n in sorted(ns, key=str))

    rows = [["n", *(n_of(c) for c in cats), *(n_of(s, True) for s in sums)]]
    rows += [[name, *(cell(r["summary"]["by_category"].get(c, {})) for c in cats), *(cell(r["summary"][s]) for s in sums)]
             for r, name in zip(results, names)]
    return table(["model", *cats, *(f"**{s}**" for s in sums)], rows)


def arc_table(results: list[dict]) -> str:
    rows = []
    for r in results:
        for m, v in r["aggregate"].items():
            rows.append([r["name"], r["task"], r.get("backend", ""), fmt(v["n"]), m, metric_cell(v)])
    return table(["model", "task", "backend", "n", "metric", "value [95% CI]"], rows)


def compare_tables(results: list[dict]) -> str:
    """Every comparison file: ``B vs A`` (what, task or metric), then its rows."""
    rows = []
    for r in results:
        what = f"{r['b'].get('model')} vs {r['a'].get('model')}" + (f" ({r['task']}, {r['metric']})" if "task" in r else "")
        rows.append(comparison_rows(what, r["overall"]))
    return table(["B vs A", *COMPARISON_HEADER[1:]], rows)


def judge_table(results: list[dict]) -> str:
    rows = []
    for r in results:
        a = r["aggregate"]
        rows.append([f"{r['a']} vs {r['b']}", r["judge_model"], fmt(a["n"]),
                     f"{a['wins']}/{a['losses']}/{a['ties']}", metric_cell(a.get("win_rate")),
                     metric_cell(a.get("adjusted_win_rate")),
                     fmt_p(a.get("sign_test_p")), fmt(a.get("position_consistency")), fmt(a.get("n_invalid"))])
    return table(["A vs B", "judge", "n", "W/L/T (A)", "win rate [95% CI]", "adj. win rate [95% CI]",
                  "sign test p", "judge consistency", "invalid"], rows)


def generic_table(r: dict) -> str:
    """Aggregate metrics of any results file: one row per metric, CI columns when present."""
    agg = r.get("aggregate") or {}
    rows = []
    for name, v in agg.items():
        if isinstance(v, dict):
            if "value" not in v:
                continue  # a nested breakdown (e.g. a confusion matrix), not a metric
            value, low, high, n, p = v["value"], v.get("low"), v.get("high"), v.get("n"), v.get("p_value")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            value, low, high, n, p = v, None, None, None, None
        else:
            continue
        cell = fmt_ci(value, low, high) if isinstance(value, float) else fmt(value)
        rows.append([name, fmt(n), cell, fmt_p(p) if p is not None else "–"])
    return table(["metric", "n", "value [95% CI]", "p"], rows)


# --- plots --------------------------------------------------------------------------------------------------
def _plot_intervals(labels, values, lows, highs, ref, title, xlabel, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.6 * len(labels) + 1.4))
    y = list(range(len(labels)))
    err = [[v - lo for v, lo in zip(values, lows)], [hi - v for v, hi in zip(values, highs)]]
    ax.errorbar(values, y, xerr=err, fmt="o", capsize=4)
    ax.axvline(ref, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def make_plots(results: list[dict], out: Path) -> list[Path]:
    paths = []
    judges = [r for r in results if r["kind"] == "judge" and r["aggregate"].get("n")]
    if judges:
        a = [r["aggregate"]["adjusted_win_rate"] for r in judges]
        paths.append(_plot_intervals([f"{r['a']} vs {r['b']}" for r in judges], [x["value"] for x in a],
                                     [x["low"] for x in a], [x["high"] for x in a], 0.5,
                                     "Pairwise judge: adjusted win rate of A (95% CI)", "(W + T/2) / n",
                                     out / "judge_win_rates.png"))
    cmps = [r for r in results if r["kind"] in ("arc_compare", "toolcall_compare", "bfcl_compare")]
    if cmps:
        d = [r["overall"]["diff"] for r in cmps]
        paths.append(_plot_intervals([f"{r['b'].get('model')} − {r['a'].get('model')}" +
                                      (f" ({r['task']}, {r['metric']})" if "task" in r else "") for r in cmps],
                                     [x["value"] for x in d], [x["low"] for x in d], [x["high"] for x in d],
                                     0.0, "Accuracy difference (paired bootstrap 95% CI)", "accuracy B − A",
                                     out / "accuracy_differences.png"))
    arcs = [(r, m, v) for r in results if r["kind"] == "arc" for m, v in r["aggregate"].items()]
    if arcs:
        paths.append(_plot_intervals([f"{r['name']} ({r['task']}, {m})" for r, m, _ in arcs],
                                     [v["value"] for *_, v in arcs],
                                     [v["low"] for *_, v in arcs], [v["high"] for *_, v in arcs], 0.25,
                                     "ARC accuracy (Wilson 95% CI; dashed: chance with 4 choices)", "accuracy",
                                     out / "arc_accuracy.png"))
    return paths


# --- the report ---------------------------------------------------------------------------------------------
def build_report(results_dir: str | Path, out: str | Path | None = None, plots: bool = True) -> str:
    """Write ``report.md`` (+ PNGs) for ``results_dir`` into ``out`` (default: the same dir); return the markdown."""
    root = Path(results_dir)
    out = Path(out) if out else root
    results = load_results(root)  # before creating anything: a mistyped directory is an error, not a new folder
    out.mkdir(parents=True, exist_ok=True)
    if not results:
        raise FileNotFoundError(f"{root}: no results files (json with a 'kind') found")
    by_kind: dict[str, list[dict]] = {}
    for r in results:
        by_kind.setdefault(r["kind"], []).append(r)
    parts = [f"_Generated by `llamatune report` from {len(results)} results file(s); do not edit by hand._"]
    if "arc" in by_kind:
        parts += ["### ARC-Challenge", "Cloze `arc_challenge` (acc, acc_norm) and Meta's generative "
                  "`arc_challenge_llama` (exact_match) are different measurements; compare within a task only.",
                  arc_table(by_kind["arc"])]
    if "bfcl" in by_kind:
        rs = by_kind["bfcl"]
        parts += ["### BFCL v4 (AST accuracy, %)", bfcl_table(rs, [r.get("name") or Path(r["_path"]).stem for r in rs],
                                                             ["non_live_ast", "live_ast", "irrelevance"])]
    if "toolcall" in by_kind:
        for r in by_kind["toolcall"]:
            parts += [f"### Tool calls: {r.get('name') or r.get('model') or r['_path']}", toolcall_table(r["aggregate"])]
    cmps = by_kind.get("toolcall_compare", []) + by_kind.get("bfcl_compare", []) + by_kind.get("arc_compare", [])
    if cmps:
        parts += ["### Paired differences", "B − A on the items both share: exact McNemar test on per-item "
                  "correctness (b01: only B right, b10: only A right); paired bootstrap 95% CI.", compare_tables(cmps)]
    if "judge" in by_kind:
        parts += ["### Pairwise LLM judge", "Both orders; a win only when both agree (otherwise a tie). "
                  "Sign test on W vs L, ties excluded.", judge_table(by_kind["judge"])]
    for kind, rs in by_kind.items():
        if kind in ("arc", "arc_compare", "judge", "toolcall", "toolcall_compare", "bfcl", "bfcl_compare"):
            continue
        for r in rs:
            parts += [f"### {kind}: {r.get('name', r['_path'])}", generic_table(r)]
    if plots:
        for p in make_plots(results, out):
            rel = p.relative_to(out) if p.is_relative_to(out) else p
            parts.append(f"![{p.stem}]({rel.as_posix()})")
    md = "\n\n".join(parts) + "\n"
    write_text((out / "report.md"), md)
    return md


def update_readme(readme: str | Path, markdown: str, image_prefix: str = "") -> None:
    """Replace the text between the report markers in ``readme`` (which must already contain both)."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise ValueError(f"{readme}: needs the markers {START} and {END} (in that order) where the tables go")
    if image_prefix:
        markdown = re.sub(r"!\[([^\]]*)\]\(", lambda m: f"![{m.group(1)}]({image_prefix.rstrip('/')}/", markdown)
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    write_text(readme, f"{head}{START}\n{markdown}{END}{tail}")
def add_arguments(parser) -> None:
    parser.add_argument("results_dir", help="directory of results json files (searched recursively)")
    parser.add_argument("--out", help="where report.md and the PNGs go (default: results_dir)")
    parser.add_argument("--readme", help="also replace the marked section of this README")
    parser.add_argument("--no-plots", action="store_true")


def main(args) -> int:
    md = build_report(args.results_dir, args.out, plots=not args.no_plots)
    if args.readme:
        out = Path(args.out or args.results_dir)
        prefix = Path.relative_to(out.resolve(), Path(args.readme).resolve().parent).as_posix() \
            if out.resolve().is_relative_to(Path(args.readme).resolve().parent) else str(out)
        update_readme(args.readme, md, image_prefix=prefix)
    print(md)
    return 0
