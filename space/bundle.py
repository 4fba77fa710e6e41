"""Make a self-contained Hugging Face Space folder: app.py, models.yaml, requirements.txt, README.md and a copy
of the ``llamatune`` package (Python files and templates only), ready to push to a Space repository.

    python space/bundle.py OUT_DIR [--models-yaml other.yaml]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FILES = ("app.py", "models.yaml", "requirements.txt", "README.md")


def bundle(out: str | Path, models_yaml: str | Path | None = None) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy2(HERE / name, out / name)
    if models_yaml:
        shutil.copy2(models_yaml, out / "models.yaml")
    dst = out / "llamatune"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(REPO / "llamatune", dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--models-yaml", help="use this models file instead of space/models.yaml")
    args = p.parse_args(argv)
    print(f"Space bundle written to {bundle(args.out, args.models_yaml)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
