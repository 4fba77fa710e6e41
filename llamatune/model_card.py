"""Model cards (README.md for the Hub) of a run's three repositories: the LoRA adapter, the merged weights and
the GGUFs. Uploading is :mod:`llamatune.hub` (``llamatune push``); this module only renders text.

A card is generated from the run's own files: ``run.json`` (recipe, data rows, provenance), the data manifest the
recipe points to (``manifest.json`` of the data stage), evaluation results (``results/**/*.json`` under the run,
or results directories given) with their 95% confidence intervals, and ``fidelity.json`` of the export.

    from llamatune.model_card import model_card
    print(model_card("runs/tiny", kind="adapter", repos={"adapter": "me/tiny-LoRA", "merged": "me/tiny"}))
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from llamatune.fidelity import CONFIDENT_MARGIN, thresholds_text

_DATA_KEYS = ("dataset_path", "data_dir", "dataset", "dataset_name", "train_file", "data", "train_path")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# kind → (library_name, base_model_relation, what the repo holds)
KINDS = {
    "adapter": ("peft", "adapter", "the LoRA adapter (PEFT) of"),
    "merged": ("transformers", "finetune", "the merged weights (safetensors + tokenizer with the chat template) of"),
    "gguf": ("gguf", "quantized", "GGUF files (llama.cpp / llama-cpp-python) of"),
}


def _load(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _cell(text) -> str:
    """A markdown table cell: pipes escaped (GFM needs it even inside code spans)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _yaml_value(v) -> str:
    return json.dumps(v, ensure_ascii=False)  # JSON scalars/lists are valid YAML flow values


def is_hub_id(name: str) -> bool:
    """``owner/name`` that is not a local path (``runs/x``, ``data/finetome`` are paths when they exist)."""
    return bool(_HUB_ID.match(str(name or ""))) and not Path(str(name)).exists()


def _find_manifests(run_dir: Path, run: dict) -> list[tuple[str, dict]]:
    recipe = run.get("recipe", {}) or {}
    values = [recipe.get(k) for k in _DATA_KEYS] + [run.get(k) for k in _DATA_KEYS]
    found, seen = [], set()
    for value in values:
        for v in value if isinstance(value, list) else [value]:
            if not isinstance(v, str) or not v:
                continue
            for root in (Path.cwd(), run_dir.parent.parent, run_dir):
                p = root / v
                manifest = p / "manifest.json" if p.is_dir() else p.parent / "manifest.json"
                if manifest.exists() and manifest.resolve() not in seen:
                    seen.add(manifest.resolve())
                    found.append((v, _load(manifest)))
                    break
    return found


def _datasets(recipe: dict, manifests: list[tuple[str, dict]]) -> list[str]:
    ids = [str(m.get("source")) for _, m in manifests if _HUB_ID.match(str(m.get("source", "")))]
    ids += [v for k in _DATA_KEYS if isinstance(v := recipe.get(k), str) and is_hub_id(v)]
    return list(dict.fromkeys(ids))


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def metric_rows(doc: dict) -> list[tuple[str, float, float | None, float | None, int | None, str]]:
    """``(metric, value, low, high, n, subject)`` from one result JSON of ``llamatune eval``: its ``aggregate``
    metrics (``{"value", "low", "high", "n"}``; a tool-call file's ``overall``), a paired comparison (B − A), or
    flat numbers."""
    subject = str(doc.get("name") or (Path(str(doc["model"])).name if doc.get("model") else ""))
    if doc.get("icl"):
        subject += f" (ICL {doc['icl']})"
    if doc.get("kind") in ("arc_compare", "toolcall_compare"):
        o, d = doc["overall"], doc["overall"]["diff"]
        names = [Path(str(doc[k].get("model") or doc[k].get("path"))).name for k in ("a", "b")]
        what = doc.get("metric", "accuracy")
        return [(f"{what} B − A (paired bootstrap; McNemar p={o['mcnemar']['p_value']:.3g})", d["value"], d["low"],
                 d["high"], o["n"], f"A={names[0]} vs B={names[1]}")]
    agg = doc.get("aggregate") or doc.get("aggregates") or doc.get("metrics")
    if not isinstance(agg, dict):
        return []
    if isinstance(agg.get("overall"), dict):
        agg = agg["overall"]
    n_all = agg.get("n", doc.get("n"))
    rows = []
    for k, v in agg.items():
        if isinstance(v, dict) and _num(v.get("value")):
            rows.append((k, v["value"], v.get("low"), v.get("high"), v.get("n", n_all), subject))
        elif _num(v) and k != "n":
            rows.append((k, v, None, None, n_all if _num(n_all) else None, subject))
    return rows


def results(run_dir: str | Path, results_dirs=()) -> list[tuple[str, tuple]]:
    """``(file, row)`` for every metric of every result JSON under ``run_dir/results`` and ``results_dirs``."""
    dirs = [Path(run_dir) / "results", *(Path(d) for d in results_dirs if d)]
    out = []
    for d in dict.fromkeys(d for d in dirs if d.is_dir()):
        for f in sorted(d.rglob("*.json")):
            out += [(str(f.relative_to(d)), row) for row in metric_rows(_load(f))]
    return out


def _license(base: str, recipe: dict) -> str:
    if recipe.get("license"):
        return str(recipe["license"])
    return "llama3.2" if "llama-3.2" in base.lower() else "other"


def _project_url() -> str:
    try:
        from llamatune.provenance import project_repository

        return project_repository()
    except Exception:  # a card renders even where the project's metadata cannot be read
        return "https://github.com/"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _counts(counts) -> str:
    if not isinstance(counts, dict):
        return ""
    return ", ".join(f"{k}: {sum(v.values()) if isinstance(v, dict) else v}" for k, v in counts.items())


def run_meta(run_dir: str | Path) -> dict:
    """What every card of a run says: name, base model, recipe, template, data (manifests, hub datasets, rows)."""
    run_dir = Path(run_dir)
    run = _load(run_dir / "run.json")
    recipe = run.get("recipe", {}) or {}
    adapter_cfg = _load(run_dir / "adapter" / "adapter_config.json")
    base = str(recipe.get("model_name_or_path") or adapter_cfg.get("base_model_name_or_path") or "")
    manifests = _find_manifests(run_dir, run)
    return {"name": run.get("name") or recipe.get("run_name") or run_dir.resolve().name, "base": base, "recipe": recipe, "run": run,
            "template": recipe.get("chat_template", "llama-3.2"), "manifests": manifests,
            "datasets": _datasets(recipe, manifests), "license": _license(base, recipe)}


def _front_matter(meta: dict, kind: str, repos: dict) -> list[str]:
    library, relation, _ = KINDS[kind]
    base = meta["base"]
    # the GGUFs are quantizations of the merged repo when it is published; without it, of the base model when
    # there was no adapter (a plain model's export), else a fine-tune of the base
    parent = repos.get("merged") if kind == "gguf" and repos.get("merged") else base
    if kind == "gguf" and parent == base and meta["run"].get("recipe"):
        relation = "finetune"
    front = ["---"]
    if is_hub_id(parent):
        front += [f"base_model: {_yaml_value(parent)}", f"base_model_relation: {relation}"]
    tags = {"adapter": ["lora", "peft", "trl", "sft"], "merged": ["lora", "trl", "sft"], "gguf": ["gguf", "llama-cpp", "lora"]}[kind]
    if "llama" in base.lower():
        tags.append("llama-3.2")
    front += [f"library_name: {library}", "pipeline_tag: text-generation", "tags: [" + ", ".join(tags) + "]",
              f"license: {_yaml_value(meta['license'])}"]
    if meta["datasets"]:
        front.append(f"datasets: {_yaml_value(meta['datasets'])}")
    return front + ["---"]


def _usage(kind: str, meta: dict, repos: dict, gguf_files: list[str]) -> list[str]:
    repo = repos.get(kind) or meta["name"]
    if kind == "adapter":
        code = ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer",
                f"model = AutoPeftModelForCausalLM.from_pretrained(\"{repo}\")  # downloads the base model too",
                f"tok = AutoTokenizer.from_pretrained(\"{repo}\")  # carries the project chat template"]
    elif kind == "merged":
        code = ["from transformers import pipeline", f"chat = pipeline(\"text-generation\", model=\"{repo}\")",
                "chat([{\"role\": \"user\", \"content\": \"Hello!\"}], max_new_tokens=128)"]
    else:
        file = next((f for f in gguf_files if "q4_k_m" in f), gguf_files[0] if gguf_files else f"{meta['name']}-q4_k_m.gguf")
        code = ["from llama_cpp import Llama", f"llm = Llama.from_pretrained(\"{repo}\", \"{file}\", n_ctx=4096)",
                "llm.create_chat_completion([{\"role\": \"user\", \"content\": \"Hello!\"}])"]
        return ["", "## Usage", "", "```python", *code, "```", *_serve_usage(repo, file)]
    return ["", "## Usage", "", "```python", *code, "```"]


def _serve_usage(repo: str, file: str) -> list[str]:
    """The README's "Use the tuned model from your own code": ``llamatune serve`` and the ``openai`` snippet."""
    from llamatune.endpoint import client_example

    return ["", "### From your own code: an OpenAI-compatible endpoint with tool calls", "",
            "`llamatune serve` puts the GGUF behind llama-cpp-python's OpenAI-compatible server with this project's "
            "chat template and tool-call parser, so calls come back as `tool_calls` (not as text):", "", "```bash",
            f"pip install \"llamatune[eval] @ git+{_project_url()}\"", f"hf download {repo} {file} --local-dir .",
            f"llamatune serve {file} --port 8000", "```", "", "```python",
            *client_example(Path(file).stem).rstrip("\n").split("\n"), "```"]


def model_card(run_dir: str | Path, results_dir: str | Path | None = None, *, kind: str = "gguf",
               repos: dict | None = None, results_dirs=(), gguf_files: list[str] | None = None) -> str:
    """Markdown with the YAML front matter the Hub reads (``base_model``, ``base_model_relation``,
    ``library_name``, ``pipeline_tag``, ``license``, ``datasets``, ``tags``) and sections for the recipe, the
    training data, evaluation results with 95% CIs and GGUF fidelity (each only when its files exist).
    ``kind``: ``adapter``, ``merged`` or ``gguf``; ``repos``: the run's repo ids by kind (cross-links)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    run_dir, repos = Path(run_dir), dict(repos or {})
    meta = run_meta(run_dir)
    recipe, base, name = meta["recipe"], meta["base"], meta["name"]
    fidelity = _load(run_dir / "fidelity.json")
    reports = fidelity.get("reports") or {}
    gguf_files = gguf_files if gguf_files is not None else [Path(r["gguf"]).name for r in reports.values()]

    body = [f"# {name}", "", f"This repository holds {KINDS[kind][2]} `{name}`, a LoRA fine-tune of "
            f"`{base or 'unknown base'}` made with [llamatune]({_project_url()}). "
            f"The chat template is the project's `{meta['template']}` template (embedded in the tokenizer and "
            f"in every GGUF), so prompts are rendered exactly as in training."]
    siblings = [f"- {k}: [`{r}`](https://huggingface.co/{r})" for k, r in repos.items() if k != kind and r]
    if siblings:
        body += ["", "The same fine-tune, elsewhere:", "", *siblings]
    if recipe:
        body += ["", "## Recipe", "", "| key | value |", "|---|---|"]
        body += [f"| `{_cell(k)}` | `{_cell(json.dumps(v, ensure_ascii=False))}` |" for k, v in recipe.items()]
    data = meta["run"].get("data") or {}
    if meta["manifests"] or data:
        body += ["", "## Training data", ""]
        for where, m in meta["manifests"]:
            desc = _counts(m.get("counts"))
            body.append(f"- `{where}` — source `{m.get('source', '?')}`" + (f" ({desc})" if desc else ""))
        if data.get("train_rows") is not None:
            body.append(f"- rows trained on: {data['train_rows']}; eval rows used for the eval loss: "
                        f"{data.get('eval_rows_used', 0)}")
    rows = results(run_dir, [*([results_dir] if results_dir else []), *results_dirs])
    if rows:
        body += ["", "## Evaluation", "", "95% confidence intervals: Wilson score for proportions, bootstrap for "
                 "means and paired differences (`llamatune.evals.stats`).", "",
                 "| file | metric | value | 95% CI | n | model |", "|---|---|---|---|---|---|"]
        for f, (metric, v, lo, hi, n, subject) in rows:
            ci = f"[{lo:.3f}, {hi:.3f}]" if _num(lo) and _num(hi) else "—"
            body.append(f"| {_cell(f)} | {_cell(metric)} | {_fmt(v)} | {ci} | {n if n is not None else '—'} "
                        f"| {_cell(subject) or '—'} |")
    if reports:
        body += ["", "## GGUF files and fidelity (vs the merged HF model)", "",
                 f"All checks passed: **{'yes' if fidelity.get('pass') else 'NO'}**.", "",
                 "| file | size | top-1 agreement | confident top-1 | thresholds | HF top-1 in top-5 | max abs logit "
                 "diff | tokenization | template | EOS | pass |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in reports.values():
            thr = thresholds_text(r) if r.get("thresholds") else "—"
            conf = r.get("confident_top1_agreement")
            body.append(
                f"| `{Path(r['gguf']).name}` | {r['size_bytes'] / 2**20:.1f} MiB | {r['top1_agreement']:.4f} | "
                f"{conf if conf is not None else '—'} | {thr} | {r.get('hf_top1_in_gguf_top5', float('nan')):.4f} | "
                f"{r['max_abs_logit_diff']:.4g} | "
                f"{'identical' if not r['tokenization']['mismatches'] else 'differs'} | "
                f"{'project' if r['chat_template']['equal'] else 'differs'} | `{_cell(r['eos']['token'])}` | "
                f"{'yes' if r['pass'] else 'NO'} |")
        body += ["", "Top-1 agreement: share of positions of sample chat prompts where the GGUF's most likely next "
                 "token equals the HF model's; confident top-1: the same over the positions where the HF model's "
                 f"top-1 leads its top-2 by at least {CONFIDENT_MARGIN:g} logit (what a 4-bit quant is held to)."]
    git = meta["run"].get("git") or {}
    if git.get("commit"):
        body += ["", f"Trained from commit `{git['commit']}`" + (" (with local changes)" if git.get("dirty") else "")
                 + "; `training/run.json` in the adapter repository records the versions and data hashes."]
    body += _usage(kind, meta, repos, gguf_files) + [""]
    return "\n".join(_front_matter(meta, kind, repos) + [""] + body)
