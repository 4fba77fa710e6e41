"""The Space under load: many users at once on the real llama.cpp models, driven through gradio_client.

    PYTHONPATH=. python bench/space_load.py [--sessions 16] [--models-dir runs/demo/gguf] [--build-smollm2]

Starts ``space/app.py`` (a subprocess, the models of ``--models-dir``, the owner's default limits) with the offline
Open-Meteo and MediaWiki fakes, warms each model once, then runs N sessions at once (started within
``--ramp`` seconds). Each session is a 3-turn conversation in its own mode and model: weather for its own city,
research on its own topic, or chat about its own thing. Session i:

* i % 4 == 1 switches to the other model on turn 2 (and stays there);
* i % 4 == 3 closes its connection in the middle of turn 2, as a closed browser tab does (every other one while
  it waits for the model, the others once the model has started on it), and comes back as a new visitor for
  turn 3 (empty history).

``--build-smollm2`` first writes two small GGUFs into an empty ``--models-dir`` (SmolLM2-135M-Instruct f16 and
Q8_0, converted from the embedded model as ``tests/conftest.py`` does for the tiny one), so model switches
happen between two real models. One JSON line:

* ``sessions``, ``turns`` (sent), ``answered``, ``told_to_wait`` (the Space's "busy, try again" answer, or
  Gradio's queue-full refusal), ``closed`` (the closing turns), ``failed`` (anything else: an error, no answer,
  a client timeout);
* ``answered_fraction`` = (answered + told to wait) ÷ (turns − closed) (target 1.0);
* ``cross_talk``: answers (tool traces included) that name another session's city, topic or thing (target 0);
  ``wrong_model``: answers whose summary line names another model than the one the session chose;
* ``p50_s`` / ``p95_s``: seconds from submit to the last update, over answered turns; ``queue_wait_p50_s`` /
  ``queue_wait_p95_s``: from submit until the turn held its model (the server's turn log);
* ``rss_start_mb`` (after the warm-up) / ``rss_end_mb`` (after the run and one more turn on the warm-up's last
  model, so that the same model is resident) / ``rss_peak_mb`` of the server process, ``rss_growth_mb``;
* ``stuck_after_disconnect``: turns that waited while a model was held for a closed session, i.e. a hold that
  began after its client had gone, or lasted more than ``GRACE_S`` past the close (target 0);
* ``closed_while_streaming``: closing turns whose answer had begun when they closed (the others closed while
  waiting); ``model_switches``: turns served on another model than the turn before (each one reloads a model).

Exit code 1 when a target is missed (the JSON line is printed either way).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

GRACE_S = 2.0  # a closed session may finish the step it was in; holding the model longer than this is "stuck"
RSS_GROWTH_TARGET_MB = 100

# Every session's own subject; the fakes learn the cities and topics they do not know yet.
CITIES = [("Reykjavik", 64.1466, -21.9426), ("Montevideo", -34.9011, -56.1645), ("Tbilisi", 41.7151, 44.8271),
          ("Ulaanbaatar", 47.8864, 106.9057), ("Hanoi", 21.0278, 105.8342), ("Windhoek", -22.5609, 17.0658),
          ("Helsinki", 60.1699, 24.9384), ("Quito", -0.1807, -78.4678), ("Winnipeg", 49.8951, -97.1384),
          ("Kathmandu", 27.7172, 85.324), ("Valparaiso", -33.0472, -71.6127), ("Bergen", 60.3913, 5.3221)]
TOPICS = {"Ada Lovelace": "Lovelace", "Titan (moon)": "Titan", "Rosetta Stone": "Rosetta",
          "Tardigrade": "Tardigrade", "Antikythera mechanism": "Antikythera", "Terracotta Army": "Terracotta",
          "Panama Canal": "Panama", "Fibonacci sequence": "Fibonacci", "Photosynthesis": "Photosynthesis",
          "Great Barrier Reef": "Barrier Reef", "Chernobyl disaster": "Chernobyl"}
THINGS = ["octopus", "sourdough", "origami", "harmonica", "bonsai", "crossword", "saxophone", "kombucha",
          "trampoline", "lighthouse", "hedgehog"]
TURNS = {
    "weather": ["What's the weather like in {x} right now?", "And what about the next three days there?",
                "Thanks! Should I pack an umbrella?"],
    "research": ["Who or what is {x}? Look it up on Wikipedia.", "Tell me one more interesting fact about it.",
                 "Summarize that in one sentence."],
    "chat": ["Tell me something fun about {x}.", "Give me one more fact about that.",
             "Now write a two-line poem about it."],
}


def teach_fakes() -> None:
    """Add the sessions' cities and topics to the offline fakes (this process serves them)."""
    from llamatune.tools import fakes

    for name, lat, lon in CITIES:
        fakes.PLACES.setdefault(name.lower(), [{
            "id": abs(hash(name)) % 10**7, "name": name, "latitude": lat, "longitude": lon, "elevation": 50.0,
            "feature_code": "PPLC", "country_code": "XX", "timezone": "UTC", "population": 500000,
            "country": "Somewhere", "admin1": name}])
    for title in TOPICS:
        fakes.ARTICLES.setdefault(title, f"{title} is the subject of this short test article about {title}.")


def plan(n: int, models: list[str], seed: int) -> list[dict]:
    """The sessions: mode, subject, model per turn, and whether (and when) turn 2 closes its connection."""
    rng = random.Random(seed)
    subjects = {"weather": [c[0] for c in CITIES], "research": list(TOPICS), "chat": list(THINGS)}
    out = []
    for i in range(n):
        mode = ("weather", "research", "chat")[i % 3]
        pool = subjects[mode]
        subject = pool[(i // 3) % len(pool)]
        first = models[i % len(models)]
        other = models[(i + 1) % len(models)]
        out.append({"i": i, "mode": mode, "subject": subject,
                    "keyword": TOPICS.get(subject, subject),
                    "models": [first, other if i % 4 == 1 else first, other if i % 4 == 1 else first],
                    "close_turn2": ("waiting" if (i // 4) % 2 == 0 else "streaming") if i % 4 == 3 else None,
                    "start": rng.uniform(0, 1), "think": [rng.uniform(0.3, 1.5) for _ in range(3)]})
    return out


def classify(reply) -> str:
    if not isinstance(reply, list):
        return "failed"
    titles = [(m.get("metadata") or {}).get("title") or "" for m in reply if isinstance(m, dict)]
    if any("LLM call" in t for t in titles):
        return "answered"
    text = " ".join(str(m.get("content", "")) for m in reply if isinstance(m, dict)).lower()
    return "told_to_wait" if "try again" in text else "failed"


def reply_text(reply) -> str:
    return " ".join(str(m.get("content", "")) for m in reply if isinstance(m, dict)) if isinstance(reply, list) else ""


def answering(reply) -> bool:
    """Whether a reply (a list of chat messages) has begun its answer: a message with text and no metadata title."""
    return isinstance(reply, list) and any(isinstance(m, dict) and m.get("content")
                                           and not (m.get("metadata") or {}).get("title") for m in reply)


def closing_turn(client, message: str, args: tuple, when: str, timeout: float) -> dict:
    """Submit through the client's own session and URLs, read the event stream, and close the connection: at the
    first update (``waiting``) or once the answer has begun streaming (``streaming``)."""
    import httpx
    from gradio_client.utils import apply_diff

    fn_index = client._infer_fn_index("/respond", None)
    endpoint = client.endpoints[fn_index]
    data = list(endpoint.insert_empty_state(message, *args))
    body = {"data": data, "fn_index": fn_index, "session_hash": client.session_hash, "event_data": None,
            "trigger_id": None}
    t_submit = time.time()
    r = httpx.post(client.sse_data_url, json=body, timeout=30)
    r.raise_for_status()
    rec = {"t_submit": t_submit, "outcome": "closed", "t_close": None, "closed_while": when}
    outputs = None  # the first update is whole, the next ones are diffs against it
    with httpx.stream("GET", client.sse_url, params={"session_hash": client.session_hash},
                      timeout=httpx.Timeout(timeout)) as resp:
        for line in resp.iter_lines():
            if not line.startswith("data:"):
                continue
            msg = json.loads(line[5:])
            if msg.get("msg") == "process_completed":
                rec["outcome"] = "completed_before_close"
                break
            if msg.get("msg") != "process_generating":
                continue
            data = (msg.get("output") or {}).get("data") or []
            outputs = list(data) if outputs is None else [apply_diff(o, d) for o, d in zip(outputs, data)]
            if when == "waiting" or answering(outputs[0] if outputs else None):
                rec["closed_while"] = "streaming" if answering(outputs[0] if outputs else None) else "waiting"
                break
        rec["t_close"] = time.time()  # leaving the with-block closes the connection
    return rec


def run_session(url: str, s: dict, t0: float, turns: list, lock: threading.Lock, timeout: float) -> None:
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    time.sleep(max(0.0, t0 + s["start"] - time.time()))
    client = Client(url, verbose=False)
    for k in range(3):
        message = TURNS[s["mode"]][k].format(x=s["subject"])
        args = (s["models"][k], s["mode"], False)
        rec = {"session": s["i"], "turn": k + 1, "model": args[0], "mode": s["mode"], "who": client.session_hash}
        if k == 1 and s["close_turn2"]:
            try:
                rec.update(closing_turn(client, message, args, s["close_turn2"], timeout))
            except Exception as exc:  # noqa: BLE001
                rec.update(outcome="failed", error=f"{type(exc).__name__}: {exc}")
            client.close()
            client = Client(url, verbose=False)  # the visitor comes back in a new tab
        else:
            rec["t_submit"] = time.time()
            try:
                job = client.submit(message, *args, api_name="/respond")
                reply = job.result(timeout=timeout)
                rec.update(outcome=classify(reply), text=reply_text(reply),
                           summary=next((m.get("content") for m in reversed(reply) if isinstance(m, dict)
                                         and "LLM call" in ((m.get("metadata") or {}).get("title") or "")), None))
            except AppError as exc:
                rec.update(outcome="failed", error=f"AppError: {exc}")
            except Exception as exc:  # noqa: BLE001  (QueueError: Gradio's queue is full, told to wait)
                full = "queue is full" in str(exc).lower()
                rec.update(outcome="told_to_wait" if full else "failed", error=f"{type(exc).__name__}: {exc}")
            rec["t_done"] = time.time()
        with lock:
            turns.append(rec)
        time.sleep(s["think"][k])
    client.close()


def pct(xs: list[float], q: float) -> float | None:
    xs = sorted(xs)
    if not xs:
        return None
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return round(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo), 3)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stuck_after_disconnect(turns: list[dict], log: list[dict]) -> tuple[int, list[dict]]:
    """Turns that waited for a model while it was held for a session that had already closed its connection."""
    holds = []
    for t in turns:
        if t.get("outcome") != "closed" or not t.get("t_close"):
            continue
        for r in log:
            if r.get("who") == t["who"] and r["t_enter"] >= t["t_submit"] - 0.5 and r.get("t_acquired"):
                late = r["t_acquired"] > t["t_close"] or r["t_end"] - t["t_close"] > GRACE_S
                if late:
                    holds.append({"session": t["session"], "from": max(r["t_acquired"], t["t_close"]),
                                  "to": r["t_end"], "held_s_after_close": round(r["t_end"] - t["t_close"], 2)})
    stuck = {id(r) for h in holds for r in log
             if r["t_enter"] < h["to"] and (r.get("t_acquired") or r["t_end"]) > h["from"]}
    return len(stuck), holds


def match_log(turns: list[dict], log: list[dict]) -> None:
    """Attach each client turn's server record (same session, the first record entered after the submit)."""
    used = set()
    for t in sorted(turns, key=lambda t: t["t_submit"]):
        for j, r in enumerate(log):
            if j not in used and r.get("who") == t["who"] and r["t_enter"] >= t["t_submit"] - 0.5:
                used.add(j)
                t["server"] = r
                break


def build_smollm2(out: Path) -> None:
    """SmolLM2-135M-Instruct as f16 and Q8_0 GGUFs (from the embedded model), unless ``out`` has GGUFs."""
    if list(out.glob("*.gguf")):
        return
    from llamatune.gguf_convert import convert_hf_to_gguf, quantize
    from llamatune.smollm2 import smollm2_hf_dir

    out.mkdir(parents=True, exist_ok=True)
    f16 = convert_hf_to_gguf(smollm2_hf_dir(), out / "smollm2-135m-base-f16.gguf", "f16")
    quantize(f16, out / "smollm2-135m-base-q8_0.gguf", "q8_0")


def start_app(models_dir: str, port: int, env: dict, argv: list[str], log_dir: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO / "space" / "app.py"), "--models-dir", models_dir, "--host", "127.0.0.1",
           "--port", str(port), "--turn-log", str(log_dir / "turns.jsonl"), *argv]
    out = open(log_dir / "app.log", "w")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_up(url: str, proc: subprocess.Popen, timeout: float, log_dir: Path) -> None:
    import httpx

    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"space/app.py exited with {proc.returncode}:\n"
                             + (log_dir / "app.log").read_text()[-3000:])
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"space/app.py did not answer at {url} within {timeout:.0f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--models-dir", default="runs/demo/gguf")
    p.add_argument("--build-smollm2", action="store_true",
                   help="write two SmolLM2-135M GGUFs into an empty --models-dir")
    p.add_argument("--max-new-tokens", type=int, default=96, help="tokens per LLM call in the app (default 96)")
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads in the app (default: its own)")
    p.add_argument("--turn-timeout", type=float, default=900.0, help="the client gives up on a turn after this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep-logs", default=None, help="copy the app's log and turn log into this folder")
    a = p.parse_args(argv)

    from llamatune.serving import models_from_dir
    from llamatune.tools.fakes import FakeServices

    models_dir = Path(a.models_dir)
    if a.build_smollm2:
        build_smollm2(models_dir)
    models = [s.name for s in models_from_dir(models_dir)]
    teach_fakes()
    log_dir = Path(a.keep_logs or tempfile.mkdtemp(prefix="space_load-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "turns.jsonl").unlink(missing_ok=True)
    app_args = ["--max-new-tokens", str(a.max_new_tokens)] + (["--threads", str(a.threads)] if a.threads else [])
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with FakeServices(hang_seconds=5.0) as fake:
        env = {**os.environ, **fake.env, "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False"}
        proc = start_app(str(models_dir), port, env, app_args, log_dir)
        try:
            wait_up(url, proc, 180, log_dir)
            from gradio_client import Client

            warm = Client(url, verbose=False)
            for name in models:  # each model loaded once; the last stays resident
                warm.predict("Hello!", name, "chat", False, api_name="/respond")
            warm.close()
            time.sleep(1.0)
            rss_start = rss_mb(proc.pid)
            peak = [rss_start]
            stop = threading.Event()

            def sample():
                while not stop.wait(0.5):
                    peak[0] = max(peak[0], rss_mb(proc.pid))

            threading.Thread(target=sample, daemon=True).start()
            sessions = plan(a.sessions, models, a.seed)
            turns: list[dict] = []
            lock = threading.Lock()
            t0 = time.time() + 0.5
            threads = [threading.Thread(target=run_session, args=(url, s, t0, turns, lock, a.turn_timeout))
                       for s in sessions]
            [t.start() for t in threads]
            [t.join() for t in threads]
            wall = time.time() - t0
            settle = Client(url, verbose=False)  # the warm-up's last model resident again: compare like with like
            settle.predict("Hello!", models[-1], "chat", False, api_name="/respond")
            settle.close()
            time.sleep(2.0)
            stop.set()
            rss_end = rss_mb(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    from llamatune.jsonl import read_jsonl

    log = read_jsonl(log_dir / "turns.jsonl") if (log_dir / "turns.jsonl").exists() else []
    log = [r for r in log if t0 - 1 <= r.get("t_enter", 0) <= t0 + wall]  # not the warm-up or the settling turn
    match_log(turns, log)
    by_outcome = {k: sum(1 for t in turns if t["outcome"] == k)
                  for k in ("answered", "told_to_wait", "closed", "completed_before_close", "failed")}
    keywords = {s["i"]: re.compile(rf"\b{re.escape(s['keyword'])}", re.I) for s in sessions}
    cross = [t for t in turns if t.get("text") and any(
        kw.search(t["text"]) for i, kw in keywords.items() if i != t["session"])]
    wrong = [t for t in turns if t.get("summary") and not t["summary"].startswith(f"{t['model']},")]
    answered = [t for t in turns if t["outcome"] == "answered"]
    waits = [t["server"]["t_acquired"] - t["t_submit"] for t in turns
             if t.get("server", {}).get("t_acquired")]
    stuck, holds = stuck_after_disconnect(turns, log)
    served = [r["model"] for r in sorted(log, key=lambda r: r["t_acquired"] or 0) if r.get("t_acquired")]
    ok_turns = by_outcome["answered"] + by_outcome["told_to_wait"] + by_outcome["completed_before_close"]
    result = {
        "bench": "space_load", "models": models, "sessions": a.sessions, "turns": len(turns),
        **by_outcome,
        "answered_fraction": round(ok_turns / max(1, len(turns) - by_outcome["closed"]), 4),
        "cross_talk": len(cross), "wrong_model": len(wrong),
        "p50_s": pct([t["t_done"] - t["t_submit"] for t in answered], 0.5),
        "p95_s": pct([t["t_done"] - t["t_submit"] for t in answered], 0.95),
        "queue_wait_p50_s": pct(waits, 0.5), "queue_wait_p95_s": pct(waits, 0.95),
        "rss_start_mb": round(rss_start, 1), "rss_end_mb": round(rss_end, 1), "rss_peak_mb": round(peak[0], 1),
        "rss_growth_mb": round(rss_end - rss_start, 1),
        "stuck_after_disconnect": stuck, "held_after_close": holds,
        "server_outcomes": {o: sum(1 for r in log if r["outcome"] == o) for o in sorted({r["outcome"] for r in log})},
        "closed_while_streaming": sum(1 for t in turns if t.get("closed_while") == "streaming"
                                      and t["outcome"] == "closed"),
        "model_switches": sum(1 for a_, b_ in zip(served, served[1:]) if a_ != b_),
        "max_new_tokens": a.max_new_tokens, "wall_s": round(wall, 1), "logs": str(log_dir),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    if cross:
        result["cross_talk_examples"] = [{"session": t["session"], "turn": t["turn"], "text": t["text"][:300]}
                                         for t in cross[:3]]
    failed = [t for t in turns if t["outcome"] == "failed"]
    if failed:
        result["failed_examples"] = [{k: t.get(k) for k in ("session", "turn", "error", "text")} for t in failed[:3]]
    print(json.dumps(result, ensure_ascii=False))
    ok = (result["answered_fraction"] == 1.0 and not cross and not stuck
          and rss_end - rss_start <= RSS_GROWTH_TARGET_MB)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
