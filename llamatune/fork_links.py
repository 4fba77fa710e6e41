"""Point a fork at itself: pyproject's ``[project.urls] Repository``, every notebook's Colab badge and clone cell,
and the README files' badges and links (standard library only, so it runs before anything is installed).

    make colab-links REPO=user/name          # = python -m llamatune.fork_links --repo user/name
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

_SLUG = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")
_REPOSITORY_LINE = re.compile(r'(?m)^(Repository\s*=\s*)"([^"]*)"')
_BADGE = re.compile(r"https://colab\.research\.google\.com/github/[^/\s)\"'\]]+/[^/\s)\"'\]]+/blob/"
                    r"(?P<branch>[^/\s)\"'\]]+)/(?P<path>[^\s)\"'\]]+?\.ipynb)")
_CLONE = re.compile(r"(git clone (?:-\S+ )*)https://github\.com/[^/\s\"']+/[^/\s\"']+?(?:\.git)?(?=[\s\"']|$)")
_SKIP_DIRS = {"runs", "data", "results", "node_modules", "__pycache__"}


def _slug(repo: str) -> str:
    slug = repo.strip().removeprefix("https://").removeprefix("github.com/").removesuffix(".git").strip("/")
    if not _SLUG.match(slug):
        raise ValueError(f"--repo {repo!r}: expected user/name (a GitHub repository)")
    return slug


def _walk(root: Path, pattern: str):
    for p in sorted(root.rglob(pattern)):
        rel = p.relative_to(root).parts
        if not any(part.startswith(".") or part in _SKIP_DIRS for part in rel[:-1]):
            yield p


def _rewrite_text(text: str, old_url: str | None, new_url: str, slug: str, own: str | None = None) -> str:
    """Badges point at ``slug`` (and, when ``own`` is given, at that notebook path); clone lines and the old
    repository URL at ``new_url``."""

    def badge(m: re.Match) -> str:
        return f"https://colab.research.google.com/github/{slug}/blob/{m['branch']}/{own or m['path']}"

    text = _BADGE.sub(badge, text)
    text = _CLONE.sub(lambda m: m.group(1) + new_url, text)
    if old_url and old_url != new_url:
        text = re.sub(re.escape(old_url) + r"(?![\w.-])", new_url, text)
    return text


def _rewrite_notebook(path: Path, own: str, old_url: str | None, new_url: str, slug: str) -> bool:
    raw = path.read_text(encoding="utf-8")
    nb = json.loads(raw)
    badge_done = False
    for cell in nb.get("cells", []):
        src = cell.get("source", "")
        text = "".join(src) if isinstance(src, list) else src
        first_badge = not badge_done and "colab-badge.svg" in text
        new = _rewrite_text(text, old_url, new_url, slug, own if first_badge else None)
        badge_done = badge_done or first_badge
        if new != text:
            cell["source"] = new.splitlines(keepends=True) if isinstance(src, list) else new
    out = json.dumps(nb, indent=1, ensure_ascii=False, sort_keys=True) + "\n"  # nbformat's own layout
    if out != raw:
        path.write_text(out, encoding="utf-8")
        return True
    return False


def links(root: str | Path, repo: str) -> list[Path]:
    """Point the repository at ``repo`` (``user/name``): pyproject's ``[project.urls] Repository``, every
    notebook's Colab badge (at that notebook's own path) and clone command, and the README files' Colab badges
    and repository links. Returns the files it changed."""
    root = Path(root)
    slug = _slug(repo)
    new_url = f"https://github.com/{slug}"
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    m = _REPOSITORY_LINE.search(text)
    if m is None:
        raise ValueError(f"{pyproject}: no 'Repository = \"...\"' line under [project.urls]")
    old_url = m.group(2).rstrip("/")
    changed = []
    new_text = _REPOSITORY_LINE.sub(lambda m: f'{m.group(1)}"{new_url}"', text, count=1)
    if new_text != text:
        pyproject.write_text(new_text, encoding="utf-8")
        changed.append(pyproject)
    for nb in _walk(root, "*.ipynb"):
        if _rewrite_notebook(nb, nb.relative_to(root).as_posix(), old_url, new_url, slug):
            changed.append(nb)
    for md in _walk(root, "README.md"):
        text = md.read_text(encoding="utf-8")
        new_text = _rewrite_text(text, old_url, new_url, slug)
        if new_text != text:
            md.write_text(new_text, encoding="utf-8")
            changed.append(md)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llamatune.fork_links", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", required=True, help="user/name of the GitHub repository")
    parser.add_argument("--root", default=Path(__file__).resolve().parents[1], type=Path,
                        help="the checkout (default: this one)")
    args = parser.parse_args(argv)

    def run(args) -> int:
        changed = links(args.root, args.repo)
        slug = _slug(args.repo)
        for path in changed:
            print(f"updated {path}")
        print(f"{len(changed)} file(s) now point at https://github.com/{slug}" if changed else
              f"nothing to change: everything already points at https://github.com/{slug}")
        return 0

    from llamatune.cli import run as run_command

    return run_command(run, args, "make colab-links")


if __name__ == "__main__":
    sys.exit(main())
