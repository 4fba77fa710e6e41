"""Which model, and which exact weights: the model spec string and the content fingerprint that cache keys use.

A model spec is ``path/to/model.gguf`` (llama.cpp) or ``DIR_OR_HF_ID[+peft=ADAPTER_DIR]`` (transformers, or vLLM);
:func:`fingerprint` hashes every weight and config file whole, so a model re-exported to the same path is a new
model to every cache (generation, judge answers, BFCL, ARC, Colab's export stamp). A leaf: no package imports, so
the caches can name a model without loading a generator.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelSpec:
    kind: str  # "gguf" | "hf"
    path: str
    peft: str | None = None

    @property
    def label(self) -> str:
        name = Path(self.path).name or self.path
        return f"{name}+{Path(self.peft).name}" if self.peft else name


def parse_spec(spec: str, peft: str | None = None) -> ModelSpec:
    """``X.gguf`` → llama.cpp; ``DIR[+peft=ADAPTER]`` or an HF id → transformers."""
    if not spec:
        raise ValueError("empty model spec")
    base, _, rest = spec.partition("+peft=")
    if rest and peft and rest != peft:
        raise ValueError(f"model spec {spec!r} names an adapter and peft={peft!r} names another")
    adapter = rest or peft
    if base.lower().endswith(".gguf"):
        if adapter:
            raise ValueError(f"{spec!r}: a GGUF cannot take a peft adapter (merge and export it instead)")
        if not Path(base).is_file():
            raise FileNotFoundError(f"GGUF not found: {base}")
        return ModelSpec("gguf", base)
    if adapter and not Path(adapter).exists():
        raise FileNotFoundError(f"peft adapter directory not found: {adapter}")
    return ModelSpec("hf", base, adapter)


_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime_ns) -> sha256, so a process hashes a file once


def _file_digest(h, path: Path) -> None:
    """Name, size and the sha256 of the whole content (a re-exported GGUF of the same size differs in the middle:
    a LoRA merge changes every layer, not the first or last MiB)."""
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        with open(path, "rb") as f:
            _DIGESTS[memo] = hashlib.file_digest(f, "sha256").hexdigest()
    h.update(f"{path.name}:{st.st_size}:{_DIGESTS[memo]}".encode())


def fingerprint(spec: ModelSpec | str) -> str:
    """A short content hash of a model (every weight/config file, whole), for cache keys."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    h = hashlib.sha256(spec.kind.encode())
    for root in [spec.path] + ([spec.peft] if spec.peft else []):
        p = Path(root)
        if p.is_file():
            _file_digest(h, p)
        elif p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix in {".json", ".safetensors", ".bin", ".model", ".jinja"}:
                    _file_digest(h, f)
        else:  # a hub id: the name is all we know
            h.update(root.encode())
    return h.hexdigest()[:16]


def model_kind(spec) -> str:
    """``"gguf"`` or ``"hf"`` for a local model; ``ValueError`` naming the path for anything else."""
    p = Path(spec)
    if p.suffix == ".gguf" and p.is_file():
        return "gguf"
    if p.is_dir() and (p / "config.json").exists():
        return "hf"
    raise ValueError(f"--model {spec}: expected a .gguf file or an HF model directory with config.json")
