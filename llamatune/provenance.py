"""What a result was made with: package versions and the git commit of this checkout (for run.json and results).

    python -m llamatune.provenance      # print both as JSON
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

CORE = ("torch", "transformers", "trl", "peft", "datasets", "accelerate")


def package_versions(extra: list[str] | tuple[str, ...] = ()) -> dict:
    """Installed versions of llamatune, Python and the ML packages (None when not installed)."""
    import llamatune

    out = {"llamatune": llamatune.__version__, "python": sys.version.split()[0]}
    for name in (*CORE, *extra):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_info() -> dict:
    """Commit and dirty flag of the checkout that holds this package (None outside a git checkout)."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if commit.returncode:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def cpu_info() -> dict:
    """The CPU a result was measured on: model name, vendor, logical CPUs and the SIMD extensions that change
    llama.cpp's and torch's kernels (greedy results repeat on one CPU, not across CPUs with other kernels)."""
    import os
    import platform

    info = {"model": platform.processor() or platform.machine(), "vendor": None, "logical_cpus": os.cpu_count(),
            "simd": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    fields = dict(line.split(":", 1) for line in text.splitlines()[:40] if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    info.update(model=fields.get("model name", info["model"]), vendor=fields.get("vendor_id"),
                simd=[f for f in ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile",
                                  "amx_int8", "amx_bf16") if f in flags])
    return info


def project_repository() -> str:
    """``[project.urls] Repository`` of pyproject.toml (a clone) or of the installed package's metadata."""
    import tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.exists():
        url = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {}).get("urls", {}).get("Repository")
        if url:
            return url
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        urls = metadata("llamatune").get_all("Project-URL") or []
    except PackageNotFoundError:
        urls = []
    for entry in urls:
        label, _, url = entry.partition(",")
        if label.strip().lower() == "repository":
            return url.strip()
    raise LookupError("cannot find the project's Repository URL (pyproject.toml [project.urls] or package metadata)")


if __name__ == "__main__":
    print(json.dumps({"versions": package_versions(), "git": git_info(), "cpu": cpu_info()}, indent=2))
