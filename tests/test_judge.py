"""The pairwise judge: parsing and FastChat's consistency rule by hand, then end to end against a real
``llama_cpp.server`` (the tiny f16 GGUF as the judge, verdict constrained to the JSON schema) behind a counting
proxy: Ctrl-C halfway and a rerun make no repeated request; 429/503 are retried; a missing key, an unreachable
endpoint and a garbage-answering judge each give a clear message and keep what was done."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import FIXTURES, REPO, requires
from tests.openai_fake import send_json
from llamatune.evals.judge import consistent_verdict, load_prompts, parse_verdict, summarize, to_model

PROMPTS = FIXTURES / "judge_prompts.jsonl"
SECRET = "sk-test-" + hashlib.sha256(str(time.time()).encode()).hexdigest()[:20]


# --- pure logic ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,winner", [
    ('{"reason": "A is more accurate", "winner": "A"}', "A"),
    ('{"reason": "same", "winner": "tie"}', "tie"),
    ('Sure! {"reason": "B explains', None),  # truncated before the winner: no verdict
    ('{"reason": "B is cleare', None),
    ('{"reason":"x", "winner": "B"', "B"),  # truncated after the winner
    ("After comparing both, my final verdict is [[B]].", "B"),
    ("Both are fine. [[C]]", "tie"),
    ("Winner: A", "A"),
    ("I think Assistant A is better because it is correct.", "A"),
    ("lorem ipsum dolor sit amet", None),
    ("", None),
])
def test_parse_verdict_tolerates_free_text(text, winner):
    assert parse_verdict(text)[0] == winner


def test_consistency_rule_by_hand():
    # model-level verdicts: both orders agree → that verdict; disagreement → tie; a missing one → invalid
    assert consistent_verdict("A", "A") == "A"
    assert consistent_verdict("B", "B") == "B"
    assert consistent_verdict("A", "B") == "tie"
    assert consistent_verdict("A", "tie") == "tie"
    assert consistent_verdict("tie", "tie") == "tie"
    assert consistent_verdict("A", None) is None
    # position-level: the judge picks the first position both times → position bias → a tie, not a win
    assert consistent_verdict(to_model("A", "AB"), to_model("A", "BA")) == "tie"
    # picks model A's answer wherever it is shown → a win for A
    assert consistent_verdict(to_model("A", "AB"), to_model("B", "BA")) == "A"


def test_summarize_counts_and_tests():
    def item(ab, ba):
        return {"ab": ab, "ba": ba, "verdict": consistent_verdict(ab, ba), "ab_position": ab,
                "ba_position": {"A": "B", "B": "A"}.get(ba, ba)}

    items = [item("A", "A")] * 24 + [item("B", "B")] * 10 + [item("A", "B")] * 6 + [item(None, "A")] * 2
    agg = summarize(items, n_boot=2000)
    assert (agg["wins"], agg["losses"], agg["ties"], agg["n"], agg["n_invalid"]) == (24, 10, 6, 40, 2)
    assert agg["sign_test_p"] == pytest.approx(0.0243065, abs=1e-6)  # binomtest(24, 34)
    assert agg["win_rate"]["value"] == pytest.approx(24 / 40) and agg["win_rate"]["n"] == 40
    adj = agg["adjusted_win_rate"]
    assert adj["value"] == pytest.approx(27 / 40) and adj["low"] < 27 / 40 < adj["high"] and adj["n"] == 40
    assert agg["position_consistency"] == pytest.approx(34 / 40)


def test_load_prompts_reference_and_errors(tmp_path):
    ps = load_prompts(PROMPTS)
    assert [p["id"] for p in ps] == ["jp-1", "jp-2", "jp-3", "jp-4"]
    assert ps[0]["reference"].startswith("Sunlight") and ps[0]["messages"][-1]["role"] == "user"
    assert ps[2]["reference"].startswith("Lists") and ps[3]["messages"][-1]["content"] == "And into Spanish?"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "prompt": "hi"}\n{"id": "y", "text": "no"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: needs field 'messages'"):
        load_prompts(bad)


# --- a counting proxy in front of the real server -----------------------------------------------------------
class CountingProxy:
    """Forwards HTTP to ``upstream``; records every POST (body hash, status); can fail the first POSTs, and can
    hold every POST ``delay`` seconds (a slow judge, so that a signal lands while requests remain)."""

    def __init__(self, upstream: str, fail_first: list[int] | None = None, fail_message: str = "injected",
                 delay: float = 0.0):
        import requests

        self.log: list[tuple[str, int]] = []
        self.fail = list(fail_first or [])
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _forward(self, method):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if method == "POST" and proxy.fail:
                    status = proxy.fail.pop(0)
                    proxy.log.append((hashlib.sha256(body).hexdigest(), status))
                    send_json(self, status, {"error": {"message": fail_message}})
                    return
                if method == "POST":
                    time.sleep(delay)
                r = requests.request(method, upstream + self.path, data=body or None,
                                     headers={"Content-Type": "application/json"}, timeout=300)
                if method == "POST":
                    proxy.log.append((hashlib.sha256(body).hexdigest(), r.status_code))
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers.get("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            def do_POST(self):
                self._forward("POST")

            def do_GET(self):
                self._forward("GET")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paid(self) -> list[str]:
        return [h for h, status in self.log if status == 200]

    def close(self):
        self.server.shutdown()


@pytest.fixture(scope="module")
def judge_server(tiny_gguf):
    pytest.importorskip("llama_cpp.server")
    from llamatune.evals.llamacpp_server import LlamaCppServer

    with LlamaCppServer(tiny_gguf["f16"], n_ctx=2048) as srv:
        yield srv


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_dir, tmp_path_factory):
    """A random (non-zero) LoRA adapter on the tiny model, so that model B answers differently."""
    pytest.importorskip("peft")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    cfg = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("adapter")
    get_peft_model(model, cfg).save_pretrained(out)
    return out


def _cli(args, env_key=SECRET, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("OPENAI_API_KEY", None)
    if env_key:
        env["OPENAI_API_KEY"] = env_key
    return [sys.executable, "-m", "llamatune", "eval", "judge", *args], env


def _judge_args(tiny_gguf, tiny_model_dir, adapter, out, base_url, prompts=PROMPTS, *extra):
    return ["--prompts", str(prompts), "--a", str(tiny_gguf["f16"]), "--b", f"{tiny_model_dir}+peft={adapter}",
            "--judge-model", "tiny-judge", "--base-url", base_url, "--out", str(out), "--max-tokens", "6",
            "--reason-max-chars", "0", "--judge-max-tokens", "24", *extra]


@requires("llama_cpp", "openai", "peft")
def test_judge_interrupt_and_resume_pays_nothing_twice(tiny_gguf, tiny_model_dir, tiny_adapter, judge_server, tmp_path):
    proxy = CountingProxy(judge_server.url, delay=0.5)  # the tiny judge answers in ~0.3 s: leave time to interrupt
    out = tmp_path / "judge"
    prompts = tmp_path / "three.jsonl"
    prompts.write_text("\n".join(PROMPTS.read_text().splitlines()[:3]) + "\n")
    # both models answer here (GGUF in process, HF + LoRA adapter); the CLI runs must find them in the cache
    from llamatune.generate import generate_cached

    for spec in (str(tiny_gguf["f16"]), f"{tiny_model_dir}+peft={tiny_adapter}"):
        generate_cached(spec, load_prompts(prompts), out / "answers.jsonl", max_tokens=6, progress=False)
    answers = (out / "answers.jsonl").read_text()
    assert len(answers.splitlines()) == 6
    verdicts = out / "verdicts.jsonl"
    outputs, saved = "", []
    try:
        for sig, at_least in ((signal.SIGTERM, 2), (signal.SIGINT, 4)):  # `kill`, then Ctrl-C
            cmd, env = _cli(_judge_args(tiny_gguf, tiny_model_dir, tiny_adapter, out, proxy.base_url, prompts,
                                        "--concurrency", "1"))
            # Ctrl-C as in a terminal: a child of a background job (`make test &`, nohup) inherits SIGINT ignored
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            deadline = time.time() + 240
            while time.time() < deadline and proc.poll() is None:
                if verdicts.exists() and len(verdicts.read_text().splitlines()) >= at_least:
                    break
                time.sleep(0.05)
            assert proc.poll() is None, f"run finished before it could be interrupted: {proc.communicate()}"
            proc.send_signal(sig)
            stdout, stderr = proc.communicate(timeout=120)
            outputs += stdout + stderr
            assert proc.returncode == 130, stderr[-2000:]
            assert "interrupted" in stderr and "rerun to continue" in stderr
            saved.append(len(verdicts.read_text().splitlines()))
            assert len(proxy.paid()) == saved[-1]  # the request in flight was saved, not lost
        assert 2 <= saved[0] < saved[1] < 6
        first = saved[-1]

        cmd, env = _cli(_judge_args(tiny_gguf, tiny_model_dir, tiny_adapter, out, proxy.base_url, prompts))
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        proxy.close()
    paid = proxy.paid()
    assert len(paid) == len(set(paid)), "a judge request was paid twice"
    assert (out / "answers.jsonl").read_text() == answers  # no answer generated twice
    result = json.loads((out / "judge.json").read_text())
    assert result["complete"] and result["kind"] == "judge"
    rows = [json.loads(line) for line in (out / "verdicts.jsonl").read_text().splitlines()]
    assert len(rows) == len(paid) == len({r["key"] for r in rows})
    assert result["usage"]["requests_this_run"] == len(rows) - first  # the rerun asked only what was missing
    agg = result["aggregate"]
    assert agg["wins"] + agg["losses"] + agg["ties"] + agg["n_invalid"] == 3
    assert all(r["format"] == "json_object" for r in rows)  # json_schema refused by llama.cpp → its own schema mode
    assert all(json.loads(r["raw"])["winner"] in ("A", "B", "tie") for r in rows)  # schema-constrained JSON
    # the key never reaches a file or the console
    everything = done.stdout + done.stderr + outputs
    everything += "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file() and p.suffix != ".db")
    assert SECRET not in everything


@requires("llama_cpp", "openai")
def test_judge_retries_429_and_503(tiny_gguf, judge_server, tmp_path):
    from llamatune.evals.judge import run_judge

    prompts = tmp_path / "one.jsonl"
    prompts.write_text(PROMPTS.read_text().splitlines()[2] + "\n")
    proxy = CountingProxy(judge_server.url, fail_first=[429, 503])
    os.environ["OPENAI_API_KEY"] = SECRET
    try:
        r = run_judge(prompts, str(tiny_gguf["f16"]), str(tiny_gguf["q8_0"]), "tiny-judge", tmp_path / "j",
                      base_url=proxy.base_url, response_format="json_object", reason_max_chars=0,
                      judge_max_tokens=24, max_tokens=6, backoff=0.05, concurrency=1, progress=False)
    finally:
        proxy.close()
        os.environ.pop("OPENAI_API_KEY", None)
    statuses = [s for _, s in proxy.log]
    assert statuses[:2] == [429, 503] and statuses.count(200) >= 1
    assert r["complete"] and r["usage"]["requests_this_run"] == len(statuses)


def test_missing_key_fails_before_any_work(tiny_gguf, tmp_path):
    out = tmp_path / "j"
    cmd, env = _cli(["--prompts", str(PROMPTS), "--a", str(tiny_gguf["f16"]), "--b", str(tiny_gguf["q8_0"]),
                     "--judge-model", "gpt-4.1-mini", "--out", str(out)], env_key=None)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "OPENAI_API_KEY is not set" in done.stderr
    assert not out.exists()  # nothing generated, nothing paid


@requires("llama_cpp", "openai")
def test_unreachable_endpoint_keeps_answers(tiny_gguf, tmp_path):
    from llamatune.evals.judge import run_judge
    from llamatune.evals.judge_client import JudgeError
    from llamatune.evals.llamacpp_server import free_port

    os.environ["OPENAI_API_KEY"] = SECRET
    try:
        with pytest.raises(JudgeError) as e:
            run_judge(PROMPTS, str(tiny_gguf["f16"]), str(tiny_gguf["q8_0"]), "gpt-4.1-mini", tmp_path / "j",
                      base_url=f"http://127.0.0.1:{free_port()}/v1", max_tokens=4, max_retries=2, backoff=0.01,
                      progress=False)
    finally:
        os.environ.pop("OPENAI_API_KEY", None)
    msg = str(e.value)
    assert e.value.code == 3 and "cannot reach the judge endpoint" in msg and "after 3 attempt(s)" in msg
    assert "rerun to continue" in msg
    answers = [json.loads(x) for x in (tmp_path / "j" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 8  # both models' answers are kept for the rerun


@requires("llama_cpp", "openai")
def test_garbage_judge_is_reported_and_kept(tiny_gguf, judge_server, tmp_path):
    from llamatune.evals.judge import run_judge
    from llamatune.evals.judge_client import JudgeError

    os.environ["OPENAI_API_KEY"] = SECRET
    prompts = tmp_path / "two.jsonl"
    prompts.write_text("\n".join(PROMPTS.read_text().splitlines()[:2]) + "\n")
    try:
        with pytest.raises(JudgeError) as e:  # unconstrained, the tiny random model answers noise
            run_judge(prompts, str(tiny_gguf["f16"]), str(tiny_gguf["q8_0"]), "tiny-judge", tmp_path / "j",
                      base_url=judge_server.base_url, response_format="text", judge_max_tokens=8, max_tokens=4,
                      progress=False)
    finally:
        os.environ.pop("OPENAI_API_KEY", None)
    assert e.value.code == 4 and "no parseable verdict for 2 of 2 prompts" in str(e.value)
    assert "--retry-invalid" in str(e.value)
    rows = [json.loads(x) for x in (tmp_path / "j" / "verdicts.jsonl").read_text().splitlines()]
    assert rows and all(r["winner"] is None and r["raw"] is not None for r in rows)
    result = json.loads((tmp_path / "j" / "judge.json").read_text())
    assert result["aggregate"]["n_invalid"] == 2 and result["aggregate"]["n"] == 0


# --- judge-human agreement ----------------------------------------------------------------------------------
def test_judge_agreement_blind_sheet(tmp_path):
    from llamatune.cli import main
    from llamatune.evals import agreement, stats

    judge_v = ["A", "A", "B", "tie", "A", "B", "B", "tie", "A", "A"]
    human_v = ["A", "B", "B", "tie", "A", "B", "A", "A", "A", "tie"]
    items = [{"id": f"p{i}", "messages": [{"role": "user", "content": f"q{i}"}], "answer_a": f"a{i}",
              "answer_b": f"b{i}", "verdict": v} for i, v in enumerate(judge_v)]
    res = tmp_path / "run"
    res.mkdir()
    (res / "judge.json").write_text(json.dumps({"kind": "judge", "a": "ft", "b": "base", "judge_model": "j",
                                                "items": items}))
    sheet = tmp_path / "human.jsonl"
    assert main(["eval", "judge-agreement", "--make-sheet", str(res), "--n", "10", "--out", str(sheet)]) == 0
    rows = [json.loads(x) for x in sheet.read_text().splitlines()]
    assert len(rows) == 10 and all(r["label"] == "" and "answer_a" not in r for r in rows)
    orders = json.loads(sheet.with_suffix(".key.json").read_text())["order"]
    assert set(orders.values()) == {"AB", "BA"}  # blind: both presentation orders occur
    # the "labeller" picks by content, i.e. sees a{i}/b{i} in either position
    want = dict(zip([f"p{i}" for i in range(10)], human_v))
    for r in rows:
        h = want[r["id"]]
        better = ("a" if h == "A" else "b") + r["id"][1:]
        r["label"] = "tie" if h == "tie" else ("1" if r["response_1"] == better else "2")
    rows[0]["label"] = ""  # a skipped row
    sheet.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", "judge-agreement", "--labels", str(sheet)]) == 0
    out = json.loads((res / "agreement.json").read_text())
    keep = [i for i in range(10) if f"p{i}" != rows[0]["id"]]
    h = [human_v[i] for i in keep]
    j = [judge_v[i] for i in keep]
    agg = out["aggregate"]
    assert agg["agreement"]["n"] == 9
    assert agg["agreement"]["value"] == pytest.approx(sum(x == y for x, y in zip(h, j)) / 9)
    assert agg["cohen_kappa"]["value"] == pytest.approx(stats.cohen_kappa(h, j))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "p1", "human": "maybe"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'human' must be A, B or tie"):
        agreement.read_labels(bad)


def test_prompts_with_tools_reach_generation_and_judge():
    from llamatune.evals.judge import judge_messages
    from llamatune.generate import prompt_hash

    ps = load_prompts(FIXTURES / "judge_prompts_tools.jsonl")
    p1, p2, p3 = ps
    assert p1["reference"] == '{"name": "get_current_weather", "parameters": {"city": "Lyon"}}'
    assert p3["messages"][-1]["role"] == "tool" and p3["reference"].startswith("It is 28.4")
    assert prompt_hash(p2["messages"], p2["tools"]) != prompt_hash(p2["messages"])
    user = judge_messages(p3, "x", "y", reference=True)[1]["content"]
    assert "[Available Tools]" in user and "get_current_weather" in user and "light snow" in user
    assert "[The Start of Reference Answer]\nIt is 28.4" in user


@requires("llama_cpp", "openai")
def test_rejected_key_is_reported_without_the_key(tiny_gguf, tmp_path):
    from llamatune.evals.judge import run_judge
    from llamatune.evals.judge_client import JudgeError

    proxy = CountingProxy("http://127.0.0.1:9", fail_first=[401], fail_message=f"Incorrect API key provided: {SECRET}")
    prompts = tmp_path / "one.jsonl"
    prompts.write_text(PROMPTS.read_text().splitlines()[2] + "\n")
    os.environ["OPENAI_API_KEY"] = SECRET
    try:
        with pytest.raises(JudgeError) as e:
            run_judge(prompts, str(tiny_gguf["f16"]), str(tiny_gguf["q8_0"]), "gpt-4.1-mini", tmp_path / "j",
                      base_url=proxy.base_url, max_tokens=4, concurrency=1, progress=False)
    finally:
        proxy.close()
        os.environ.pop("OPENAI_API_KEY", None)
    assert e.value.code == 2 and "refused the API key" in str(e.value)
    assert SECRET not in str(e.value) and [s for _, s in proxy.log] == [401]  # not retried
    assert not any(SECRET in p.read_text() for p in (tmp_path / "j").rglob("*") if p.is_file())


@requires("openai")
def test_a_refused_key_stops_the_run_before_any_answer_is_generated(tmp_path):
    """Like the OpenAI API with a wrong key: every request, the free model list included, answers 401. The run
    stops there, before the two models generate anything (minutes on a GPU) and before any verdict is asked."""
    from llamatune.evals.judge import run_judge
    from llamatune.evals.judge_client import JudgeError

    seen = []

    class Refuse(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _refuse(self):
            seen.append((self.command, self.path))
            body = json.dumps({"error": {"message": f"Incorrect API key provided: {SECRET[:8]}****",
                                         "type": "invalid_request_error", "code": "invalid_api_key"}}).encode()
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _refuse

    server = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    os.environ["OPENAI_API_KEY"] = SECRET
    try:
        with pytest.raises(JudgeError) as e:
            run_judge(PROMPTS, "no-such-model-a", "no-such-model-b", "gpt-4.1-mini", tmp_path / "j",
                      base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", progress=False)
    finally:
        server.shutdown()
        os.environ.pop("OPENAI_API_KEY", None)
    assert e.value.code == 2 and "refused the API key (401)" in str(e.value) and SECRET[:8] not in str(e.value)
    assert seen == [("GET", "/v1/models")]  # one free request; no completion asked
    assert not (tmp_path / "j" / "answers.jsonl").exists()  # the models were never loaded (they do not exist)
