"""ARC-Challenge through lm-eval, on HF (+ LoRA adapter) or on the deployed GGUFs, with item-level results.

    llamatune eval arc --model runs/ft/gguf/model-q4_k_m.gguf --out results/arc-ft
    llamatune eval arc --model meta-llama/Llama-3.2-3B-Instruct+peft=runs/ft/adapter --out results/arc-ft-hf
    llamatune eval arc --model X.gguf --task arc_challenge_llama --out results/arc-ft-gen
    llamatune eval arc --model X.gguf --data-dir tests/fixtures --limit 10 --out /tmp/arc   # offline, local items
    llamatune eval arc --compare results/arc-base results/arc-ft [--metric acc_norm] [--out results/cmp]

Two tasks, and they measure different things:

* ``arc_challenge`` (default) is lm-eval's **cloze** task: ``Question: …\\nAnswer:`` scored by the
  log-likelihood of each choice's text, reported as ``acc`` and ``acc_norm`` (length-normalised). The
  original study's 41.2 (base) vs 39.6 (fine-tuned) are numbers of this kind.
* ``arc_challenge_llama`` is Meta's **generative** setup: the question with lettered choices in the chat
  template, the model writes "The best answer is X" (``exact_match``). Meta's 78.6 for Llama-3.2-3B-Instruct
  is this number; it is not comparable with the cloze one.

Backends: a ``.gguf`` runs in process on llama-cpp-python (``llamatune.evals.llamacpp_lm``; ``--backend
server`` instead scores through ``python -m llama_cpp.server`` with lm-eval's ``gguf`` model, the slow
cross-check); anything else is an HF directory or id, optionally ``+peft=ADAPTER``, for lm-eval's ``hf`` model
(default) or, with ``--backend vllm`` (the ``vllm`` extra, CUDA), lm-eval's ``vllm`` model; ``--model-args
k=v,...`` adds lm-eval model arguments (``tensor_parallel_size=8``, ``data_parallel_size=8``, ``parallelize=True``).
Every response is cached in ``OUT/cache/`` (sqlite, per model fingerprint), so an interrupted run resumes.
``--data-dir`` reads ARC-schema items (``id, question, choices{text,label}, answerKey``) from local
json/jsonl/parquet files (files named ``*test*`` if there are any), so it works offline.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from llamatune.evals import stats
from llamatune.jsonl import write_json, write_jsonl

TASKS = ("arc_challenge", "arc_challenge_llama")
BUILTIN_DIRS = {"arc_challenge": "arc", "arc_challenge_llama": "llama3/instruct/arc_challenge"}
METRICS = {"arc_challenge": ("acc", "acc_norm"), "arc_challenge_llama": ("exact_match",)}

_CLOZE_YAML = {
    "output_type": "multiple_choice",
    "doc_to_text": "Question: {{question}}\nAnswer:",
    "doc_to_target": "{{choices.label.index(answerKey)}}",
    "doc_to_choice": "{{choices.text}}",
    "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                    {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
}
# lm-eval's tasks/llama3/instruct/arc_challenge/arc_challenge_llama.yaml, with its process_docs done in Python
_LLAMA_YAML = {
    "output_type": "generate_until",
    "doc_to_text": "Given the following question and four candidate answers (A, B, C and D), choose the best answer."
                   "\nQuestion: {{ question }}\nA. {{ choices.text[0] }}\nB. {{ choices.text[1] }}\nC. "
                   "{{ choices.text[2] }}\nD. {{ choices.text[3] }}\nYour response should end with \"The best answer"
                   " is [the_answer_letter]\" where the [the_answer_letter] is one of A, B, C or D.",
    "doc_to_target": "{{answerKey}}",
    "gen_prefix": "The best answer is",
    "num_fewshot": 0,
    "generation_kwargs": {"do_sample": False, "max_gen_toks": 100, "until": []},
    "filter_list": [{"name": "strict_match",
                     "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}]}],
    "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True, "ignore_case": True,
                     "ignore_punctuation": True, "regexes_to_ignore": ["\\$", "\\.$"]}],
}


# --- local data ---------------------------------------------------------------------------------------------
def _data_files(data_dir: Path) -> list[Path]:
    if data_dir.is_file():
        return [data_dir]
    files = sorted(p for p in data_dir.rglob("*") if p.suffix in {".json", ".jsonl", ".parquet"})
    tests = [p for p in files if "test" in p.name]
    if not (tests or files):
        raise FileNotFoundError(f"{data_dir}: no .json/.jsonl/.parquet files")
    return tests or files


def _read_rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        return json.loads(text)
    from llamatune.jsonl import read_jsonl

    return read_jsonl(path)


def load_arc_items(data_dir: str | Path) -> list[dict]:
    """ARC-schema rows from local files, validated (errors name file, row and field)."""
    items = []
    for path in _data_files(Path(data_dir)):
        for i, row in enumerate(_read_rows(path), 1):
            where = f"{path}: row {i}"
            if not isinstance(row.get("question"), str) or not row["question"].strip():
                raise ValueError(f"{where}: field 'question' must be a non-empty string")
            ch = row.get("choices")
            if not (isinstance(ch, dict) and isinstance(ch.get("text"), list) and isinstance(ch.get("label"), list)):
                raise ValueError(f"{where}: field 'choices' must be {{'text': [...], 'label': [...]}}")
            if len(ch["text"]) != len(ch["label"]) or len(ch["text"]) < 2:
                raise ValueError(f"{where}: field 'choices' needs >= 2 texts and as many labels")
            key = str(row.get("answerKey", ""))
            if key not in [str(x) for x in ch["label"]]:
                raise ValueError(f"{where}: field 'answerKey' {key!r} is not one of the labels {ch['label']}")
            items.append({"id": str(row.get("id") or f"{path.stem}-{i}"), "question": row["question"],
                          "choices": {"text": [str(t) for t in ch["text"]], "label": [str(x) for x in ch["label"]]},
                          "answerKey": key})
    return items


def llama_process(items: list[dict]) -> list[dict]:
    """Meta's preprocessing: keep 4-choice items, relabel 1-4 as A-D."""
    out = []
    for it in items:
        if len(it["choices"]["text"]) != 4:
            continue
        key = it["answerKey"]
        if key not in "ABCD" or len(key) != 1:
            key = "ABCD"[it["choices"]["label"].index(key)]
        out.append({**it, "choices": {"text": it["choices"]["text"], "label": list("ABCD")}, "answerKey": key})
    return out


def write_local_task(items: list[dict], task: str, work: Path) -> tuple[str, Path]:
    """Write the items and an lm-eval task YAML for them under ``work``; returns (task name, include dir)."""
    import yaml

    if task == "arc_challenge_llama":
        items = llama_process(items)
    if not items:
        raise ValueError(f"no usable items for {task}")
    name = f"{task}_local"
    tdir = work / "tasks"
    tdir.mkdir(parents=True, exist_ok=True)
    data = tdir / f"{name}.jsonl"
    write_jsonl(data, items)
    cfg = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
           "test_split": "test", **(_CLOZE_YAML if task == "arc_challenge" else _LLAMA_YAML),
           "metadata": {"version": 1.0}}
    (tdir / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return name, tdir


# --- models -------------------------------------------------------------------------------------------------
BACKENDS = ("auto", "inproc", "server", "hf", "vllm")  # auto: inproc for a GGUF, hf for an HF model


def arc_backend(kind: str, backend: str) -> str:
    """The backend that scores a model of ``kind`` (``gguf`` | ``hf``): GGUFs on llama.cpp (``inproc``, or
    ``server``: lm-eval's ``gguf`` model against llama_cpp.server), HF models on lm-eval's ``hf`` or ``vllm``."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if kind == "gguf":
        if backend in ("hf", "vllm"):
            raise ValueError(f"--backend {backend} scores HF models; a GGUF runs on inproc (default) or server")
        return "inproc" if backend == "auto" else backend
    if backend == "server":
        raise ValueError("--backend server scores a GGUF; an HF model runs on hf (default) or vllm")
    return "hf" if backend in ("auto", "inproc") else backend


def parse_model_args(text: str | None) -> dict:
    """``k=v,k2=v2`` (lm-eval's ``--model_args`` syntax; values typed: ``2`` → int, ``true`` → True) → dict."""
    from lm_eval.utils import simple_parse_args_string

    return simple_parse_args_string(text) if text else {}


def lm_eval_model_args(spec, backend: str, *, n_ctx: int = 2048, batch_size: int = 8, dtype: str = "auto",
                       placement=None, extra: dict | None = None) -> dict:
    """Keyword arguments of lm-eval's ``hf`` (``HFLM``) or ``vllm`` (``VLLM``) model for an HF model spec, then
    ``extra`` on top (``--model-args``: e.g. ``tensor_parallel_size=8`` or ``data_parallel_size=8`` for vLLM,
    ``parallelize=True`` to split a model over the GPUs with HF). Precision and device follow the placement rule
    (float16 on a T4, bfloat16 from compute capability 8.0); the chat template's date is pinned as in every eval."""
    from llamatune.device import this_placement
    from llamatune.chat import DEFAULT_DATE
    from llamatune.generate import vllm_lora_rank

    place = placement or this_placement()
    args = {"pretrained": spec.path, "dtype": place.dtype if dtype == "auto" else dtype,
            "chat_template_args": {"date_string": DEFAULT_DATE}}
    if backend == "hf":
        args.update(peft=spec.peft, device=place.device, batch_size=batch_size)
    elif backend == "vllm":
        args.update(batch_size="auto", max_model_len=n_ctx, seed=0)
        if spec.peft:
            args.update(lora_local_path=str(spec.peft), max_lora_rank=vllm_lora_rank(spec.peft))
    else:
        raise ValueError(f"lm-eval model backend {backend!r}: hf or vllm")
    return {**args, **(extra or {})}


def make_lm(model: str, *, peft: str | None = None, backend: str = "auto", base_url: str | None = None,
            n_ctx: int = 2048, batch_size: int = 8, dtype: str = "auto", model_args: dict | None = None):
    """``(lm, info, close)`` for a model spec: in-process llama.cpp, llama.cpp server, or lm-eval's HF / vLLM model."""
    from llamatune.model_spec import fingerprint, parse_spec

    spec = parse_spec(model, peft)
    backend = arc_backend(spec.kind, backend)
    info = {"model": model, "label": spec.label, "model_kind": spec.kind, "fingerprint": fingerprint(spec),
            "backend": backend}
    if backend == "server":
        from lm_eval.models.gguf import GGUFLM

        from llamatune.evals.llamacpp_server import LlamaCppServer

        server = None if base_url else LlamaCppServer(spec.path, n_ctx=n_ctx)
        url = base_url.rstrip("/").removesuffix("/v1") if base_url else server.url
        return GGUFLM(base_url=url, max_length=n_ctx), info, (server.close if server else (lambda: None))
    if backend == "inproc":
        from llamatune.evals.llamacpp_lm import LlamaCppLM

        lm = LlamaCppLM(model_path=spec.path, n_ctx=n_ctx)
        return lm, info, lm.close
    args = lm_eval_model_args(spec, backend, n_ctx=n_ctx, batch_size=batch_size, dtype=dtype, extra=model_args)
    info["model_args"] = {k: v for k, v in args.items() if k != "chat_template_args"}
    if backend == "vllm":
        from lm_eval.models.vllm_causallms import VLLM  # imports vllm: the vllm extra, on CUDA

        return VLLM(**args), info, (lambda: None)
    from lm_eval.models.huggingface import HFLM

    return HFLM(**args), info, (lambda: None)


# --- results ------------------------------------------------------------------------------------------------
def items_from_samples(samples: list[dict], task: str) -> list[dict]:
    """Per-item records from lm-eval's logged samples (``correct`` is acc or exact_match)."""
    items = []
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        doc = s["doc"]
        rec = {"id": str(doc.get("id", s["doc_id"])), "doc_id": s["doc_id"], "target": s["target"]}
        if task == "arc_challenge":
            lls = [float(r[0]) for r in s["filtered_resps"]]
            rec.update(correct=bool(s["acc"]), acc_norm=bool(s["acc_norm"]), loglik=lls,
                       pred=max(range(len(lls)), key=lls.__getitem__))
        else:
            rec.update(correct=bool(s["exact_match"]), pred=s["filtered_resps"][0] if s["filtered_resps"] else "",
                       output=s["resps"][0][0] if s["resps"] else "")
        items.append(rec)
    return items


def aggregate(items: list[dict], task: str) -> dict:
    """Accuracy per metric with n, Wilson 95% CI and standard error."""
    agg = {}
    for m in METRICS[task]:
        field = "correct" if m in ("acc", "exact_match") else m
        k, n = sum(bool(it[field]) for it in items), len(items)
        agg[m] = stats.proportion(k, n)
        p = agg[m]["value"]
        agg[m]["stderr"] = (p * (1 - p) / (n - 1)) ** 0.5 if n > 1 else None
    return agg


def run_arc(model: str, out: str | Path, *, task: str = "arc_challenge", limit: int | None = None,
            data_dir: str | Path | None = None, peft: str | None = None, backend: str = "auto",
            base_url: str | None = None, name: str | None = None, n_ctx: int = 2048, batch_size: int = 8,
            max_gen_toks: int | None = None, model_args: dict | None = None) -> dict:
    """Run one ARC task on one model; writes and returns ``OUT/arc-<task>.json`` (kind ``arc``)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if data_dir is not None:
        lm_task, include = write_local_task(load_arc_items(data_dir), task, out)
    else:  # only index the task's own directory: indexing all of lm-eval's tasks takes ~25 s
        lm_task, include = task, Path(lm_eval.tasks.__file__).parent / BUILTIN_DIRS[task]
    manager = TaskManager(include_path=str(include), include_defaults=False)
    lm, info, close = make_lm(model, peft=peft, backend=backend, base_url=base_url, n_ctx=n_ctx, batch_size=batch_size,
                              model_args=model_args)
    t0 = time.time()
    try:
        res = lm_eval.simple_evaluate(
            model=lm, tasks=[lm_task], task_manager=manager, limit=limit, log_samples=True, bootstrap_iters=0,
            apply_chat_template=(task == "arc_challenge_llama"), fewshot_as_multiturn=(task == "arc_challenge_llama"),
            use_cache=str(out / "cache" / f"lm-{info['fingerprint']}-{info['backend']}"),
            gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
        )
    finally:
        close()
    items = items_from_samples(res["samples"][lm_task], task)
    result = {
        "kind": "arc", "name": name or info["label"], "task": task, "lm_eval_task": lm_task,
        "data": str(data_dir) if data_dir else "allenai/ai2_arc ARC-Challenge test", "limit": limit,
        **info, "n": len(items), "aggregate": aggregate(items, task),
        "lm_eval_results": {k: v for k, v in res["results"][lm_task].items() if isinstance(v, (int, float, str))},
        "lm_eval_version": lm_eval.__version__, "seconds": round(time.time() - t0, 2), "items": items,
    }
    path = out / f"arc-{task}.json"
    write_json(path, result, indent=1)
    result["path"] = str(path)
    return result


def load_result(path: str | Path, kind: str = "arc") -> dict:
    """A results json, or the single ``arc-*.json`` in a directory."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("arc-*.json"))
        if len(found) != 1:
            raise FileNotFoundError(f"{path}: expected one arc-*.json, found {[p.name for p in found]}")
        path = found[0]
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("kind") != kind:
        raise ValueError(f"{path}: not a {kind} results file (kind={data.get('kind')!r})")
    return data


def compare(a: str | Path | dict, b: str | Path | dict, metric: str = "acc", n_boot: int = 10000,
            seed: int = 0) -> dict:
    """B against baseline A on the items both results share (:func:`llamatune.evals.stats.paired_comparison`:
    exact McNemar and a paired bootstrap CI of acc(B) − acc(A))."""
    ra = a if isinstance(a, dict) else load_result(a)
    rb = b if isinstance(b, dict) else load_result(b)
    if ra["task"] != rb["task"]:
        raise ValueError(f"cannot compare different tasks: {ra['task']} vs {rb['task']}")
    field = "correct" if metric in ("acc", "exact_match") else metric
    ia = {it["id"]: bool(it[field]) for it in ra["items"]}
    ib = {it["id"]: bool(it[field]) for it in rb["items"]}
    ids = [i for i in ia if i in ib]
    if not ids:
        raise ValueError("the two results share no item ids")
    return {"kind": "arc_compare", "task": ra["task"], "metric": metric,
            "a": {"model": ra["name"], "path": ra.get("path")}, "b": {"model": rb["name"], "path": rb.get("path")},
            "only_in_a": len(ia) - len(ids), "only_in_b": len(ib) - len(ids),
            "overall": stats.paired_comparison([ia[i] for i in ids], [ib[i] for i in ids], n_boot=n_boot, seed=seed),
            "test": "McNemar exact; paired bootstrap 95% CI of acc(B) − acc(A)"}


def format_result(r: dict) -> str:
    if r["kind"] == "arc_compare":
        from llamatune.report import comparison_table

        return f"{r['task']} {r['metric']}: B = {r['b']['model']} vs A = {r['a']['model']}\n" + comparison_table(r)
    parts = [f"{m} {v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]" for m, v in r["aggregate"].items()]
    return f"{r['name']} {r['task']} n={r['n']}: " + ", ".join(parts)


def add_arguments(parser) -> None:
    parser.add_argument("--model", help="X.gguf, an HF dir/id, or DIR+peft=ADAPTER")
    parser.add_argument("--peft", help="LoRA adapter directory (HF models)")
    parser.add_argument("--out", help="output directory (results json + cache)")
    parser.add_argument("--task", default="arc_challenge", choices=TASKS, help="cloze (default) or Meta's generative")
    parser.add_argument("--limit", type=int, help="first N items only (smoke runs)")
    parser.add_argument("--data-dir", help="local ARC-schema json/jsonl/parquet (offline)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS,
                        help="GGUF: inproc llama.cpp (auto) or server (lm-eval's gguf model on llama_cpp.server, the slow "
                             "cross-check); HF model: lm-eval's hf (auto) or vllm (the vllm extra, CUDA)")
    parser.add_argument("--model-args", help="extra lm-eval model arguments for hf/vllm, k=v,k2=v2 (e.g. "
                                             "tensor_parallel_size=8, data_parallel_size=8, parallelize=True)")
    parser.add_argument("--base-url", help="with --backend server: an already running llama_cpp.server")
    parser.add_argument("--name", help="label in tables (default: model file/dir name)")
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8, help="HF backend batch size")
    parser.add_argument("--max-gen-toks", type=int, help="generative task: cap the answer length (smoke runs)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two results (files or dirs)")
    parser.add_argument("--metric", default=None, help="metric for --compare (default acc / exact_match)")


def main(args) -> int:
    if args.compare:
        a = load_result(args.compare[0])
        metric = args.metric or ("exact_match" if a["task"] == "arc_challenge_llama" else "acc")
        r = compare(a, args.compare[1], metric=metric)
        print(format_result(r))
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            name = f"compare-{r['task']}-{r['b']['model']}-vs-{r['a']['model']}.json".replace("/", "_")
            path = Path(args.out) / name
            write_json(path, r, indent=1)
            print(f"written {path}")
        return 0
    if not args.model or not args.out:
        raise ValueError("--model and --out are required (or --compare A B)")
    r = run_arc(args.model, args.out, task=args.task, limit=args.limit, data_dir=args.data_dir, peft=args.peft,
                backend=args.backend, base_url=args.base_url, name=args.name, n_ctx=args.n_ctx,
                batch_size=args.batch_size, max_gen_toks=args.max_gen_toks,
                model_args=parse_model_args(args.model_args))
    print(format_result(r))
    print(f"written {r['path']}")
    return 0
