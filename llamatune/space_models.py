"""The models a Space offers and the owner's limits: ``space/models.yaml`` entries (a local GGUF, or a Hub repo +
file resolved from the Hugging Face cache at startup) or every GGUF of a folder, its ``settings`` (the
:class:`ServingLimits`), which model a new visitor meets, and the title that names them. :mod:`llamatune.serving`
serves them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

@dataclass
class ServedModel:
    """One selectable model: a local GGUF ``path``, or a hub ``repo`` + ``file`` (from the Hugging Face cache,
    where a Space's ``preload_from_hub`` puts it at build time, else downloaded). ``origin`` names the config
    entry it came from, for error messages."""

    name: str
    path: str | None = None
    repo: str | None = None
    file: str | None = None
    template: str = "auto"
    n_ctx: int = 4096
    extra: dict = field(default_factory=dict)
    origin: str = ""
    resolved: str | None = field(default=None, repr=False)

    def resolve(self, cache_dir: str | Path | None = None) -> str:
        """The local GGUF path: ``path``, or the cached hub file (no network when it is cached), else a download.
        Errors name the config entry and the file."""
        where = self.origin or f"model {self.name!r}"
        if self.resolved and Path(self.resolved).exists():
            return self.resolved
        if self.path:
            if not Path(self.path).exists():
                raise FileNotFoundError(f"{where}: no GGUF at {self.path}")
            self.resolved = self.path
            return self.path
        if not (self.repo and self.file):
            raise ValueError(f"{where}: give either 'path' or 'repo' and 'file'")
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        cached = try_to_load_from_cache(self.repo, self.file, cache_dir=cache_dir)
        if isinstance(cached, str) and Path(cached).exists():
            self.resolved = cached
            return cached
        try:
            self.resolved = hf_hub_download(self.repo, self.file, cache_dir=cache_dir)
        except Exception as exc:  # offline, no such repo or file, gated, network: all mean "cannot serve it"
            raise FileNotFoundError(f"{where}: {self.file} from the Hub repo {self.repo} is not in the Hugging Face "
                                    f"cache and could not be downloaded ({type(exc).__name__}: {exc})") from exc
        return self.resolved


def resolve_all(specs: list[ServedModel], cache_dir: str | Path | None = None) -> dict[str, str]:
    """Resolve every model at startup (so no user request waits for a download and a missing model stops the app
    before it serves): ``{name: local path}``. Raises FileNotFoundError listing every model that is missing."""
    paths, errors = {}, []
    for spec in specs:
        try:
            paths[spec.name] = spec.resolve(cache_dir)
        except (FileNotFoundError, ValueError) as exc:
            errors.append(str(exc))
    if errors:
        raise FileNotFoundError("missing model(s):\n  " + "\n  ".join(errors))
    return paths


@dataclass
class ServingLimits:
    """What a Space owner sets, in one place: ``settings:`` in ``space/models.yaml`` (the app's flags override it).
    The defaults hold on the free ``cpu-basic`` hardware (2 vCPU, 16 GB) serving 3B Q4_K_M GGUFs; ``space/README.md``
    ("Limits") explains each, ``bench/space_load.py`` measures what they give."""

    max_resident: int = 1  # models in memory at once; switching unloads the least recently used idle one
    max_waiting: int = 20  # turns waiting in line for a model; one more is told "busy, try again in a minute"
    wait_timeout: float = 300.0  # seconds a turn may wait in line; a turn expected to wait longer is told at once
    turn_deadline: float = 240.0  # seconds a turn may hold its model (prompts, tools, answers); then it is stopped
    queue_size: int = 64  # Gradio's own queue, before the line (a browser sees its place); full: Gradio's "busy"
    n_threads: int | None = None  # llama.cpp threads; None = physical cores
    max_llm_calls: int = 2  # model calls per turn
    max_new_tokens: int = 512  # tokens per model call
    constrain: bool = True  # calls decoded under the offered tools' lazy grammar (text answers stay the model's)

    @property
    def concurrency(self) -> int:
        """Turns let into the app at once (Gradio's ``concurrency_limit``): those holding a model, those in line,
        and room to answer "busy" at once. The rest wait in Gradio's queue."""
        return self.max_resident + self.max_waiting + 2

    @classmethod
    def from_settings(cls, settings: dict, where: str = "settings", **overrides) -> "ServingLimits":
        """Limits from a models YAML's ``settings`` (unknown keys and bad values name ``where`` and the key);
        ``overrides`` that are not None win (command-line flags)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {}
        for key, value in {**settings, **{k: v for k, v in overrides.items() if v is not None}}.items():
            if key not in fields:
                raise ValueError(f"{where}: unknown setting {key!r}; known: {', '.join(fields)}")
            if value is None:
                continue
            if fields[key].type in ("bool", bool):
                if not isinstance(value, bool):
                    raise ValueError(f"{where}: setting {key!r} must be true or false, not {value!r}")
                values[key] = value
                continue
            kind = float if fields[key].type in ("float", float) else int
            try:
                values[key] = kind(value)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: setting {key!r} must be a number, not {value!r}") from None
            if values[key] <= 0 and key != "n_threads":
                raise ValueError(f"{where}: setting {key!r} must be positive, not {value!r}")
        return cls(**values)


def load_config(path: str | Path) -> tuple[list[ServedModel], dict]:
    """``(specs, settings)`` from a models YAML: ``models: [{name, repo, file | path, template, n_ctx}]`` and
    optional ``settings`` (the fields of :class:`ServingLimits`). Errors name the file and entry.
    ``{owner}`` in a ``repo`` is the project's owner (:func:`llamatune.hub.project_owner`)."""
    import yaml

    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected a non-empty 'models' list")
    specs, seen = [], set()
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or not e.get("name"):
            raise ValueError(f"{path}: models[{i}] needs a 'name'")
        if not (e.get("path") or (e.get("repo") and e.get("file"))):
            raise ValueError(f"{path}: models[{i}] ({e['name']}) needs 'path', or 'repo' and 'file'")
        if e["name"] in seen:
            raise ValueError(f"{path}: models[{i}]: duplicate name {e['name']!r}")
        seen.add(e["name"])
        known = {"name", "path", "repo", "file", "template", "n_ctx"}
        p, repo = e.get("path"), e.get("repo")
        if p and not Path(p).is_absolute():
            p = str((path.parent / p).resolve())
        if repo and "{owner}" in repo:
            from llamatune.hub import expand_owner

            repo = expand_owner(repo)
        specs.append(ServedModel(e["name"], p, repo, e.get("file"), e.get("template", "auto"),
                               int(e.get("n_ctx", 4096)), {k: v for k, v in e.items() if k not in known},
                               origin=f"{path}: models[{i}] ({e['name']})"))
    return specs, dict(data.get("settings") or {})


def models_from_dir(directory: str | Path, n_ctx: int = 4096) -> list[ServedModel]:
    """One spec per ``*.gguf`` under ``directory`` (e.g. what ``llamatune export`` or ``make demo`` wrote)."""
    directory = Path(directory)
    files = sorted(directory.rglob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf files under {directory}")
    return [ServedModel(f.stem if f.parent == directory else f"{f.parent.name}/{f.stem}", str(f), n_ctx=n_ctx)
            for f in files]


def default_model(names: list[str]) -> str:
    """The model a new visitor meets: the first function-calling fine-tune (the one the Space exists to show),
    else the first fine-tune, else the first model."""
    for marks in (("funccall",), ("tuned", "finetome")):
        hit = next((n for n in names if any(m in n.lower() for m in marks)), None)
        if hit:
            return hit
    return names[0]


def space_title(names: list[str]) -> str:
    """A title that names what is served: the models' common stem, then what tells them apart."""
    import os.path
    import re

    stem = os.path.commonprefix(list(names)) if len(names) > 1 else ""
    if not all(len(n) > len(stem) and n[len(stem)] in "-_ /" for n in names):  # cut at a word boundary
        stem = stem[: max((m.end() for m in re.finditer(r"[-_ /]", stem)), default=0)]
    parts = [n[len(stem):].strip(" -_/") or n for n in names]
    head = stem.strip(" -_/")
    return f"{head + ': ' if head else ''}{' vs '.join(parts)}, as tool-using agents on CPU"
