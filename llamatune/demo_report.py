"""The demo's report: ``report.md``, ``report.json`` and ``report.png`` from the demo's result files: a header
(what was run, on which CPU) over the tables of :mod:`llamatune.report`, which formats every result.

    python -m llamatune.demo_report runs/demo      # rebuild the report of a finished (or partial) demo

Inputs under the demo directory: ``results/{base,icl,tuned}.json`` (``llamatune eval toolcall`` on the test items
of the original categories) and ``results/new_{base,icl,tuned}.json`` (the new categories: parallel calls, near-miss
tools, injected instructions), ``stages.json`` (seconds per stage), ``base/fidelity.json`` and
``tuned/fidelity.json`` (export), ``tuned/run.json`` (training precision, rows and packs), ``data/demo_data.json``.
``report.json`` holds, for each of ``base``, ``icl`` and ``tuned``, the metrics ``tool_accuracy``,
``irrelevance_accuracy``, ``grounded`` (accuracy on answers after a tool result), ``calls_per_turn`` and
``accuracy`` (value with 95% CI) and ``by_category`` accuracy; ``comparisons`` (McNemar exact p and
paired-bootstrap CI of the accuracy difference, tuned vs base, tuned vs icl, icl vs base); ``new`` (the same for
the new categories); ``training`` (precision, rows per step measured from the trainer's packs, rows seen by
category); ``stage_seconds``; ``fidelity``; ``meta``. ``data/card.md``: the demo's data card (rows generated, kept,
seen by training and mean tokens per category, over the generator's card).
"""

from __future__ import annotations

import sys
from pathlib import Path

from llamatune.jsonl import read_json, write_json, write_text
from llamatune.report import COMPARISON_HEADER, comparison_rows, num_cell, pct_cell, table

SYSTEMS = ("base", "icl", "tuned", "base_constrained", "tuned_constrained")
LABELS = {"base": "base", "icl": "base + ICL", "tuned": "tuned (LoRA)", "base_constrained": "base + constrained",
          "tuned_constrained": "tuned + constrained"}
METRICS = ("accuracy", "tool_accuracy", "irrelevance_accuracy", "format_valid_rate", "calls_per_turn")
PAIRS = (("base", "tuned"), ("icl", "tuned"), ("base", "icl"), ("tuned", "tuned_constrained"),
         ("base", "base_constrained"))
GROUNDED = "tool_result"  # the category whose target is an answer grounded in the tool result just returned


def _metric(m: dict) -> dict:
    return {k: m.get(k) for k in ("value", "low", "high", "k", "n", "ideal") if k in m}


def summarize(results: dict[str, dict]) -> dict:
    """Per system: the headline metrics (with CIs) and accuracy per category, from ``eval toolcall`` results."""
    out = {}
    for name, r in results.items():
        agg = r["aggregate"]
        out[name] = {**{k: _metric(agg["overall"][k]) for k in METRICS},
                     "grounded": _metric(agg["by_category"][GROUNDED]["accuracy"]) if GROUNDED in agg["by_category"]
                     else {},
                     "by_category": {c: _metric(m["accuracy"]) for c, m in agg["by_category"].items()},
                     "model": r.get("model"), "icl": r.get("icl"), "n": agg["overall"]["n"],
                     "decode_batch": r.get("decode_batch"), "reused": r.get("reused")}
    return out


def training(out: Path, meta: dict) -> dict:
    """What the fine-tune saw, from ``tuned/run.json`` (the trainer's own count of packed sequences) and the data
    stage's table: precision, rows/step = kept rows ÷ packs × sequences a step, rows seen per category."""
    from llamatune.data.lengths import seen_by_training

    run = read_json(out / "tuned" / "run.json", {})
    data, table = run.get("data") or {}, meta.get("by_category")
    rows, seqs = data.get("train_rows"), data.get("train_sequences") or meta.get("n_packs")
    batch, steps = run.get("effective_batch_size"), run.get("global_step") or meta.get("steps")
    info = {"precision": run.get("precision"), "rows": rows, "sequences": seqs, "sequences_per_step": batch,
            "steps": steps, "wall_seconds": run.get("wall_seconds"),
            "measured_by": "tuned/run.json train_sequences" if data.get("train_sequences") else "data stage packs"}
    if rows and seqs and batch and steps and table and meta.get("max_length"):
        info["rows_per_step"] = round(rows / seqs * batch, 2)
        info["epochs"] = round(steps * batch / seqs, 2)
        info["seen"] = seen_by_training(table, int(meta["max_length"]), int(steps), int(batch), packed=True,
                                        sequences=int(seqs))
    return info


def _training_lines(report: dict) -> list[str]:
    from llamatune.data.lengths import table_markdown

    meta, tr = report.get("meta", {}), report.get("training") or {}
    if not meta.get("by_category"):
        return []
    lines = ["", f"## Training rows by category (limit {meta.get('max_length')} tokens)", ""]
    if meta.get("mix"):
        lines += ["Category shares of the generated training rows (the demo model's mix, chosen on the validation "
                  "fold): " + ", ".join(f"{k} {v:g}" for k, v in meta["mix"].items()) + ".", ""]
    if "breadth" in meta:
        lines += [("Template families: all training families, the breadth families of part 9 included." if
                   meta["breadth"] else "Template families: those of parts 6-8 (the breadth families of part 9 left "
                   "out)."), ""]
    if meta.get("pairs"):
        lines += [f"Contrastive pairs (part 10): {meta['pairs']:g} of the clarify rows are questions paired with a "
                  "single-call row of the same phrasing and tools.", ""]
    if tr.get("rows_per_step"):
        lines += [f"{tr['rows']} rows kept, packed into {tr['sequences']} sequences of ≤ {meta.get('max_length')} "
                  f"tokens ({tr['measured_by']}); {tr['sequences_per_step']} sequences a step = "
                  f"**{tr['rows_per_step']:.1f} rows a step**; {tr['steps']} steps = {tr['epochs']:.2f} epochs, "
                  f"**{tr['seen']['all']['distinct']} distinct rows seen** ({tr['seen']['all']['seen']} "
                  "presentations). Seen by training: expected, each category in its kept share.", ""]
    return lines + [table_markdown(meta["by_category"], tr.get("seen"))]


def _precision(tr: dict) -> str:
    p = tr.get("precision")
    if isinstance(p, dict):
        return f"{p.get('compute', '?')} ({p.get('reason') or p.get('chosen_by', '')})"
    return str(p or "?")


def _pct(m: dict | None) -> str:
    return pct_cell(m, counts=True)


def _reused(report: dict, systems: list[str]) -> str:
    kept = [f"{LABELS[s]} {report[s]['reused']} of {report[s]['n']}" for s in systems if report[s].get("reused") is not None]
    return (" Items whose raw output opened no call keep it, as the lazy grammar would not have acted on it ("
            + ", ".join(kept) + "); the rest were decoded again.") if kept else ""


def markdown(report: dict) -> str:
    systems = [s for s in SYSTEMS if s in report]
    meta = report.get("meta", {})
    cpu = meta.get("cpu") or {}
    lines = [f"# `llamatune demo`: {meta.get('model_label') or meta.get('model', 'the embedded model')}, LoRA on the "
             "FuncCall set, evaluated on held-out tool-use prompts", "",
             f"Test items: {meta.get('n_test', '?')} distinct prompts (stratified, held-out template families, none "
             f"equal to a training prompt); LoRA steps: {meta.get('steps', '?')}; ICL examples: {meta.get('icl', '?')}; "
             f"greedy, GGUF {meta.get('quant', 'q8_0')}, {meta.get('threads', '?')} threads, ≤ {meta.get('max_tokens', '?')} new tokens. "
             "95% CIs: Wilson (proportions), bootstrap (calls per turn).", "",
             f"Measured on: {cpu.get('model', '?')} ({cpu.get('vendor', '?')}, {cpu.get('logical_cpus', '?')} logical "
             f"CPUs, {'/'.join(cpu.get('simd') or []) or 'no SIMD flags read'}). Training precision: "
             f"{_precision(report.get('training') or {})}. Decode batch: {meta.get('decode_batch', '?')} sequences "
             "decoded together by every evaluation. Greedy decoding and seeded training "
             "repeat exactly on one machine; another CPU runs other kernels (AVX2 vs AVX-512/AMX), and a 135M-270M "
             "model can flip a few items on that rounding.", "",
             table(["system", "accuracy", "tool-call accuracy", "irrelevance accuracy",
                    "grounded answers after a tool result", "well-formed outputs", "LLM calls / turn"],
                   [[LABELS[s], _pct(report[s]["accuracy"]), _pct(report[s]["tool_accuracy"]),
                     _pct(report[s]["irrelevance_accuracy"]), _pct(report[s].get("grounded") or None),
                     _pct(report[s].get("format_valid_rate") or None),
                     num_cell(report[s]["calls_per_turn"])] for s in systems]),
             "", "Irrelevance accuracy: no call where none is needed (after a tool result included); grounded: "
             f"the `{GROUNDED}` items, a text answer that repeats a value of the tool result; well-formed: text, or "
             "calls that parse. \"+ constrained\": the same model with its calls "
             "decoded under the offered tools' lazy grammar (free text until the call opener; a serving feature, so "
             "the raw rows are the model's quality)." + _reused(report, systems)]
    ideal = next((report[s]["calls_per_turn"].get("ideal") for s in systems if report[s]["calls_per_turn"].get("ideal")), None)
    if ideal:
        lines += ["", f"A perfect model would spend {ideal:.2f} LLM calls per turn on these items (1 per text answer, 2 per call)."]
    cats = sorted({c for s in systems for c in report[s]["by_category"]})
    lines += ["", "## Accuracy per category", "",
              table(["category", *(LABELS[s] for s in systems)],
                    [[c, *(_pct(report[s]["by_category"].get(c)) for s in systems)] for c in cats])]
    if report.get("comparisons"):
        lines += ["", "## Paired comparisons (same items)", "",
                  table(["B vs A", *COMPARISON_HEADER[1:]],
                        [comparison_rows(key, c) for key, c in report["comparisons"].items()])]
    new = report.get("new") or {}
    nsys = [s for s in SYSTEMS if s in new.get("systems", {})]
    if nsys:
        ns = new["systems"]
        ncats = sorted({c for s in nsys for c in ns[s]["by_category"]})
        lines += ["", f"## New categories ({meta.get('n_test_new', '?')} test items: parallel calls, near-miss tools, "
                  "injected instructions in a tool result; held-out template families)", "",
                  table(["category", *(LABELS[s] for s in nsys)],
                        [[c, *(_pct(ns[s]["by_category"].get(c)) for s in nsys)] for c in ncats]
                        + [["**all**", *(_pct(ns[s]["accuracy"]) for s in nsys)],
                           ["tool-call accuracy", *(_pct(ns[s]["tool_accuracy"]) for s in nsys)],
                           ["irrelevance accuracy", *(_pct(ns[s]["irrelevance_accuracy"]) for s in nsys)]])]
        if new.get("comparisons"):
            lines += ["", table(["B vs A (new categories)", *COMPARISON_HEADER[1:]],
                                [comparison_rows(key, c) for key, c in new["comparisons"].items()])]
    lines += _training_lines(report)
    if report.get("fidelity"):
        lines += ["", f"## GGUF fidelity (each exported quant vs the HF model; evaluated and served: "
                  f"{meta.get('quant', 'q8_0')})", ""]
        for name, f in report["fidelity"].items():
            lines.append(f"- {name}: {'all checks passed' if f['pass'] else 'FAILED: ' + '; '.join(f['failures'])}")
    if report.get("stage_seconds"):
        secs = report["stage_seconds"]
        lines += ["", "## Wall time per stage (seconds)", "", "| " + " | ".join(secs) + " | total |",
                  "|---" * (len(secs) + 1) + "|", "| " + " | ".join(f"{v:.0f}" for v in secs.values()) +
                  f" | {sum(secs.values()):.0f} |"]
    lines += ["", "![accuracy per category](report.png)", ""]
    return "\n".join(lines)


def plot(report: dict, path: str | Path) -> Path:
    """Grouped bars of accuracy per category (and overall) with 95% CIs, plus calls per turn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    systems = [s for s in SYSTEMS if s in report]
    cats = ["overall", *sorted({c for s in systems for c in report[s]["by_category"]})]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [4, 1]})
    width = 0.8 / max(1, len(systems))
    for i, s in enumerate(systems):
        ms = [report[s]["accuracy"] if c == "overall" else report[s]["by_category"].get(c, {}) for c in cats]
        vals = np.array([m.get("value") or 0.0 for m in ms])
        lo = np.array([(m.get("value") or 0) - (m.get("low") or 0) for m in ms])
        hi = np.array([(m.get("high") or 0) - (m.get("value") or 0) for m in ms])
        ax.bar(np.arange(len(cats)) + (i - (len(systems) - 1) / 2) * width, vals, width, yerr=[lo, hi], capsize=3,
               label=LABELS[s])
        cpt = report[s]["calls_per_turn"]
        if cpt.get("value") is not None:
            ax2.bar(i, cpt["value"], yerr=[[cpt["value"] - cpt["low"]], [cpt["high"] - cpt["value"]]], capsize=3,
                    color=f"C{i}")
    ax.set_xticks(range(len(cats)), cats, rotation=15)
    ax.set_ylim(0, 1.3)  # room above the bars for the legend, which covered them at the top left
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("accuracy (95% CI)")
    ax.legend(loc="upper center", ncol=len(systems), fontsize="small", frameon=False)
    ax.set_title("held-out tool-use prompts")
    ax2.set_xticks(range(len(systems)), [LABELS[s] for s in systems], rotation=30, ha="right")
    ax2.set_title("LLM calls per turn")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def build(out: str | Path, meta: dict | None = None) -> dict:
    """The report dict from the demo directory's files (systems whose results are missing are left out)."""
    from llamatune.evals.toolcall import compare

    out = Path(out)
    res = out / "results"
    results = {s: read_json(res / f"{s}.json") for s in SYSTEMS if (res / f"{s}.json").exists()}
    if not results:
        raise FileNotFoundError(f"{res}: no results/{{base,icl,tuned}}.json to report")
    report = summarize(results)
    report["comparisons"] = {f"{b} vs {a}": compare(res / f"{a}.json", res / f"{b}.json")["overall"]
                             for a, b in PAIRS if a in results and b in results}
    new = {s: read_json(res / f"new_{s}.json") for s in SYSTEMS if (res / f"new_{s}.json").exists()}
    if new:
        report["new"] = {"systems": summarize(new),
                         "comparisons": {f"{b} vs {a}": compare(res / f"new_{a}.json", res / f"new_{b}.json")["overall"]
                                         for a, b in PAIRS if a in new and b in new}}
    stages = out / "stages.json"
    report["stage_seconds"] = read_json(stages) if stages.exists() else {}
    report["fidelity"] = {}
    for name, d in (("base", out / "base"), ("tuned", out / "tuned")):
        if (d / "fidelity.json").exists():
            reps = read_json(d / "fidelity.json").get("reports", {})
            fails = [f"{q}: {x}" for q, r in reps.items() for x in r.get("failures", [])]
            served = (meta or {}).get("quant")
            report["fidelity"][name] = {"pass": not fails, "failures": fails, "quants": sorted(reps), "served": served,
                                        "served_pass": served in reps and not reps[served].get("failures")}
    data = out / "data" / "demo_data.json"
    report["meta"] = {**({k: v for k, v in read_json(data).items() if not k.endswith("_ids")}
                         if data.exists() else {}), **(meta or {})}
    report["training"] = training(out, report["meta"])
    return report


def data_card(out: Path, report: dict) -> str:
    """The demo's data card: what the fine-tune trained on (rows generated, kept, seen and mean tokens per
    category), over the generator's own card (``data/full/card.md``)."""
    lines = ["# The demo's training data", ""]
    lines += [ln for ln in _training_lines(report)[3:]] if _training_lines(report) else ["(no data table yet)"]
    full = out / "data" / "full" / "card.md"
    if full.exists():
        lines += ["", "---", "", full.read_text(encoding="utf-8")]
    return "\n".join(lines) + "\n"


def write_report(out: str | Path, meta: dict | None = None) -> dict:
    """Write ``report.json``, ``report.png`` and ``report.md`` under ``out``; return the report dict."""
    out = Path(out)
    report = build(out, meta)
    write_json((out / "report.json"), report, indent=1)
    plot(report, out / "report.png")
    write_text((out / "report.md"), markdown(report))
    if (out / "data").is_dir():
        write_text(out / "data" / "card.md", data_card(out, report))
    return report


if __name__ == "__main__":
    write_report(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")
    print((Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo") / "report.md").read_text())
