"""Synthetic raw outputs on every BFCL row, to test the project's BFCL scorer against BFCL's checker far beyond
what a small model writes: for each row the ground-truth call and systematic edits of it (each other accepted
value, an argument dropped, a value changed, a type changed, an extra argument, a wrong name, parallel calls
reordered or one left out, prose for irrelevance and a call for it).

    PYTHONPATH=. python bench/bfcl_synthetic.py --out results/bfcl/synthetic.json
    .venv-bfcl/bin/python bench/bfcl_agreement.py results/bfcl/synthetic.json --out ... --md ...

Writes a results-like file (``items`` with BFCL's ``id``, the ``variant``, ``category``, ``output``, ``correct``;
several items share an id); the agreement runner rescores them. Not part of a model's results.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from llamatune.evals.bfcl_data import SUPPORTED, load_rows
from llamatune.evals.bfcl_score import score_output


def _dump(calls: list[tuple[str, dict]], as_list: bool) -> str:
    objs = [{"name": n, "parameters": a} for n, a in calls]
    return json.dumps(objs if as_list or len(objs) != 1 else objs[0], ensure_ascii=False)


def _edits(args: dict, want: dict):
    """(label, arguments) variants of one call."""
    yield "gold", args
    for a, vals in want["possible"].items():
        for k, v in enumerate([v for v in vals if v != ""][1:3]):
            yield f"alt:{a}:{k}", {**args, a: v}
        if a in args:
            yield f"drop:{a}", {k: v for k, v in args.items() if k != a}
    for a, v in list(args.items())[:3]:
        if isinstance(v, bool):
            yield f"bool_int:{a}", {**args, a: int(v)}
        elif isinstance(v, int):
            yield f"int_str:{a}", {**args, a: str(v)}
            yield f"int_float:{a}", {**args, a: float(v)}
            yield f"int_plus:{a}", {**args, a: v + 1}
        elif isinstance(v, float):
            if v.is_integer():
                yield f"float_int:{a}", {**args, a: int(v)}
            yield f"float_str:{a}", {**args, a: str(v)}
        elif isinstance(v, str):
            yield f"str_upper:{a}", {**args, a: v.upper()}
            yield f"str_nospace:{a}", {**args, a: v.replace(" ", "")}
            yield f"str_other:{a}", {**args, a: v + " x"}
        elif isinstance(v, list):
            yield f"list_rev:{a}", {**args, a: list(reversed(v))}
            yield f"list_drop:{a}", {**args, a: v[:-1]}
            yield f"list_str:{a}", {**args, a: json.dumps(v)}
        elif isinstance(v, dict) and v:
            k0 = next(iter(v))
            yield f"dict_drop:{a}", {**args, a: {k: x for k, x in v.items() if k != k0}}
            yield f"dict_extra:{a}", {**args, a: {**v, "zz_extra": 1}}
    yield "extra_arg", {**args, "zz_extra": 1}


def variants(row: dict):
    exp = row["expected"]
    if exp is None:
        name = row["tools"][0]["function"]["name"] if row["tools"] else "some_function"
        yield "prose", "I cannot do that with these functions."
        yield "call", _dump([(name, {})], False)
        yield "malformed", '{"name": "' + name + '", "parameters": {'
        return
    wants = exp if isinstance(exp, list) else [exp]
    gold = [(w["name"], copy.deepcopy(w["arguments"])) for w in wants]
    for i, w in enumerate(wants[:2]):
        for label, args in _edits(gold[i][1], w):
            calls = list(gold)
            calls[i] = (w["name"], args)
            yield f"{i}:{label}", _dump(calls, len(wants) > 1)
    yield "wrong_name", _dump([(n + "_x", a) for n, a in gold], len(wants) > 1)
    yield "prose", "Sure, here is the answer."
    if len(wants) > 1:
        yield "reversed", _dump(list(reversed(gold)), True)
        yield "one_less", _dump(gold[:-1], True)
    else:
        yield "twice", _dump(gold + gold, True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--categories", default=",".join(SUPPORTED))
    args = ap.parse_args(argv)
    items = []
    for row in load_rows(args.categories.split(",")):
        for label, out in variants(row):
            s = score_output(out, row["expected"], row["tools"], row["category"])
            items.append({"id": row["id"], "variant": label, "category": row["category"], "output": out,
                          "correct": s["correct"], "reason": s["reason"]})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"kind": "bfcl-synthetic", "model": "synthetic", "items": items}) + "\n")
    print(len(items), "items,", sum(i["correct"] for i in items), "correct")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
