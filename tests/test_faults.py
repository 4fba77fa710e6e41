"""The fault matrix's own tests (the rest of it lives with each area; README "Faults tried" maps every fault to its
test). Marked ``faults``: under CI=true a skip of one of these fails the run.

Here: prompt injection against the real tokenizers of the served models (every control token of the vocabulary,
not a hand-picked list), and malformed input rows for every reader of user files.
"""

from __future__ import annotations

import json

import pytest

from llamatune.protocol import neutralize
from tests.conftest import requires

pytestmark = pytest.mark.faults


def _control_tokens(gguf) -> dict[int, str]:
    """``{id: text}`` of every control token of a GGUF's vocabulary, read by llama.cpp itself."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    try:
        vocab = llm._model.vocab
        out = {}
        for i in range(llama_cpp.llama_vocab_n_tokens(vocab)):
            if llama_cpp.llama_vocab_get_attr(vocab, i) & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL:
                out[i] = llm.detokenize([i], special=True).decode("utf-8", errors="replace")
        ids = {i: llm.tokenize(t.encode(), add_bos=False, special=True) for i, t in out.items()}
        injected = {i: llm.tokenize(f"x {neutralize(t)} y".encode(), add_bos=False, special=True)
                    for i, t in out.items()}
        return out, ids, injected
    finally:
        llm.close()


def _check_inert(gguf, min_controls: int):
    texts, ids, injected = _control_tokens(gguf)
    parsed = {i for i in texts if ids[i] == [i]}  # strings the tokenizer turns into that control token
    assert len(parsed) >= min_controls
    controls = set(texts)
    leaks = {texts[i]: sorted(set(injected[i]) & controls) for i in parsed if set(injected[i]) & controls}
    assert leaks == {}, f"neutralised text still tokenises to control tokens: {leaks}"


@requires("llama_cpp")
def test_tool_output_cannot_carry_a_control_token_of_the_llama_vocabulary(tiny_gguf):
    """All 256 Llama 3.2 specials (<|eot_id|>, <|start_header_id|>, <|python_tag|>, reserved ones...) in a web page
    or a user message tokenise as plain text after ``neutralize``."""
    _check_inert(tiny_gguf["q8_0"], min_controls=250)


@requires("llama_cpp")
def test_tool_output_cannot_carry_a_control_token_of_the_smollm2_vocabulary():
    from llamatune import smollm2

    _check_inert(smollm2.smollm2_gguf_path(), min_controls=10)


# --- malformed rows: every reader of a user file names the file, the row and the field ----------------------------

BAD_ROWS = [
    (b'{"id": "1", "messages": [{"role": "wizard", "content": "hi"}]}', "role must be one of"),
    (b'{"id": "1", "messages": []}', "non-empty list"),
    (b'{"id": "1", "messages": [{"role": "user"}]}', "missing content"),
    (b'{"id": "1"}', "needs field 'messages'"),
    (b'{"id": "1", "prompt": "caf\xe9"}', "not a valid JSON row"),
    (b'{"id": "1", "prompt": ', "not a valid JSON row"),
    (b'["not", "an", "object"]', "expected a JSON object"),
]


@pytest.mark.parametrize("row, message", BAD_ROWS)
def test_judge_prompts_reader_names_the_bad_row(tmp_path, row, message):
    from llamatune.evals.judge import load_prompts

    p = tmp_path / "prompts.jsonl"
    p.write_bytes(b'{"id": "0", "prompt": "fine"}\n' + row + b"\n")
    with pytest.raises(ValueError, match=rf"prompts.jsonl:2.*{message}"):
        load_prompts(p)


@pytest.mark.parametrize("row, message", [
    ({"id": "1", "messages": [], "tools": "nope", "expected": None, "category": "no_tool"}, "'tools' must be a list"),
    ({"id": "1", "messages": [], "tools": [], "expected": {"arguments": {}}, "category": "single_call"},
     "'expected' must be null or"),
    ({"id": "1", "tools": [], "expected": None, "category": "no_tool"}, "missing field 'messages'"),
])
def test_toolcall_items_reader_names_the_bad_row(tmp_path, row, message):
    from llamatune.evals.toolcall import read_items

    p = tmp_path / "eval.jsonl"
    good = {"id": "0", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
            "tools": [], "expected": None, "category": "no_tool"}
    p.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=rf"eval.jsonl:2: .*{message}"):
        read_items(p, ("id", "messages", "tools", "expected", "category"))


def test_a_huge_finetome_row_is_kept_whole_and_an_empty_turn_is_named(tmp_path):
    """A 5 MB conversation is data like any other (nothing truncated silently); an empty turn is a bad row named by
    its line, and the rest of the file is prepared."""
    from llamatune.data.finetome import prepare, select

    huge = {"conversations": [{"from": "human", "value": "long " * 1_000_000}, {"from": "gpt", "value": "ok"}]}
    empty = {"conversations": [{"from": "human", "value": "   "}, {"from": "gpt", "value": "ok"}]}
    rows = [huge, empty] + [{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": "a"}]}
                            for i in range(4)]
    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = prepare(str(src), tmp_path / "out", 3, 2, max_bad_fraction=0.5)
    assert summary["skipped_by_reason"] == {"empty_value": 1} and select(str(src), 3, 2)["bad"] == [("line 2", "empty_value")]
    first = json.loads((tmp_path / "out" / "train.jsonl").read_text().splitlines()[0])
    assert len(first["messages"][0]["content"]) == len(huge["conversations"][0]["value"])


# --- the llama.cpp build and the CPU --------------------------------------------------------------------------------

def test_the_cpu_check_names_instructions_the_cpu_lacks():
    from llamatune.runtime import missing_cpu_features

    info = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | AVX512_BF16 = 0 | OPENMP = 1 |"
    assert missing_cpu_features(info, {"pni", "avx", "avx2"}) == ["AVX512", "AMX_INT8"]  # a Xeon build on an EPYC
    assert missing_cpu_features(info, {"pni", "avx", "avx2", "avx512f", "amx_int8"}) == []


@requires("llama_cpp")
def test_the_loaded_llama_cpp_was_built_for_this_cpu():
    """The cached wheel is keyed by the CPU (Makefile CPU_KEY); here the library that is actually loaded is asked
    which instruction sets it uses, and each must be one this CPU has."""
    import os

    from llamatune.runtime import missing_cpu_features

    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo (not Linux)")
    assert missing_cpu_features() == []


# --- CI cannot pass with these tests skipped -------------------------------------------------------------------

def test_under_ci_a_skipped_browser_or_fault_test_fails_the_run(tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "@pytest.mark.browser\n"
        "def test_b():\n    pytest.skip('no chromium')\n"
        "@pytest.mark.faults\n"
        "def test_f():\n    pytest.skip('no llama_cpp')\n"
        f"@pytest.mark.browser\n@pytest.mark.needs_artifact({str(tmp_path / 'absent')!r})\n"
        "def test_pictures():\n    pytest.skip('no runs/demo')\n"
        "def test_other():\n    pytest.skip('fine')\n")

    def run(ci: str):
        env = {**os.environ, "CI": ci}
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-c",
                               str(REPO / "pyproject.toml"), "--rootdir", str(REPO), str(tmp_path / "test_x.py")],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=120)

    ci, local = run("true"), run("")
    assert ci.returncode == 1 and "2 failed, 2 skipped" in ci.stdout, ci.stdout[-1500:]
    assert "browser and fault tests must run in CI" in ci.stdout
    assert local.returncode == 0 and "4 skipped" in local.stdout, local.stdout[-1500:]


# --- the judge endpoint misbehaving ------------------------------------------------------------------------------

class _Judge:
    """A fake OpenAI-compatible endpoint answering a script of statuses (or hanging), then a valid verdict."""

    def __init__(self, script):
        import threading
        import time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from tests.openai_fake import completion, send_json

        self.script, self.seen = list(script), []
        me = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                step = me.script.pop(0) if me.script else 200
                me.seen.append(step)
                if step == "hang":
                    time.sleep(3)
                    step = 200
                send_json(self, step, {"error": {"message": "injected"}} if step != 200 else
                          completion("m", '{"reason": "ok", "winner": "A"}', 3, 5))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()


@requires("openai")
@pytest.mark.parametrize("script, outcome", [
    ([500, 502], "answer"),             # server errors: retried, then the verdict
    (["hang"], "answer"),               # a timeout: retried
    ([400], "HTTP 400"),                # a bad request is not retried: a clear error, after one attempt
    ([500] * 5, "HTTP 500"),            # retries run out: a clear error naming the attempts
])
def test_the_judge_client_retries_what_may_pass_and_names_what_cannot(monkeypatch, script, outcome):
    from llamatune.evals.judge_client import JudgeClient, JudgeError

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-123456")
    judge = _Judge(script)
    try:
        client = JudgeClient("m", base_url=judge.url, response_format="text", timeout=1.0, max_retries=3,
                             backoff=0.01)
        if outcome == "answer":
            assert client.ask([{"role": "user", "content": "A or B?"}])["text"].endswith('"winner": "A"}')
            assert len(judge.seen) == len(script) + 1
        else:
            with pytest.raises(JudgeError) as e:
                client.ask([{"role": "user", "content": "A or B?"}])
            assert outcome in str(e.value) and e.value.code == 3 and "sk-test" not in str(e.value)
            assert len(judge.seen) == (1 if script == [400] else 4)
    finally:
        judge.close()
