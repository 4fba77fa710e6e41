"""Publish a training run on the Hugging Face Hub, and the Space that serves it.

    llamatune push runs/llama-3.2-3b-funccall --repo me/llama-3.2-3b-funccall --space me/llama-agents --dry-run

One run becomes three model repositories, named as the Hub's ecosystem names them (unsloth, bartowski):

* ``USER/NAME-LoRA`` — the LoRA adapter (``library_name: peft``, ``base_model_relation: adapter``) and the
  training record (``training/run.json``, ``config.yaml``, ``trainer_state.json``, ``loss.png``);
* ``USER/NAME`` — the merged weights, safetensors + tokenizer with the chat template (``transformers``,
  ``finetune``);
* ``USER/NAME-GGUF`` — ``gguf/<name>-<quant>.gguf`` as ``llamatune export`` names them, and ``fidelity.json``
  (``gguf``, ``quantized`` of ``USER/NAME``).

Separate repositories, not subfolders: the Hub reads one ``library_name`` and one ``base_model_relation`` per
repository, and draws the model tree (base → adapter / fine-tune → quantizations) from them.

``--space USER/SPACE`` adds the Gradio Space: ``space/`` with the ``llamatune`` package bundled next to
``app.py``, a ``models.yaml`` whose entry for this run names the GGUF just pushed, and README front matter
listing every model repo (``models:``) and every GGUF (``preload_from_hub:``, fetched when the Space is built).

The upload is a plan (:func:`push_plan`, pure, testable offline) run by :func:`push`: per repository one
``create_repo(exist_ok=True)`` and ONE ``create_commit``, so a repository is never left half-written.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from llamatune.provenance import project_repository

PARTS = ("adapter", "merged", "gguf")
SUFFIX = {"adapter": "-LoRA", "merged": "", "gguf": "-GGUF"}
PACKAGE = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE.parent
SPACE_DIR = REPO_ROOT / "space"
SPACE_FILES = ("app.py", "requirements.txt")  # copied as they are; README.md and models.yaml are generated
_IGNORE = ("__pycache__", "*.pyc", "*.part")
_TRAINING_RECORD = ("run.json", "config.yaml", "trainer_state.json", "loss.png")
_MERGED_SKIP = {"README.md", "llamatune_merge.json"}  # the merge stamp holds local paths
PRELOAD_LIMIT = 10  # the Hub refuses a Space with more preload_from_hub entries
NO_TOKEN = ("no Hugging Face token: run `hf auth login` (older huggingface_hub: `huggingface-cli login`) or set "
            "HF_TOKEN; on Colab add a secret named HF_TOKEN (key icon in the left bar) with notebook access on")


class HubError(RuntimeError):
    """A push that cannot be planned or run; the message names the path, repo or setting and what to do."""

    code = 2  # the user fixes an argument, a file or a login (llamatune.cli.exit_code)


@dataclass
class Commit:
    """One commit to one repository: ``files`` are ``(path_in_repo, local Path | bytes)``. ``requires`` lists
    ``(repo, file)`` that must already be on the Hub (checked before anything is uploaded)."""

    repo_id: str
    repo_type: str  # "model" | "space"
    files: list[tuple[str, Path | bytes]]
    message: str
    private: bool = False
    requires: list[tuple[str, str]] = field(default_factory=list)

    def paths(self) -> list[str]:
        return [p for p, _ in self.files]

    def text(self, path_in_repo: str) -> str:
        src = dict(self.files)[path_in_repo]
        return src.decode() if isinstance(src, bytes) else Path(src).read_text()


# --- names ------------------------------------------------------------------------------------------------

def project_owner() -> str:
    """The owner in the project's one slug (``https://github.com/USER/repo`` → ``USER``), also the Hub owner
    of the published models."""
    return project_repository().rstrip("/").removesuffix(".git").split("/")[-2]


def expand_owner(text: str) -> str:
    return text.replace("{owner}", project_owner()) if "{owner}" in text else text


def validate_repo(repo_id: str, what: str = "--repo") -> str:
    """``owner/name`` as the Hub accepts it; raises HubError before anything is uploaded."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise HubError(f"{what} {repo_id!r}: give USER/NAME (your Hub user or organisation, then the name)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise HubError(f"{what} {repo_id!r} is not a valid Hub repo id: {exc}") from exc
    return repo_id


def repo_ids(repo: str) -> dict[str, str]:
    """``{"adapter": USER/NAME-LoRA, "merged": USER/NAME, "gguf": USER/NAME-GGUF}``, each validated."""
    validate_repo(repo)
    return {part: validate_repo(repo + SUFFIX[part], f"{part} repo") for part in PARTS}


# --- model repositories -------------------------------------------------------------------------------------

def _files(directory: Path, skip=()) -> list[tuple[str, Path]]:
    out = []
    for f in sorted(directory.rglob("*")):
        rel = f.relative_to(directory)
        if f.is_dir() or rel.as_posix() in skip or any(rel.match(p) or p in rel.parts for p in _IGNORE):
            continue
        out.append((rel.as_posix(), f.resolve()))
    return out


def _part_files(run_dir: Path, part: str) -> list[tuple[str, Path]]:
    if part == "adapter":
        d = run_dir / "adapter"
        if not (d / "adapter_config.json").exists():
            raise HubError(f"{d}: no LoRA adapter (adapter_config.json) — `llamatune train RECIPE` writes it; "
                           "for a plain model export push its GGUFs only: --parts gguf")
        record = [(f"training/{n}", (run_dir / n).resolve()) for n in _TRAINING_RECORD if (run_dir / n).exists()]
        return _files(d, {"README.md"}) + record
    if part == "merged":
        d = run_dir / "merged"
        if not (d / "config.json").exists() or not list(d.glob("*.safetensors")):
            raise HubError(f"{d}: no merged weights (config.json + *.safetensors) — `llamatune export {run_dir}` "
                           "writes them")
        return _files(d, _MERGED_SKIP)
    d = run_dir / "gguf"
    ggufs = [(f.name, f.resolve()) for f in sorted(d.glob("*.gguf"))]
    if not ggufs:
        raise HubError(f"{d}: no *.gguf files — `llamatune export {run_dir}` writes them")
    extra = [("fidelity.json", (run_dir / "fidelity.json").resolve())] if (run_dir / "fidelity.json").exists() else []
    return ggufs + extra


def model_commits(run_dir: str | Path, repo: str, parts=PARTS, *, private: bool = False,
                  results_dirs=()) -> list[Commit]:
    """One commit per part, each with its model card as README.md."""
    from llamatune.model_card import model_card, run_meta

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise HubError(f"{run_dir}: no such run directory (`llamatune train RECIPE` writes runs/<run_name>/)")
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise HubError(f"--parts {','.join(parts)}: choose from {','.join(PARTS)}")
    for d in results_dirs:
        if not Path(d).is_dir():
            raise HubError(f"--results {d}: no such directory (`llamatune eval ... --out` writes results)")
    ids = repo_ids(repo)
    repos = {p: ids[p] for p in parts}
    files = {p: _part_files(run_dir, p) for p in parts}
    ggufs = [n for n, _ in files.get("gguf", []) if n.endswith(".gguf")]
    name = run_meta(run_dir)["name"]
    what = {"adapter": f"LoRA adapter of {name}", "merged": f"merged weights of {name}",
            "gguf": f"GGUF files of {name} ({', '.join(ggufs)})"}
    commits = []
    for p in parts:
        card = model_card(run_dir, kind=p, repos=repos, results_dirs=results_dirs, gguf_files=ggufs)
        commits.append(Commit(ids[p], "model", [("README.md", card.encode()), *files[p]],
                              f"Add {what[p]} (llamatune push)", private))
    return commits


# --- the Space ----------------------------------------------------------------------------------------------

def _split_front_matter(text: str) -> tuple[dict, str]:
    import yaml

    m = re.match(r"^---\n(.*?)\n---\n?(.*)$", text, re.S)
    return (yaml.safe_load(m.group(1)) or {}, m.group(2)) if m else ({}, text)


def space_readme(models_yaml: str, extra_repos=(), readme: str | None = None) -> str:
    """``space/README.md`` with front matter ``models:`` (every model repo) and ``preload_from_hub:`` (``repo
    file`` per GGUF of ``models_yaml``, so the Space's build downloads them and no request waits for one)."""
    import yaml

    front, body = _split_front_matter(readme if readme is not None else (SPACE_DIR / "README.md").read_text())
    entries = (yaml.safe_load(models_yaml) or {}).get("models") or []
    hub = [(e["repo"], e["file"]) for e in entries if isinstance(e, dict) and e.get("repo") and e.get("file")]
    if len(hub) > PRELOAD_LIMIT:
        raise HubError(f"the Space lists {len(hub)} hub GGUFs; preload_from_hub takes at most {PRELOAD_LIMIT}")
    front["models"] = list(dict.fromkeys([r for r, _ in hub] + list(extra_repos)))
    front["preload_from_hub"] = [f"{r} {f}" for r, f in hub]
    dumped = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{dumped}---\n{body}"


def space_files(models_yaml: str, extra_repos=()) -> list[tuple[str, Path | bytes]]:
    """What a Space repository holds: app.py, requirements.txt, README.md and models.yaml (generated), and the
    ``llamatune`` package next to app.py (Python files and templates; no caches)."""
    if not (SPACE_DIR / "app.py").exists():
        raise HubError(f"{SPACE_DIR}: no Space sources next to the package; run from a clone (pip install -e .)")
    files: list[tuple[str, Path | bytes]] = [(n, SPACE_DIR / n) for n in SPACE_FILES]
    files += [("README.md", space_readme(models_yaml, extra_repos).encode()), ("models.yaml", models_yaml.encode())]
    files += [(f"llamatune/{rel}", path) for rel, path in _files(PACKAGE)]
    return files


def space_models_yaml(entry: dict, template: str | Path | None = None) -> str:
    """The Space's models.yaml: ``template`` (default space/models.yaml; ``{owner}`` filled in) with the entry
    of this run (same repo or same file) pointed at ``entry``'s repo and file, or ``entry`` appended."""
    import yaml

    data = yaml.safe_load(expand_owner(Path(template or SPACE_DIR / "models.yaml").read_text())) or {}
    models = data.setdefault("models", [])
    hit = next((e for e in models if e.get("repo") == entry["repo"] or e.get("file") == entry["file"]), None)
    if hit is None:
        models.append(dict(entry))
    else:
        hit.pop("path", None)
        hit.update(repo=entry["repo"], file=entry["file"], template=entry.get("template", hit.get("template")))
    head = "# Written by `llamatune push` from space/models.yaml (see that file for what the keys mean).\n"
    return head + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000)


def space_commit(space: str, models_yaml: str, *, provided=(), extra_repos=(), private: bool = False,
                 message: str = "Update the Space (llamatune push)") -> Commit:
    """The Space as one commit; hub files of ``models_yaml`` not in ``provided`` must exist on the Hub."""
    import yaml

    validate_repo(space, "--space")
    entries = (yaml.safe_load(models_yaml) or {}).get("models") or []
    need = [(e["repo"], e["file"]) for e in entries if e.get("repo") and e.get("file")]
    return Commit(space, "space", space_files(models_yaml, extra_repos), message, private,
                  [rf for rf in need if rf not in set(provided)])


def push_plan(run_dir: str | Path, repo: str | None = None, *, space: str | None = None, parts=None,
              private: bool = False, results_dirs=(), space_quant: str = "q4_k_m",
              space_models: str | Path | None = None) -> list[Commit]:
    """The commits that publish ``run_dir`` (adapter, merged, GGUF repos; then the Space when asked). Pure: reads
    local files only. ``repo`` defaults to ``<project owner>/<run directory name>``."""
    from llamatune.chat import TEMPLATES
    from llamatune.model_card import run_meta

    run_dir = Path(run_dir)
    if repo is None:
        repo = f"{project_owner()}/{run_dir.resolve().name}"
    parts = tuple(parts or PARTS)
    plan = model_commits(run_dir, repo, parts, private=private, results_dirs=results_dirs)
    if space:
        gguf = next((c for c in plan if c.repo_id == repo_ids(repo)["gguf"]), None)
        if gguf is None:
            raise HubError("--space serves the GGUFs: keep gguf in --parts")
        file = next((p for p in gguf.paths() if p.endswith(f"-{space_quant.lower()}.gguf")), None)
        if file is None:
            raise HubError(f"--space-quant {space_quant}: no such GGUF in {run_dir / 'gguf'} "
                           f"(there: {', '.join(p for p in gguf.paths() if p.endswith('.gguf'))})")
        meta = run_meta(run_dir)
        template = meta["template"]
        entry = {"name": meta["name"], "repo": gguf.repo_id, "file": file,
                 "template": template if template in TEMPLATES else "auto", "n_ctx": 4096}
        models_yaml = space_models_yaml(entry, space_models)
        plan.append(space_commit(space, models_yaml, provided=[(gguf.repo_id, p) for p in gguf.paths()],
                                 extra_repos=[c.repo_id for c in plan], private=private,
                                 message=f"Serve {gguf.repo_id}/{file} (llamatune push)"))
    return plan


# --- running it ---------------------------------------------------------------------------------------------

def _size(src: Path | bytes) -> int:
    return len(src) if isinstance(src, bytes) else Path(src).stat().st_size


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def format_plan(plan: list[Commit]) -> str:
    """What ``--dry-run`` prints: per commit the repo, then each file, its size and where it comes from."""
    lines = []
    for c in plan:
        total = sum(_size(s) for _, s in c.files)
        lines.append(f"{c.repo_type} {c.repo_id}{' (private)' if c.private else ''}: {len(c.files)} files, "
                     f"{_human(total)} in one commit \"{c.message}\"")
        for path, src in c.files:
            lines.append(f"  {path:<48} {_human(_size(src)):>10}  {'(generated)' if isinstance(src, bytes) else src}")
        lines += [f"  needs on the Hub already: {r}/{f}" for r, f in c.requires]
    return "\n".join(lines)


def url_of(c: Commit) -> str:
    return f"https://huggingface.co/{'spaces/' if c.repo_type == 'space' else ''}{c.repo_id}"


def push(plan: list[Commit], api=None, *, token: str | None = None) -> list[str]:
    """Run ``plan``: check the files it needs on the Hub, then per commit ``create_repo(exist_ok=True)`` and one
    ``create_commit``. Returns the repo URLs. ``api``: an ``HfApi`` (default: one with the saved token)."""
    from huggingface_hub import CommitOperationAdd

    if api is None:
        from huggingface_hub import HfApi, get_token

        token = token or get_token()
        if not token:
            raise HubError(NO_TOKEN)
        api = HfApi(token=token)
    missing = [f"{r}/{f} (for {c.repo_id})" for c in plan for r, f in c.requires if not api.file_exists(r, f)]
    if missing:
        raise HubError("not on the Hub, so the Space could not load it: " + "; ".join(missing) + " — push that run "
                       "first, or give --space-models a models.yaml without it. Nothing was uploaded.")
    urls = []
    for c in plan:
        extra = {"space_sdk": "gradio"} if c.repo_type == "space" else {}
        api.create_repo(c.repo_id, repo_type=c.repo_type, private=c.private, exist_ok=True, **extra)
        ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=s if isinstance(s, bytes) else str(s))
               for p, s in c.files]
        api.create_commit(c.repo_id, ops, commit_message=c.message, repo_type=c.repo_type)
        urls.append(url_of(c))
    return urls


def bundle(out: str | Path, models_yaml: str | Path | None = None) -> Path:
    """Write the Space folder (what ``--space`` pushes, from ``models_yaml`` or space/models.yaml) into ``out``."""
    out = Path(out)
    text = expand_owner(Path(models_yaml or SPACE_DIR / "models.yaml").read_text())
    shutil.rmtree(out / "llamatune", ignore_errors=True)
    for rel, src in space_files(text):
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src) if isinstance(src, bytes) else shutil.copy2(src, dst)
    return out


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", help="training run directory (runs/<run_name>, after `llamatune export`)")
    parser.add_argument("--repo", help="USER/NAME: pushes USER/NAME-LoRA, USER/NAME and USER/NAME-GGUF "
                                       "(default: <owner of pyproject's Repository>/<run directory name>)")
    parser.add_argument("--space", metavar="USER/SPACE", help="also push the Gradio Space serving this run's GGUF")
    parser.add_argument("--parts", default=",".join(PARTS), help="which repos (default %(default)s)")
    parser.add_argument("--results", action="append", default=[], metavar="DIR",
                        help="evaluation results for the cards (repeatable; runs/<run>/results is always read)")
    parser.add_argument("--space-quant", default="q4_k_m", help="the GGUF the Space serves (default %(default)s)")
    parser.add_argument("--space-models", metavar="YAML", help="models.yaml template (default space/models.yaml)")
    parser.add_argument("--private", action="store_true", help="create private repos")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (repo, file, size); upload nothing")


def run_push(run_dir, repo=None, *, parts=None, private=False, dry_run=False, **kw) -> int:
    """Plan and run a push; a :class:`HubError` (exit code 2, :mod:`llamatune.cli`) names what to fix."""
    plan = push_plan(run_dir, repo, parts=parts, private=private, **kw)
    if dry_run:
        print(format_plan(plan))
        return 0
    urls = push(plan)
    print("\n".join(f"pushed {u}" for u in urls))
    return 0


def main(args) -> int:
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    return run_push(args.run_dir, args.repo, parts=parts, private=args.private, dry_run=args.dry_run,
                    space=args.space, results_dirs=args.results, space_quant=args.space_quant,
                    space_models=args.space_models)
