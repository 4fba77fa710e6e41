"""The sweep's report: ``sweep.md`` and the selection metric it ranks settings by.

``sweep.md`` (:func:`markdown`) lists every setting, its validation scores with 95% CIs, and its training and
evaluation time, whatever the outcome. Settings rank by :func:`selection_score` (a tie broken by
:func:`selection_key`); a setting trained with several seeds is judged by its mean over them (:func:`by_setting`),
with an exact permutation test over seeds against the best. Running the sweep is :mod:`llamatune.sweep`.
"""

from __future__ import annotations

from llamatune import demo
from llamatune.evals.stats import permutation_test
from llamatune.report import pct_cell as _pct


def selection_score(val: dict) -> float:
    """The sweep's selection metric on validation: the mean of tool-call and irrelevance accuracy."""
    return (val["tool_accuracy"]["value"] + val["irrelevance_accuracy"]["value"]) / 2


def selection_key(val: dict) -> tuple[float, float]:
    """How settings rank on validation: the selection score, a tie broken by overall validation accuracy (two
    training mixes tied on the score to the item, README part 8)."""
    return selection_score(val), val["accuracy"]["value"]


def setting_of(row: dict) -> str:
    """The setting a sweep row belongs to: its ``setting`` (``NAME`` of a ``NAME-seedS`` run), else its name (rows
    written before seeds were)."""
    return row.get("setting") or row["name"]


def by_setting(rows: list[dict]) -> list[dict]:
    """The rows grouped by setting (a run without ``seeds`` is a setting of one seed), in first-seen order: the rows,
    the seeds, each seed's score, their mean, min and max, and the mean validation accuracy."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(setting_of(r), []).append(r)
    out = []
    for name, rs in groups.items():
        scores = [selection_score(r["val"]) for r in rs]
        seeds = [(r.get("set") or {}).get("seed", "recipe's") for r in rs]  # unseeded: the recipe's own seed
        out.append({"setting": name, "rows": rs, "seeds": seeds, "scores": scores,
                    "mean": sum(scores) / len(scores), "min": min(scores), "max": max(scores),
                    "accuracy": sum(r["val"]["accuracy"]["value"] for r in rs) / len(rs)})
    return out


def _category_table(settings: list[dict], rows: list[dict]) -> list[str]:
    """Per category, each setting's items right: the mean over its seeds [min, max], of n items (the categories a
    setting's gap comes from, and whether it holds across seeds)."""
    if not all(r.get("val_categories") for r in rows):
        return []
    cats = sorted({c for r in rows for c in r["val_categories"]})
    out = ["", "| category | n | " + " | ".join(f"{g['setting']}: right, mean [min, max]" for g in settings) + " |",
           "|---|---|" + "---|" * len(settings)]
    for c in cats:
        cells = []
        for g in settings:
            ks = [r["val_categories"].get(c, [0, 0])[0] for r in g["rows"]]
            cells.append(f"{sum(ks) / len(ks):.1f} [{min(ks)}, {max(ks)}]")
        n = next(r["val_categories"][c][1] for r in rows if c in r["val_categories"])
        out.append(f"| {c} | {n} | " + " | ".join(cells) + " |")
    return out


def markdown(rows: list[dict], search: dict | None = None, val_fraction: float = 0) -> str:
    sha = bool(search)
    head = "| setting | model | " + ("rung | " if sha else "") + "steps | recipe changes | val accuracy | " \
        "tool-call acc. | irrelevance acc. | score | calls/turn | train s | eval s |"
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    bases = {}
    for r in rows:
        bases.setdefault(r["model"], r["base_val"])
        change = ", ".join(f"{k}={v}" for k, v in r["set"].items()) or "recipe as is"
        if r.get("max_length", demo.DEFAULTS["max_length"]) != demo.DEFAULTS["max_length"]:
            change += f"; rows ≤ {r['max_length']} tokens"
        if r["mix"]:
            change += "; mix " + ", ".join(f"{k}={v:g}" for k, v in r["mix"].items())
        if r.get("breadth"):
            change += "; breadth families"
        if r.get("pairs"):
            change += f"; contrastive pairs {r['pairs']:g}"
        v = r["val"]
        rung = f"{r['rung']}{' →' if r.get('survived') else ''} | " if sha else ""
        steps = f"{r['steps']}/{r['budget']}" if sha else f"{r['steps']}"
        lines.append(f"| {r['name']} | {r['model']} | {rung}{steps} | {change} | {_pct(v['accuracy'])} | "
                     f"{_pct(v['tool_accuracy'])} | {_pct(v['irrelevance_accuracy'])} | {selection_score(v):.3f} | "
                     f"{v['calls_per_turn']['value']:.2f} | "
                     f"{r['train_seconds']:.0f}{'*' if r.get('resumed') else ''} | "
                     f"{r['eval_seconds']:.0f} |")
    for model, v in bases.items():
        lines.append(f"| *untuned base* | {model} | {'– | ' if sha else ''}0 | – | {_pct(v['accuracy'])} | "
                     f"{_pct(v['tool_accuracy'])} | {_pct(v['irrelevance_accuracy'])} | {selection_score(v):.3f} | "
                     f"{v['calls_per_turn']['value']:.2f} | – | – |")
    n = rows[0]["n_val"] if rows else 0
    final = [r for r in rows if r.get("rung") == len(search["rungs"])] if sha else rows
    best = max(final, key=lambda r: (*selection_key(r["val"]), -r["train_seconds"])) if final else None
    where = (f"the validation fold (template families held out of training, {val_fraction:g} of each group's)"
             if val_fraction else "the training template families")
    lines += ["", f"Validation: {n} items of {where} (Wilson 95% CIs). Score: the mean of "
              "tool-call and irrelevance accuracy (the selection metric; a tie goes to the higher val accuracy)."]
    if sha:
        lines.append(f"Successive halving, eta {search['eta']}: rungs of {', '.join(map(str, search['rungs']))} steps "
                     "(steps shown as trained/budget); → = continued to the next rung.")
    if not sha and any(setting_of(r) != r["name"] for r in rows):  # seeds: a setting by its mean
        settings = by_setting(rows)
        top = max(settings, key=lambda g: (g["mean"], g["accuracy"]))
        lines += ["", f"| setting | seeds | score, mean [min, max] | val accuracy, mean | vs {top['setting']}: "
                  "mean score gap, exact permutation p over seeds |", "|---|---|---|---|---|"]
        for g in settings:
            t = permutation_test(top["scores"], g["scores"])
            gap = "–" if g is top else (f"{t['diff']:+.3f}, p = {t['p_value']:.2f} "
                                        f"(smallest possible {t['min_p']:.2f})")
            lines.append(f"| {g['setting']} | {', '.join(str(x) for x in g['seeds'])} | {g['mean']:.3f} "
                         f"[{g['min']:.3f}, {g['max']:.3f}] | {g['accuracy']:.0%} | {gap} |")
        lines += _category_table(settings, rows)
        lines += ["", f"Best by the mean score over seeds: **{top['setting']}** ({top['mean']:.3f}, "
                  f"{len(top['seeds'])} seed(s)); compare the gap with the spread between one setting's seeds. The "
                  "permutation test treats the seed as the unit that repeats (the McNemar tests of single runs "
                  "compare two models on these items, not two settings)."]
    elif best:
        lines.append(f"Best by the score{' after the last rung' if sha else ''}: **{best['name']}** "
                     f"({selection_score(best['val']):.3f}; accuracy {_pct(best['val']['accuracy'])}).")
    lines.append("Train seconds: the training stage's wall time on 2 cores (a rung: only its own steps); * = resumed "
                 "after an interruption, so only the resumed part.")
    return "\n".join(lines)
