"""The model card of an exported run (README.md for the Hub), and the upload behind ``--push-to-hub``.

The card is generated from the run's own files only: ``run.json`` (recipe), the data manifest the recipe
points to (``manifest.json`` of the data stage), evaluation results (``results/**/*.json`` under the run, or
a results directory given), and ``fidelity.json`` of the export. Nothing is uploaded unless asked.

    from llamatune.model_card import model_card
    print(model_card("runs/tiny"))
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_DATA_KEYS = ("dataset_path", "data_dir", "dataset", "dataset_name", "train_file", "data", "train_path")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _cell(text: str) -> str:
    """A markdown table cell: pipes escaped (GFM needs it even inside code spans)."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _yaml_value(v) -> str:
    return json.dumps(v, ensure_ascii=False)  # JSON scalars/lists are valid YAML flow values


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
    ids += [v for k in _DATA_KEYS if isinstance(v := recipe.get(k), str) and _HUB_ID.match(v) and not Path(v).exists()]
    return list(dict.fromkeys(ids))


def _results(run_dir: Path, results_dir: Path | None) -> list[tuple[str, str, str]]:
    """(file, metric, value) rows from result JSON files: their ``aggregates`` (or top-level) scalars."""
    rows = []
    dirs = [d for d in (run_dir / "results", results_dir) if d and Path(d).is_dir()]
    for d in dirs:
        for f in sorted(Path(d).rglob("*.json")):
            doc = _load(f)
            flat = doc.get("aggregates") or doc.get("metrics") or doc
            if not isinstance(flat, dict):
                continue
            for k, v in flat.items():
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                rows.append((str(f.relative_to(d)), k, f"{v:.4g}" if isinstance(v, float) else str(v)))
    return rows


def _license(base: str, recipe: dict) -> str:
    if recipe.get("license"):
        return str(recipe["license"])
    return "llama3.2" if "llama-3.2" in base.lower() else "other"


def model_card(run_dir: str | Path, results_dir: str | Path | None = None) -> str:
    """Markdown with YAML front matter (base_model, library_name, tags, license, datasets) and sections for the
    recipe, the training data, evaluation results and GGUF fidelity (each only when its files exist)."""
    run_dir = Path(run_dir)
    run = _load(run_dir / "run.json")
    recipe = run.get("recipe", {}) or {}
    adapter_cfg = _load(run_dir / "adapter" / "adapter_config.json")
    base = str(recipe.get("model_name_or_path") or adapter_cfg.get("base_model_name_or_path") or "")
    manifests = _find_manifests(run_dir, run)
    datasets = _datasets(recipe, manifests)
    fidelity = _load(run_dir / "fidelity.json")
    name = run.get("name") or run_dir.resolve().name

    front = ["---"]
    if base and base != "tiny" and not Path(base).is_absolute():
        front.append(f"base_model: {_yaml_value(base)}")
    front += ["library_name: gguf", "tags: [gguf, llama-cpp, lora" + (", llama-3.2" if "llama" in base.lower() else "")
              + "]", f"license: {_yaml_value(_license(base, recipe))}"]
    if datasets:
        front.append(f"datasets: {_yaml_value(datasets)}")
    front.append("---")

    body = [f"# {name}", ""]
    body.append(f"LoRA fine-tune of `{base or 'unknown base'}`, merged into the base and exported to GGUF for "
                f"llama.cpp / llama-cpp-python. The chat template embedded in every GGUF is the project's "
                f"`{recipe.get('chat_template', 'llama-3.2')}` template; generation stops at `<|eot_id|>`.")
    if recipe:
        body += ["", "## Recipe", "", "| key | value |", "|---|---|"]
        body += [f"| `{_cell(k)}` | `{_cell(json.dumps(v, ensure_ascii=False))}` |" for k, v in recipe.items()]
    if manifests:
        body += ["", "## Training data", ""]
        for where, m in manifests:
            counts = m.get("counts") or {}
            desc = ", ".join(f"{k}: {v}" for k, v in counts.items()) if isinstance(counts, dict) else ""
            body.append(f"- `{where}` — source `{m.get('source', '?')}`" + (f" ({desc})" if desc else ""))
    results = _results(run_dir, Path(results_dir) if results_dir else None)
    if results:
        body += ["", "## Evaluation", "", "| file | metric | value |", "|---|---|---|"]
        body += [f"| {_cell(f)} | {_cell(k)} | {v} |" for f, k, v in results]
    reports = fidelity.get("reports") or {}
    if reports:
        body += ["", "## GGUF files and fidelity (vs the merged HF model)", "",
                 "| file | size | top-1 agreement | threshold | HF top-1 in top-5 | max abs logit diff | tokenization "
                 "| template | EOS | pass |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in reports.values():
            thr = r.get("threshold")
            body.append(
                f"| `{Path(r['gguf']).name}` | {r['size_bytes'] / 2**20:.1f} MiB | {r['top1_agreement']:.4f} | "
                f"{thr if thr is not None else '—'} | {r.get('hf_top1_in_gguf_top5', float('nan')):.4f} | "
                f"{r['max_abs_logit_diff']:.4g} | "
                f"{'identical' if not r['tokenization']['mismatches'] else 'differs'} | "
                f"{'project' if r['chat_template']['equal'] else 'differs'} | `{_cell(r['eos']['token'])}` | "
                f"{'yes' if r['pass'] else 'NO'} |")
        body += ["", "Top-1 agreement: share of positions of sample chat prompts where the GGUF's most likely next "
                 "token equals the HF model's."]
    body += ["", "## Usage", "", "```python", "from llama_cpp import Llama",
             f"llm = Llama(\"{name}-q4_k_m.gguf\", n_ctx=4096)",
             "llm.create_chat_completion([{\"role\": \"user\", \"content\": \"Hello!\"}])", "```", ""]
    return "\n".join(front + [""] + body)


def push_to_hub(run_dir: str | Path, repo: str, *, private: bool = False, results_dir: str | Path | None = None) -> str:
    """Write ``run_dir/README.md`` and upload it with the GGUFs and ``fidelity.json`` to the model repo ``repo``."""
    from huggingface_hub import HfApi

    run_dir = Path(run_dir)
    ggufs = sorted((run_dir / "gguf").glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"{run_dir / 'gguf'}: no GGUF files to push (run the export first)")
    (run_dir / "README.md").write_text(model_card(run_dir, results_dir))
    api = HfApi()
    url = api.create_repo(repo, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=str(run_dir / "gguf"), allow_patterns=["*.gguf"],
                      commit_message="Add GGUF files")
    for f in ("README.md", "fidelity.json"):
        if (run_dir / f).exists():
            api.upload_file(path_or_fileobj=str(run_dir / f), path_in_repo=f, repo_id=repo, commit_message=f"Add {f}")
    return str(url)
