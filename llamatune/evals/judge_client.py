"""The judge's side of the wire: an OpenAI-compatible client with retries, a structured verdict, a JSONL cache.

* ``JudgeClient.ask(messages)`` calls ``chat.completions`` on any ``base_url`` with the verdict JSON schema,
  retrying 429 / 5xx / timeouts / connection errors with exponential backoff (``Retry-After`` honoured), and
  falls back from OpenAI's ``json_schema`` response format to llama.cpp's ``json_object`` + ``schema`` and
  then to plain text when an endpoint rejects it.
* ``VerdictCache`` is an append-only JSONL file keyed by a hash of (judge model, messages, settings); every
  verdict is fsync'ed as soon as it arrives, so an interrupted run loses nothing and a rerun pays for nothing
  twice.
* ``ask_all(client, requests, save)`` asks many on a thread pool; each worker saves its verdict the moment it
  arrives, and Ctrl-C / SIGTERM finishes and saves the requests in flight.

The API key is read from ``OPENAI_API_KEY`` by ``require_api_key()`` and is never logged or written.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from llamatune.jsonl import JsonlCache

# USD per 1M tokens (input, output), for the cost estimate only; override with --price-in/--price-out.
PRICES = {
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
}
RESPONSE_FORMATS = ("json_schema", "json_object", "text")


class JudgeError(RuntimeError):
    """A failure with a message meant for the user (exit code in ``code``)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def require_api_key() -> str:
    key = os.environ.get("OPENAI_API_KEY", "").strip()
    if not key:
        raise JudgeError("OPENAI_API_KEY is not set. Export it before running the judge (for a local "
                         "OpenAI-compatible server such as llama_cpp.server any non-empty value works).", code=2)
    return key


_KEYLIKE = re.compile(r"\b(sk|key)-[A-Za-z0-9_\-*.]{6,}")


def scrub(text: str) -> str:
    """``text`` without the API key or anything that looks like one (error messages may echo a masked key)."""
    key = os.environ.get("OPENAI_API_KEY", "").strip()
    if key:
        text = text.replace(key, "***")
    return _KEYLIKE.sub("***", text)


def verdict_schema(reason_max_chars: int = 400) -> dict:
    """JSON schema of a verdict: a short reason first (the judge explains before deciding), then the winner."""
    return {
        "type": "object",
        "properties": {
            "reason": {"type": "string", "maxLength": int(reason_max_chars)},
            "winner": {"type": "string", "enum": ["A", "B", "tie"]},
        },
        "required": ["reason", "winner"],
        "additionalProperties": False,
    }


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int,
             price_in: float | None = None, price_out: float | None = None) -> float | None:
    known = PRICES.get(model) or next((v for k, v in sorted(PRICES.items(), key=lambda kv: -len(kv[0]))
                                       if model.startswith(k + "-")), None)
    pin = price_in if price_in is not None else (known[0] if known else None)
    pout = price_out if price_out is not None else (known[1] if known else None)
    if pin is None or pout is None:
        return None
    return (prompt_tokens * pin + completion_tokens * pout) / 1e6


class VerdictCache(JsonlCache):
    """Append-only JSONL of judge answers, keyed by ``key(...)``; a later row (a retried invalid verdict) wins."""

    @staticmethod
    def key(model: str, messages: list[dict], settings: dict) -> str:
        blob = json.dumps([model, messages, settings], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    put = JsonlCache.add


def _is_format_rejection(err) -> bool:
    status = getattr(err, "status_code", None)
    return status in (400, 422, 500) and "response_format" in str(err)


class JudgeClient:
    """Thread-safe caller of one judge model (see module docstring)."""

    def __init__(self, model: str, *, base_url: str | None = None, response_format: str = "json_schema",
                 reason_max_chars: int = 400, max_tokens: int = 300, temperature: float = 0.0, timeout: float = 120.0,
                 max_retries: int = 6, backoff: float = 1.0, max_backoff: float = 60.0):
        import openai

        if response_format not in RESPONSE_FORMATS:
            raise ValueError(f"response_format must be one of {RESPONSE_FORMATS}")
        self.model, self.base_url, self.timeout = model, base_url, timeout
        self.client = openai.OpenAI(api_key=require_api_key(), base_url=base_url, timeout=timeout, max_retries=0)
        self.format = response_format
        self.schema = verdict_schema(reason_max_chars)
        self.max_tokens, self.temperature = max_tokens, temperature
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self._lock = threading.Lock()
        self.requests = 0  # HTTP requests actually sent (retries included)

    def check_key(self) -> None:
        """Ask the endpoint's free model list once, so that a refused key stops the run before any answer is
        generated or any verdict paid for (OpenAI answers 401 there too). An endpoint without the list, or one
        not reachable yet, is left to the first request, which names the problem."""
        import openai

        try:
            self.client.with_options(timeout=min(30.0, self.client.timeout or 30.0)).models.list()
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            status = getattr(e, "status_code", 401)
            raise JudgeError(f"the judge endpoint refused the API key ({status}): {scrub(e.message)}", code=2) from None
        except (openai.APIStatusError, openai.APIConnectionError):
            pass

    def settings(self) -> dict:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, "schema": self.schema}

    def _response_format(self, fmt: str):
        if fmt == "json_schema":  # strict mode takes no length constraints: the limit is stated in the prompt
            strict = json.loads(json.dumps(self.schema))
            strict["properties"]["reason"].pop("maxLength", None)
            return {"type": "json_schema", "json_schema": {"name": "verdict", "schema": strict, "strict": True}}
        if fmt == "json_object":  # llama-cpp-python's server: a grammar built from the schema
            return {"type": "json_object", "schema": self.schema}
        return None

    def _sleep(self, attempt: int, err) -> None:
        delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2)
        try:
            retry_after = float(err.response.headers.get("retry-after"))
            delay = min(self.max_backoff, max(delay, retry_after))
        except (AttributeError, TypeError, ValueError):
            pass
        time.sleep(delay)

    def ask(self, messages: list[dict]) -> dict:
        """``{"text", "prompt_tokens", "completion_tokens", "format"}``; raises ``JudgeError`` when it gives up."""
        import openai

        attempt = 0
        while True:
            fmt = self.format
            kwargs = dict(model=self.model, messages=messages, temperature=self.temperature, max_tokens=self.max_tokens)
            rf = self._response_format(fmt)
            if rf is not None:
                kwargs["response_format"] = rf
            with self._lock:
                self.requests += 1
            try:
                resp = self.client.chat.completions.create(**kwargs)
            except openai.AuthenticationError as e:
                raise JudgeError(f"the judge endpoint refused the API key (401): {scrub(e.message)}", code=2) from None
            except (openai.APIStatusError, openai.APIConnectionError) as e:
                if fmt != "text" and _is_format_rejection(e):
                    with self._lock:  # this endpoint does not take that format: use the next one, for all threads
                        if self.format == fmt:
                            self.format = RESPONSE_FORMATS[RESPONSE_FORMATS.index(fmt) + 1]
                    continue
                status = getattr(e, "status_code", None)
                retryable = isinstance(e, openai.APIConnectionError) or status == 429 or (status or 0) >= 500
                if not retryable or attempt >= self.max_retries:
                    where = self.base_url or "the OpenAI API"
                    what = ("cannot reach the judge endpoint" if isinstance(e, openai.APIConnectionError)
                            else f"the judge endpoint answered HTTP {status}")
                    raise JudgeError(f"{what} ({where}) after {attempt + 1} attempt(s): {type(e).__name__}: "
                                     f"{scrub(str(e))[:300]}", code=3) from None
                self._sleep(attempt, e)
                attempt += 1
                continue
            choice = resp.choices[0] if resp.choices else None
            usage = resp.usage
            return {
                "text": (choice.message.content if choice and choice.message else "") or "",
                "finish_reason": choice.finish_reason if choice else None,
                "prompt_tokens": int(getattr(usage, "prompt_tokens", 0) or 0),
                "completion_tokens": int(getattr(usage, "completion_tokens", 0) or 0),
                "format": fmt,
            }


def _terminate(signum, frame):
    raise KeyboardInterrupt("terminated")


def ask_all(client: JudgeClient, requests: list[tuple], save, *, concurrency: int = 4, progress: bool = True,
            desc: str = "judge") -> dict:
    """Ask every ``(job id, key, messages)`` of ``requests`` on ``concurrency`` threads; ``save(job_id, key, reply)``
    runs in the worker the moment a reply arrives, so a paid verdict is on disk before anything else happens (a
    hard kill loses at most the requests in flight). The first :class:`JudgeError` stops the asking (the rest would
    fail the same way); Ctrl-C, or SIGTERM from the main thread, cancels what has not started and saves what is in
    flight. Returns the counts of this run: ``{"prompt_tokens", "completion_tokens", "verdicts", "errors",
    "interrupted"}``."""
    from tqdm import tqdm

    def ask(jid, key, messages) -> dict:
        r = client.ask(messages)
        save(jid, key, r)
        return r

    done_counts = {"prompt_tokens": 0, "completion_tokens": 0, "verdicts": 0, "errors": [], "interrupted": False}
    pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
    pending = {pool.submit(ask, *request) for request in requests}
    bar = tqdm(total=len(pending), desc=desc, disable=not progress)

    def record(fut) -> None:  # main thread: the counts and the progress bar
        try:
            r = fut.result()
        except JudgeError as e:
            done_counts["errors"].append(e)
            return
        done_counts["prompt_tokens"] += r["prompt_tokens"]
        done_counts["completion_tokens"] += r["completion_tokens"]
        done_counts["verdicts"] += 1
        bar.update()

    def drain(pending) -> None:  # cancel what has not started, keep what is in flight
        for f in pending:
            f.cancel()
        done, _ = wait([f for f in pending if not f.cancelled()], timeout=client.timeout + 5)
        for f in done:
            record(f)

    previous_term = None
    if threading.current_thread() is threading.main_thread():  # `kill` (SIGTERM) is handled like Ctrl-C
        previous_term = signal.signal(signal.SIGTERM, _terminate)
    try:
        while pending and not done_counts["errors"]:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for fut in done:
                record(fut)
        if done_counts["errors"]:  # stop asking: the rest would fail the same way
            drain(pending)
    except KeyboardInterrupt:
        done_counts["interrupted"] = True
        print("\ninterrupted: saving the verdicts in flight (Ctrl-C again to abort) ...", file=sys.stderr)
        try:
            drain(pending)
        except KeyboardInterrupt:
            pass
    finally:
        bar.close()
        pool.shutdown(wait=False, cancel_futures=True)
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
    return done_counts
