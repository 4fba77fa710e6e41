"""Start ``python -m llama_cpp.server`` on 127.0.0.1 and a free port (for the server cross-check and local judges).

    with LlamaCppServer("model.gguf") as srv:
        print(srv.base_url)          # http://127.0.0.1:PORT/v1  (OpenAI-compatible)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def server_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default ``os.environ``) without the variables that ``llama_cpp.server`` reads as settings.

    Its settings are pydantic-settings models that read *every* field from the environment, case-insensitively
    and without a prefix: ``CACHE=/some/dir`` (e.g. ``make test CACHE=...``) makes it exit with a validation
    error, and ``N_CTX``, ``SEED``, ``CHAT_FORMAT``… would silently change the server. Only the command line
    configures the servers this project starts.
    """
    environ = dict(os.environ if environ is None else environ)
    try:
        from llama_cpp.server.settings import ModelSettings, ServerSettings
    except ImportError:  # the server cannot start anyway; let it say why
        return environ
    fields = set(ModelSettings.model_fields) | set(ServerSettings.model_fields)
    return {k: v for k, v in environ.items() if k.lower() not in fields}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaCppServer:
    """A llama-cpp-python server subprocess; ``url`` is the root, ``base_url`` the OpenAI ``/v1`` root."""

    def __init__(self, model_path: str | Path, *, n_ctx: int = 2048, port: int | None = None,
                 extra_args: list[str] | None = None, startup_timeout: float = 120.0,
                 log_path: str | Path | None = None):
        if not Path(model_path).is_file():
            raise FileNotFoundError(f"GGUF not found: {model_path}")
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + "/v1"
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--host", "127.0.0.1",
               "--port", str(self.port), "--n_ctx", str(n_ctx), *(extra_args or [])]
        # the server logs every request: send it to a file (a pipe nobody reads would fill up and block it)
        self._log = open(log_path, "a+b") if log_path else tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=server_env())
        self._wait(startup_timeout)

    def _wait(self, timeout: float) -> None:
        import requests

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.flush()
                self._log.seek(0)
                err = self._log.read().decode(errors="replace")
                if len(err) > 3000:  # a settings error comes first, then the whole --help: keep both ends
                    err = err[:1500] + "\n[...]\n" + err[-1500:]
                raise RuntimeError(f"llama_cpp.server exited with code {self.proc.returncode}:\n{err}")
            try:
                if requests.get(self.base_url + "/models", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.close()
        raise TimeoutError(f"llama_cpp.server did not answer on {self.url} within {timeout:.0f} s")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
