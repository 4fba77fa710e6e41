"""Judge-human agreement and Cohen's kappa on a hand-labelled sample of a judge run.

How to label (blind, so that the labeller cannot favour a model or a position):

1. Make a sheet from a finished judge run::

       llamatune eval judge-agreement --make-sheet results/judge-ft-vs-base --n 50 --out human.jsonl

   Each row shows the conversation and two responses, ``response_1`` and ``response_2``, in a random order per
   row; which model is which is kept apart in ``human.key.json`` (do not open it while labelling).
2. For every row, read the conversation and both responses and set ``"label"`` to ``"1"`` or ``"2"`` (the
   better response) or ``"tie"``, using the judge's criteria: follows the instructions, helpful, relevant,
   accurate, detailed enough; length alone is not merit. Leave ``""`` to skip a row. Label them all in one
   sitting if you can, and write down anything you were unsure about in an optional ``"note"``.
3. Score it::

       llamatune eval judge-agreement --labels human.jsonl [--results results/judge-ft-vs-base]

   reports raw agreement (Wilson 95% CI), Cohen's kappa (bootstrap 95% CI) and the confusion matrix, and writes
   ``agreement.json`` (kind ``judge_agreement``) next to the judge results for ``llamatune report``.

A labels file may also carry model-level labels directly: ``{"id": ..., "human": "A" | "B" | "tie"}``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from llamatune.evals import stats
from llamatune.jsonl import iter_jsonl, read_json, write_json

CLASSES = ("A", "B", "tie")


def _judge_result(path: str | Path) -> tuple[dict, Path]:
    path = Path(path)
    if path.is_dir():
        path = path / "judge.json"
    if not path.is_file():
        raise FileNotFoundError(f"judge results not found: {path}")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("kind") != "judge":
        raise ValueError(f"{path}: not a judge results file")
    return data, path


def make_sheet(results: str | Path, out: str | Path, n: int = 50, seed: int = 0) -> Path:
    """A blind labelling sheet of ``n`` random prompts of a judge run, and its key file."""
    data, _ = _judge_result(results)
    rng = random.Random(seed)
    items = [it for it in data["items"] if "answer_a" in it]
    if not items:
        raise ValueError("these judge results carry no answers (rerun the judge with this version)")
    items = rng.sample(items, min(n, len(items)))
    out = Path(out)
    key = {}
    with open(out, "w", encoding="utf-8") as f:
        for it in items:
            flip = rng.random() < 0.5
            key[it["id"]] = "BA" if flip else "AB"
            r1, r2 = (it["answer_b"], it["answer_a"]) if flip else (it["answer_a"], it["answer_b"])
            f.write(json.dumps({"id": it["id"], "conversation": it["messages"], "response_1": r1, "response_2": r2,
                                "label": ""}, ensure_ascii=False) + "\n")
    key_path = out.with_suffix(".key.json")
    write_json(key_path, {"results": str(results), "a": data["a"], "b": data["b"], "order": key}, indent=1)
    return out


def read_labels(path: str | Path) -> dict[str, str]:
    """``{prompt id: "A" | "B" | "tie"}`` (model level) from a labels file; blind labels are un-blinded with the key."""
    path = Path(path)
    key_path = path.with_suffix(".key.json")
    key = json.loads(key_path.read_text())["order"] if key_path.exists() else None
    out = {}
    for i, row in iter_jsonl(path):
        where = f"{path}:{i}"
        if "id" not in row:
            raise ValueError(f"{where}: missing field 'id'")
        pid = str(row["id"])
        if row.get("human"):
            h = str(row["human"]).strip()
            label = {"a": "A", "b": "B", "tie": "tie"}.get(h.lower())
            if label is None:
                raise ValueError(f"{where}: field 'human' must be A, B or tie, got {h!r}")
        elif str(row.get("label", "")).strip():
            lab = str(row["label"]).strip().lower()
            if lab not in ("1", "2", "tie"):
                raise ValueError(f"{where}: field 'label' must be 1, 2 or tie, got {row['label']!r}")
            if key is None or pid not in key:
                raise ValueError(f"{where}: blind label but no key for id {pid!r} in {key_path}")
            label = "tie" if lab == "tie" else {("1", "AB"): "A", ("2", "AB"): "B", ("1", "BA"): "B",
                                                ("2", "BA"): "A"}[(lab, key[pid])]
        else:
            continue  # skipped by the labeller
        out[pid] = label
    return out


def agreement(human: dict[str, str], judge_items: list[dict], n_boot: int = 5000, seed: int = 0) -> dict:
    verdict = {it["id"]: it["verdict"] for it in judge_items}
    ids = [i for i in human if verdict.get(i) is not None]
    if not ids:
        raise ValueError("no labelled prompt has a judge verdict (do the ids match the judge run?)")
    h = [human[i] for i in ids]
    j = [verdict[i] for i in ids]
    k = sum(x == y for x, y in zip(h, j))
    low, high = stats.wilson_ci(k, len(ids))
    kappa = stats.cohen_kappa(h, j)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(ids), len(ids))
        boots.append(stats.cohen_kappa([h[t] for t in idx], [j[t] for t in idx]))
    klo, khi = np.percentile(boots, [2.5, 97.5])
    decided = [(x, y) for x, y in zip(h, j) if x != "tie" and y != "tie"]
    return {
        "agreement": {"value": k / len(ids), "low": low, "high": high, "n": len(ids)},
        "cohen_kappa": {"value": kappa, "low": float(klo), "high": float(khi), "n": len(ids)},
        "agreement_without_ties": {"value": (sum(x == y for x, y in decided) / len(decided)) if decided else None,
                                   "n": len(decided)},
        "confusion": {f"human={a}": {f"judge={b}": sum(x == a and y == b for x, y in zip(h, j)) for b in CLASSES}
                      for a in CLASSES},
        "n_labelled": len(human), "n_without_verdict": len(human) - len(ids),
    }


def add_arguments(parser) -> None:
    parser.add_argument("--labels", help="labels JSONL (blind sheet filled in, or id + human)")
    parser.add_argument("--results", help="judge results dir or judge.json (default: from the sheet's key file)")
    parser.add_argument("--make-sheet", metavar="JUDGE_RESULTS", help="write a blind labelling sheet instead")
    parser.add_argument("--n", type=int, default=50, help="rows in the sheet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="sheet path (--make-sheet) or agreement.json path")


def main(args) -> int:
    if args.make_sheet:
        out = make_sheet(args.make_sheet, args.out or "human.jsonl", n=args.n, seed=args.seed)
        print(f"labelling sheet: {out} (key: {out.with_suffix('.key.json')}); see "
              "`python -c 'import llamatune.evals.agreement as a; print(a.__doc__)'` for how to label")
        return 0
    if not args.labels:
        raise ValueError("--labels FILE (or --make-sheet RESULTS) is required")
    results = args.results
    key_path = Path(args.labels).with_suffix(".key.json")
    if results is None and key_path.exists():
        results = read_json(key_path)["results"]
    if results is None:
        raise ValueError("--results is required (no sheet key file)")
    data, jpath = _judge_result(results)
    agg = agreement(read_labels(args.labels), data["items"])
    res = {"kind": "judge_agreement", "name": f"{data['judge_model']} vs human ({data['a']} vs {data['b']})",
           "judge_model": data["judge_model"], "labels": str(args.labels), "aggregate": agg}
    out = Path(args.out) if args.out else jpath.parent / "agreement.json"
    write_json(out, res, indent=1)
    a, kp = agg["agreement"], agg["cohen_kappa"]
    print(f"judge-human agreement {a['value']:.3f} [{a['low']:.3f}, {a['high']:.3f}] (n={a['n']}); "
          f"Cohen's kappa {kp['value']:.3f} [{kp['low']:.3f}, {kp['high']:.3f}]")
    print(f"written {out}")
    return 0
