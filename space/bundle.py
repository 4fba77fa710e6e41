"""Make a self-contained Hugging Face Space folder: app.py, requirements.txt, models.yaml, README.md (front matter
``models:`` and ``preload_from_hub:`` generated from models.yaml) and a copy of the ``llamatune`` package next to
app.py. A thin wrapper over :func:`llamatune.hub.bundle`, the same files ``llamatune push --space`` uploads.

    python space/bundle.py OUT_DIR [--models-yaml other.yaml]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this clone's llamatune, installed or not

from llamatune.hub import bundle  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out")
    p.add_argument("--models-yaml", help="use this models file instead of space/models.yaml")
    args = p.parse_args(argv)
    print(f"Space bundle written to {bundle(args.out, args.models_yaml)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
