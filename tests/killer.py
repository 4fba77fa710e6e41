"""Run a ``llamatune`` command and ``kill -9`` it, with its whole process group, at a chosen point (used by
tests/test_kills.py, the random-point half of the fault matrix).

    python -m tests.killer --root DIR --count FILE -- ARGS...     # run to the end; FILE gets the events seen
    python -m tests.killer --root DIR --at N -- ARGS...           # SIGKILL just before the N-th event
    python -m tests.killer --root DIR --after S -- ARGS...        # SIGKILL S seconds after the first event

An *event* is a change the job is about to make to the file system under ``DIR``, seen through Python's audit
hooks (``sys.addaudithook``), so the command runs unmodified: a file opened for writing, a rename/replace, a
remove, a directory made or removed, a subprocess started (a converter, a quantizer); writers that bypass
Python's ``open`` (safetensors, ``torch.save``) are wrapped, with an event after they wrote at which the kill
leaves the file torn in half. Killing before the N-th
event for every N reaches every boundary a real crash can fall on: between two files of a checkpoint, after a
temp file is written but before its rename, between a row and its cache line. ``--after`` kills at an
arbitrary instruction instead (inside a write, inside a child process). A fork keeps the hook, and the process
group dies together, so a child can't outlive its parent's kill.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
PATH_EVENTS = {"os.rename": 1, "os.remove": 0, "os.rmdir": 0, "os.mkdir": 0, "os.truncate": 0,
               "shutil.rmtree": 0, "shutil.move": 1, "shutil.copyfile": 1, "os.link": 1, "os.symlink": 1}


def _under(path, root: str) -> bool:
    if isinstance(path, int) or path is None:
        return False
    try:
        return os.path.abspath(os.fsdecode(path)).startswith(root)
    except (TypeError, ValueError):
        return False


class Killer:
    def __init__(self, root: str, at: int = 0, after: float | None = None):
        self.root, self.at, self.after = os.path.abspath(root) + os.sep, at, after
        self.events: list[str] = []
        self.first: float | None = None
        self.pid = os.getpid()

    def hook(self, event: str, args) -> None:
        if os.getpid() != self.pid:  # a forked worker: its parent counts, the group dies together
            return
        if event == "open":
            path, flags = args[0], args[2]
            if not (isinstance(flags, int) and flags & WRITE_FLAGS and _under(path, self.root)):
                return
            name = f"open {os.fsdecode(path)}"
        elif event in PATH_EVENTS:
            if not _under(args[PATH_EVENTS[event]], self.root):
                return
            name = f"{event} {os.fsdecode(args[PATH_EVENTS[event]])}"
        elif event == "subprocess.Popen":
            name = f"spawn {os.fsdecode(args[0]) if args[0] else args[1]}"
        else:
            return
        self.event(name)

    def event(self, name: str, tear: str | None = None) -> None:
        self.events.append(name)
        if self.first is None:
            self.first = time.monotonic()
            if self.after is not None:
                threading.Thread(target=self._later, daemon=True).start()
        if self.at and len(self.events) == self.at:
            if tear is not None:  # the kernel keeps what a killed writer had written: half the file
                os.truncate(tear, os.path.getsize(tear) // 2)
            self.die()

    def native(self, fn, path_arg: int, key: str):
        """Wrap a writer that does not go through Python's ``open`` (safetensors, ``torch.save``): an event before
        it starts, and one after it wrote, at which a kill leaves the file torn in half."""

        def wrapped(*a, **k):
            path = a[path_arg] if len(a) > path_arg else k.get(key)
            ours = isinstance(path, (str, os.PathLike)) and _under(path, self.root) and os.getpid() == self.pid
            if ours:
                self.event(f"open {os.fsdecode(path)}")
            out = fn(*a, **k)
            if ours:
                self.event(f"tear {os.fsdecode(path)}", tear=os.fsdecode(path))
            return out

        return wrapped

    def _later(self) -> None:
        time.sleep(self.after)
        self.die()

    def die(self) -> None:
        sys.stderr.write(f"[killer] kill -9 at event {len(self.events)}: {self.events[-1] if self.events else '-'}\n")
        sys.stderr.flush()
        os.killpg(os.getpgid(0), signal.SIGKILL)


class _WrapOnImport:
    """A meta-path finder that wraps ``safetensors.torch.save_file`` and ``torch.save`` right after the job imports
    them (before anything binds them by name, ``from safetensors.torch import save_file``), so that a job that
    never imports torch does not pay for it here."""

    TARGETS: dict = {"safetensors.torch": ("save_file", 1, "filename"), "torch": ("save", 1, "f")}

    def __init__(self, killer: Killer):
        self.killer, self.busy = killer, set()

    def find_spec(self, name, path=None, target=None):
        if name not in self.TARGETS or name in self.busy:
            return None
        import importlib.util

        self.busy.add(name)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.busy.discard(name)
        if spec is None or spec.loader is None:
            return spec
        attr, path_arg, key = self.TARGETS[name]
        run, killer = spec.loader.exec_module, self.killer

        def exec_module(module):
            run(module)
            setattr(module, attr, killer.native(getattr(module, attr), path_arg, key))

        spec.loader.exec_module = exec_module
        return spec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True)
    p.add_argument("--at", type=int, default=0)
    p.add_argument("--after", type=float)
    p.add_argument("--count", help="write {'events': [...], 'span_s': seconds from the first event to the end}")
    p.add_argument("args", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    killer = Killer(a.root, a.at, a.after)
    sys.addaudithook(killer.hook)
    sys.meta_path.insert(0, _WrapOnImport(killer))
    from llamatune import cli

    try:
        rc = cli.main(args)
    finally:
        if a.count:
            span = time.monotonic() - killer.first if killer.first is not None else 0.0
            with open(a.count, "w") as f:  # outside --root: not an event
                json.dump({"events": killer.events, "span_s": span}, f)
    return rc


if __name__ == "__main__":
    sys.exit(main())
