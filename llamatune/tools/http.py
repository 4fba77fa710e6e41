"""HTTP for tools: timeouts, one retry, a short-TTL cache, and errors a user can read.

The timeout bounds the whole answer (a server that trickles a byte a second still times out), a response over
``MAX_BYTES`` is refused, and the cache keeps at most ``CACHE_MAX`` answers (oldest out first).

Tools never raise on network trouble: a :class:`ToolError` carries a message meant for the end user
("The weather service did not answer within 8 s."), and the agent turns it into an answer.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from typing import Any

DEFAULT_TIMEOUT = float(os.environ.get("LLAMATUNE_TOOL_TIMEOUT", 8.0))  # seconds; read at call time
RETRY_DELAY = 0.5
CACHE_TTL = 300.0
CACHE_MAX = 256  # answers kept
MAX_BYTES = 2 * 2**20  # a weather or Wikipedia answer is a few KB; anything this big is not one
USER_AGENT = "llamatune-agent/0.1 (https://github.com/llamatune; research demo)"


class ToolError(Exception):
    """A failure a user should read (unknown place, no article, service down). ``str(e)`` is that message."""


_cache: OrderedDict[tuple, tuple[float, Any]] = OrderedDict()
_lock = threading.Lock()


def clear_cache() -> None:
    with _lock:
        _cache.clear()


def get_json(url: str, params: dict, *, service: str, timeout: float | None = None, retries: int = 1,
             ttl: float | None = None, accept: tuple[int, ...] = ()) -> Any:
    """GET ``url`` with ``params`` and return the decoded JSON; cached for ``ttl`` seconds.

    Timeouts, connection errors and 5xx/429 answers are retried ``retries`` times; then a :class:`ToolError`
    naming ``service`` is raised. A 4xx answer is not retried; statuses in ``accept`` (e.g. 404, whose body
    says "not found") return their JSON body instead. ``timeout`` defaults to ``DEFAULT_TIMEOUT``
    (``$LLAMATUNE_TOOL_TIMEOUT``).
    """
    import requests

    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    ttl = CACHE_TTL if ttl is None else ttl
    key = (url, tuple(sorted(params.items())))
    now = time.monotonic()
    with _lock:
        hit = _cache.get(key)
        if hit and now - hit[0] < ttl:
            _cache.move_to_end(key)
            return hit[1]
    last = ""
    for attempt in range(retries + 1):
        try:
            resp = _get(requests, url, params, timeout, service)
        except requests.Timeout:
            last = f"The {service} did not answer within {timeout:g} s."
        except requests.RequestException as exc:
            last = f"The {service} could not be reached ({type(exc).__name__})."
        else:
            if resp.status_code in accept:
                try:
                    return resp.json()
                except ValueError:
                    raise ToolError(f"The {service} sent an answer that is not JSON.") from None
            if resp.status_code >= 500 or resp.status_code == 429:
                last = f"The {service} is unavailable right now (HTTP {resp.status_code})."
            elif resp.status_code >= 400:
                raise ToolError(f"The {service} rejected the request (HTTP {resp.status_code}).")
            else:
                try:
                    data = resp.json()
                except (ValueError, json.JSONDecodeError):
                    raise ToolError(f"The {service} sent an answer that is not JSON.") from None
                with _lock:
                    _cache[key] = (time.monotonic(), data)
                    _cache.move_to_end(key)
                    while len(_cache) > CACHE_MAX:
                        _cache.popitem(last=False)
                return data
        if attempt < retries:
            time.sleep(RETRY_DELAY)
    raise ToolError(last)


def _get(requests, url: str, params: dict, timeout: float, service: str):
    """``requests.get`` whose body is read within ``timeout`` seconds in all and capped at ``MAX_BYTES``."""
    deadline = time.monotonic() + timeout
    resp = requests.get(url, params=params, timeout=timeout, headers={"User-Agent": USER_AGENT}, stream=True)
    body = bytearray()
    try:
        for chunk in resp.iter_content(16384):
            body += chunk
            if len(body) > MAX_BYTES:
                raise ToolError(f"The {service} sent more than {MAX_BYTES // 2**20} MiB; the answer was refused.")
            if time.monotonic() > deadline:
                raise requests.Timeout(f"body not complete within {timeout:g} s")
    finally:
        resp.close()
    resp._content = bytes(body)  # what resp.json() / resp.text read
    return resp
