"""The Space under load (issue 29): the owner's limits (one line, first come first served; "busy, try again" when
it is full; a deadline per turn), closed browser tabs, and bench/space_load.py on two real GGUFs (slow).

The fast tests drive :func:`llamatune.chat_turn.respond` the way Gradio does (one ``next()`` per update, and
``close()`` once the client has gone) on scripted models, and the Gradio app through HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from llamatune.chat_turn import respond
from llamatune.llm import ScriptedModel
from llamatune.serving import ModelRegistry, ServedModel, ServingLimits, SpaceBusy, load_config
from tests.conftest import REPO, load_script, requires
from tests.space_fakes import free_port, load_app, recording_registry, scripted_registry

HANG_S = 20  # a generous guard against a hang, never a speed claim


def last(it):
    out = None
    for out in it:
        pass
    return out


def _bench():
    return load_script("bench/space_load.py", "bench_space_load")


def _in_thread(fn):
    out, th = [], threading.Thread(target=lambda: out.append(fn()), daemon=True)
    th.start()
    return th, out


def test_a_full_line_is_told_to_try_again_at_once_while_the_others_wait_their_turn():
    reg = scripted_registry(names=("base",), max_waiting=1)
    reg.acquire("base")  # a turn in progress
    try:
        first, first_out = _in_thread(lambda: last(respond(reg.agent_factory, "hi", [], "base", "chat", False)))
        for _ in range(100):  # until the first one is in line
            if reg.waiting() == 1:
                break
            time.sleep(0.02)
        second, second_out = _in_thread(lambda: last(respond(reg.agent_factory, "me too", [], "base", "chat", False)))
        second.join(HANG_S)
        assert second_out, "the second request waited instead of being told to come back"
        told = second_out[0][-1]
        assert "try again in a minute" in told["content"] and "busy" in told["content"]
        assert told["metadata"]["title"].startswith("⏳ Busy") and first.is_alive()  # the first still waits its turn
    finally:
        reg.release("base")
    first.join(HANG_S)
    assert first_out[0][-1]["metadata"]["title"].startswith("1 LLM call")


def test_a_line_whose_expected_wait_is_past_the_timeout_refuses_at_once():
    reg = scripted_registry(names=("base",), wait_timeout=1.0)
    for _ in range(2):  # two turns of ~0.6 s teach the registry how long a turn holds the model
        reg.acquire("base")
        time.sleep(0.6)
        reg.release("base")
    assert 0.5 < reg.mean_hold < 1.0
    reg.acquire("base")
    ticket = reg.join("base")  # one ahead: ~0.6 s expected, under the timeout
    with pytest.raises(SpaceBusy, match=r"busy \(1 waiting for a model, about 1 s\)\. Please try again in a minute"):
        reg.join("base")  # two ahead: ~1.2 s expected > 1 s
    reg.leave(ticket)
    reg.release("base")
    assert not reg.busy("base") and reg.waiting() == 0


def test_a_switch_waits_for_the_turn_in_progress_then_goes_before_later_requests():
    """One model resident: a request for the other model neither interrupts the turn in progress nor is
    overtaken by requests for the resident model that came after it (first come, first served)."""
    reg, loaded, closed = recording_registry()
    reg.acquire("a")  # user 1's turn on a
    switcher, got = _in_thread(lambda: reg.acquire("b", timeout=HANG_S))
    time.sleep(0.3)
    assert switcher.is_alive() and closed == [] and loaded == ["a"]  # waits; a is not unloaded under user 1
    reg.release("a")
    with pytest.raises(TimeoutError):
        reg.acquire("a", timeout=0.3)  # user 3 came later: a is free for a moment, but the switch goes first
    switcher.join(HANG_S)
    assert got and got[0].name == "b" and loaded == ["a", "b"] and closed == ["a"]
    reg.release("b")
    assert reg.acquire("a", timeout=1).name == "a"


def test_a_session_closed_while_waiting_leaves_the_line_and_never_takes_the_model():
    """Gradio asks a turn for its next update and closes it once its client has gone: the waiting turn must
    come back with an update while it waits, so that a closed tab leaves the line instead of running later."""
    reg = scripted_registry(names=("base",))
    model = reg.acquire("base")  # another user's turn
    records = []
    gen = respond(reg.agent_factory, "hi", [], "base", "chat", False, who="tab", log=records.append)
    try:
        assert next(gen)[0]["metadata"]["title"].startswith("⏳ Busy")
        # the tab is closed now: Gradio waits for the next update, then closes the generator
        nxt, out = _in_thread(lambda: next(gen))
        nxt.join(HANG_S)
        assert out and not nxt.is_alive(), "the waiting turn gave no update while the model was busy"
        assert "ahead of yours" in out[0][0]["content"]
        gen.close()
    finally:
        reg.release("base")
    assert reg.waiting() == 0 and not reg.busy("base")
    assert model.calls == 0 and records == [{**records[0], "outcome": "closed", "t_acquired": None}]


def test_a_turn_past_its_deadline_is_stopped_with_a_note_and_frees_the_model():
    model = ScriptedModel(["word " * 400], loop=True, name="slow", delay=0.01)
    reg = ModelRegistry([ServedModel("slow", path="slow")], loader=lambda s: model, turn_deadline=0.3)
    records = []
    final = last(respond(reg.agent_factory, "Tell me a long story.", [], "slow", "chat", False, log=records.append))
    note = final[-1]
    assert note["metadata"]["title"] == "⏱️ Time limit"
    assert "Stopped: this turn reached the Space's limit of 0.3 s" in note["content"]
    answer = next(m["content"] for m in final if "metadata" not in m)
    assert 0 < answer.count("word") < 400  # what was written by then is kept
    assert records[0]["outcome"] == "deadline" and not reg.busy("slow")


def test_every_call_into_a_model_runs_on_its_own_thread_whichever_worker_steps_the_turn():
    """Gradio steps a turn from whichever worker thread is free. llama.cpp keeps state per calling thread (an
    OpenMP team, a malloc arena): stepped from 20 threads, a process grew ~12 MB per thread. The registry runs
    every call into a model, from loading to closing, on one thread kept for that model's name."""
    seen: dict[int, set] = {}

    class Recording(ScriptedModel):
        def _note(self):
            seen.setdefault(id(self), set()).add(threading.get_ident())

        def tokenize(self, text):
            self._note()
            return super().tokenize(text)

        def _stream(self, text):
            for piece in super()._stream(text):
                self._note()
                yield piece

        def close(self):
            self._note()

    models = []  # kept, so that no two models share an id()

    def loader(spec):
        models.append(Recording(["one two three four five six"], loop=True, name=spec.name))
        models[-1]._note()
        return models[-1]

    reg = ModelRegistry([ServedModel("a", path="a"), ServedModel("b", path="b")], loader=loader)
    for turn in range(4):  # a, b, a, b: every switch closes one model and loads the other
        gen = respond(reg.agent_factory, "hi", [], "ab"[turn % 2], "chat", False)
        while True:  # each update asked for from a new thread, as Gradio's workers do
            th, out = _in_thread(lambda: next(gen, None))
            th.join(HANG_S)
            if out[0] is None:
                break
    reg.close()
    assert len(seen) == 4 and all(len(threads) == 1 for threads in seen.values()), seen
    # and a model loaded again runs on the same thread as before: no new thread (and arena) per switch
    assert seen[id(models[0])] == seen[id(models[2])] != seen[id(models[1])] == seen[id(models[3])]


def test_limits_live_in_models_yaml_and_the_flags_override_them(tmp_path):
    specs, settings = load_config(REPO / "space" / "models.yaml")
    limits = ServingLimits.from_settings(settings)
    assert set(settings) == {f for f in ServingLimits.__dataclass_fields__}  # every limit is written down there
    assert limits.max_resident == 1 and limits.concurrency == limits.max_resident + limits.max_waiting + 2
    assert ServingLimits.from_settings(settings, max_waiting=3, n_threads=None).max_waiting == 3
    with pytest.raises(ValueError, match=r"x.yaml: settings: unknown setting 'max_wating'"):
        ServingLimits.from_settings({"max_wating": 3}, "x.yaml: settings")
    with pytest.raises(ValueError, match=r"setting 'turn_deadline' must be a number, not 'soon'"):
        ServingLimits.from_settings({"turn_deadline": "soon"})
    app = load_app()
    (tmp_path / "m.gguf").write_bytes(b"")
    reg = app.make_registry(app.parse_args(["--models-dir", str(tmp_path), "--max-waiting", "5",
                                            "--turn-deadline", "30", "--max-new-tokens", "64"]))
    assert (reg.limits.max_waiting, reg.limits.turn_deadline, reg.limits.wait_timeout) == (5, 30.0, 300.0)
    assert reg.agent_kwargs == {"max_llm_calls": 2, "max_new_tokens": 64, "constrain": True}
    reg = app.make_registry(app.parse_args(["--models-dir", str(tmp_path), "--no-constrain"]))
    assert reg.agent_kwargs["constrain"] is False


@requires("gradio", "gradio_client")
def test_the_gradio_app_tells_a_visitor_to_come_back_when_the_line_is_full():
    from gradio_client import Client

    app = load_app()
    reg = scripted_registry(names=("base",), max_waiting=1)
    demo = app.build_demo(reg.agent_factory, reg.names, limits=reg.limits)
    fn = next(f for f in demo.fns.values() if f.api_name == "respond")
    assert fn.concurrency_limit == reg.limits.concurrency and demo._queue.max_size == reg.limits.queue_size
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    reg.acquire("base")  # a turn in progress
    try:
        waiting = Client(demo.local_url, verbose=False).submit("hi", "base", "chat", False, api_name="/respond")
        for _ in range(200):
            if reg.waiting() == 1:
                break
            time.sleep(0.05)
        told = Client(demo.local_url, verbose=False).submit("me too", "base", "chat", False, api_name="/respond")
        reply = told.result(timeout=HANG_S)
        assert "try again in a minute" in reply[-1]["content"] and not waiting.done()
    finally:
        reg.release("base")
    try:
        assert waiting.result(timeout=HANG_S)[-1]["metadata"]["title"].startswith("1 LLM call")
    finally:
        demo.close()


@requires("gradio", "gradio_client", "httpx")
def test_a_browser_tab_closed_while_waiting_never_takes_the_model_through_gradio():
    """The real path of a closed tab: the event stream's connection drops while the turn waits in line."""
    from gradio_client import Client

    bench = _bench()
    app = load_app()
    reg = scripted_registry(names=("base",))
    records = []
    demo = app.build_demo(reg.agent_factory, reg.names, limits=reg.limits, turn_log=records.append)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    model = reg.acquire("base")
    try:
        client = Client(demo.local_url, verbose=False)
        closed = bench.closing_turn(client, "hi", ("base", "chat", False), "waiting", HANG_S)
        assert closed["outcome"] == "closed"
        for _ in range(200):  # Gradio drops the turn at its next update
            if records:
                break
            time.sleep(0.05)
        assert records and records[0]["outcome"] == "closed" and records[0]["who"] == client.session_hash
        assert reg.waiting() == 0
    finally:
        reg.release("base")
    try:
        assert model.calls == 0 and records[0]["t_acquired"] is None
        again = Client(demo.local_url, verbose=False).predict("Hello", "base", "chat", False, api_name="/respond")
        assert any(m["content"].startswith("Hello from base!") for m in again) and model.calls == 1
    finally:
        demo.close()


@requires("gradio", "gradio_client", "httpx")
def test_a_browser_tab_closed_mid_answer_gives_the_model_back_before_the_answer_ends():
    from gradio_client import Client

    bench = _bench()
    app = load_app()
    reg = scripted_registry(names=("base",), delay=0.1)  # ~17 words, one every 0.1 s
    records = []
    demo = app.build_demo(reg.agent_factory, reg.names, limits=reg.limits, turn_log=records.append)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        closed = bench.closing_turn(client, "Hello there", ("base", "chat", False), "streaming", HANG_S)
        assert closed["outcome"] == "closed" and closed["closed_while"] == "streaming"
        for _ in range(200):
            if records:
                break
            time.sleep(0.05)
        assert records and records[0]["outcome"] == "closed" and records[0]["t_acquired"] is not None
        assert not reg.busy("base")
    finally:
        demo.close()


def test_bench_counts_a_hold_after_a_close_as_stuck():
    """bench/space_load.py's ``stuck_after_disconnect`` from hand-made records."""
    bench = _bench()
    turns = [{"session": 3, "who": "s3", "outcome": "closed", "t_submit": 10.0, "t_close": 11.0}]
    log = [{"who": "s3", "t_enter": 10.1, "t_acquired": 20.0, "t_end": 21.0, "outcome": "closed"},  # ran after close
           {"who": "s1", "t_enter": 12.0, "t_acquired": 21.0, "t_end": 25.0, "outcome": "answered"},  # waited on it
           {"who": "s2", "t_enter": 21.5, "t_acquired": 25.0, "t_end": 26.0, "outcome": "answered"}]  # came later
    stuck, holds = bench.stuck_after_disconnect(turns, log)
    assert stuck == 1 and holds[0]["session"] == 3
    log[0].update(t_acquired=None, t_end=11.3)  # left the line at its next update: nobody waited on it
    assert bench.stuck_after_disconnect(turns, log)[0] == 0
    log[0].update(t_acquired=10.5, t_end=11.5)  # held the model when it closed, let go within the grace
    assert bench.stuck_after_disconnect(turns, log)[0] == 0


@pytest.fixture(scope="module")
def two_ggufs():
    """SmolLM2-135M-Instruct as f16 and Q8_0 GGUFs (cached): two real models to switch between."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("transformers")
    from llamatune.pypi import cache_dir

    out = cache_dir() / "space-load-gguf"
    _bench().build_smollm2(out)
    return out


@pytest.mark.slow
@pytest.mark.faults
@requires("gradio", "gradio_client", "llama_cpp")
def test_space_load_bench_with_four_sessions_on_two_real_models(two_ggufs, tmp_path):
    """bench/space_load.py with 4 sessions (one switches model mid-conversation, one closes its connection while
    waiting and comes back): every turn answered or told to wait, no cross-talk, nothing stuck."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, str(REPO / "bench" / "space_load.py"), "--sessions", "4", "--models-dir",
                        str(two_ggufs), "--max-new-tokens", "48", "--keep-logs", str(tmp_path)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["sessions"] == 4 and result["turns"] == 12, result
    assert result["answered_fraction"] == 1.0 and result["failed"] == 0, result
    assert result["cross_talk"] == 0 and result["wrong_model"] == 0, result
    assert result["stuck_after_disconnect"] == 0 and result["closed"] + result["completed_before_close"] == 1, result
    assert result["server_outcomes"].get("closed", 0) == result["closed"], result
