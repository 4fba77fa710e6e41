"""``kill -9`` at random points, then the user's rerun: the fault matrix's crash half (README "Faults tried").

Each long job runs once to the end, counting the points where a crash can fall (``tests/killer.py``: every file
opened for writing, rename, remove, directory made, subprocess started, and a torn half-written file after each
safetensors / ``torch.save`` write). Then, from scratch each time, it is killed with SIGKILL, together with its
children, just before a point drawn at random, or after a random delay (which lands inside writes and inside the
converter or quantizer), and rerun the way a user would (the same command; ``--resume`` for training). The result
must equal the uninterrupted run's, file for file, with no stray temporary files, and nothing paid twice beyond
what was in flight at the kill.

``LLAMATUNE_KILL_SEED`` (default 0) and ``LLAMATUNE_KILLS`` (random points per job, default 3) choose the points;
a failure names the seed and the point, and ``python -m tests.killer --at N`` replays it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, REPO, requires
from tests.openai_fake import completion, send_json

pytestmark = [pytest.mark.faults, pytest.mark.slow]

SEED = int(os.environ.get("LLAMATUNE_KILL_SEED", "0"))
KILLS = int(os.environ.get("LLAMATUNE_KILLS", "3"))
TMP_MARKS = (".tmp", ".part")


def _env(work: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_DATASETS_CACHE": str(work / "hf-datasets"), "LLAMATUNE_THREADS": "1", "TQDM_DISABLE": "1",
           "OPENAI_API_KEY": "sk-kill-test-0123456789"}
    env.pop("CI", None)
    return env


def _run(work: Path, args: list[str], *, at: int = 0, after: float | None = None, count: Path | None = None,
         timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tests.killer", "--root", str(work)]
    if at:
        cmd += ["--at", str(at)]
    if after is not None:
        cmd += ["--after", f"{after:.3f}"]
    if count:
        cmd += ["--count", str(count)]
    return subprocess.run([*cmd, "--", *args], cwd=REPO, env=_env(work), capture_output=True, text=True,
                          timeout=timeout, start_new_session=True)  # its own process group: the kill spares pytest


def _files(work: Path) -> dict[str, Path]:
    return {p.relative_to(work).as_posix(): p for p in sorted(work.rglob("*"))
            if p.is_file() and not p.relative_to(work).as_posix().startswith("hf-datasets/")}


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


class Job:
    """One long job: ``args`` run in ``work``; ``rerun`` is how a user continues after a crash."""

    def __init__(self, name, args, *, rerun=None, setup=None, compare=None, random_points=KILLS, exhaustive=False,
                 timer=True, paid=None, in_flight=1, focus=None):
        self.name, self.args, self.rerun_args = name, args, rerun or args
        self.setup, self.compare = setup or (lambda work: None), compare
        self.random_points, self.exhaustive, self.timer = random_points, exhaustive, timer
        self.paid, self.in_flight = paid, in_flight  # the endpoint's request log; requests a kill may lose
        self.focus = focus  # one more point: a file write naming this (e.g. inside a checkpoint)


def _crash_and_rerun(job: Job, tmp_path: Path, on_reference=None) -> dict:
    """Run ``job`` whole, then killed at each chosen point and rerun; assert every result equals the whole run's.
    Returns what was tried ({"events", "killed_at", "timer"})."""
    work, ref = tmp_path / "work", tmp_path / "reference"
    job.setup(work)
    count = tmp_path / "count.json"
    whole = _run(work, job.args, count=count)
    assert whole.returncode == 0, whole.stderr[-3000:]
    whole_paid = list(job.paid or ())
    seen = json.loads(count.read_text())
    events, span = seen["events"], seen["span_s"]
    if on_reference:
        on_reference(work)
    shutil.move(work, ref)
    expected = _files(ref)
    assert not [r for r in expected if any(m in Path(r).name for m in TMP_MARKS)], f"whole run left {list(expected)}"

    rng = random.Random(f"{SEED}:{job.name}")
    points = list(range(1, len(events) + 1)) if job.exhaustive else sorted(
        rng.sample(range(1, len(events) + 1), min(job.random_points, len(events))))
    tried = {"events": len(events), "killed_at": [], "timer": None, "focus": None}
    if job.focus:
        inside = [i + 1 for i, e in enumerate(events)
                  if job.focus in e and e.startswith(("open", "tear")) and i + 1 not in points]
        if inside:
            points.append(rng.choice(inside))
            tried["focus"] = events[points[-1] - 1]
    trials = [("at", n) for n in points] + ([("after", rng.uniform(0.0, span))] if job.timer else [])
    for how, where in trials:
        shutil.rmtree(work, ignore_errors=True)
        job.setup(work)
        what = f"{job.name}: kill at event {where} ({events[where - 1]})" if how == "at" else \
            f"{job.name}: kill after {where:.2f} s"
        p0 = len(job.paid or ())
        killed = _run(work, job.args, **{how: where})
        p1 = len(job.paid or ())
        if how == "at":
            assert killed.returncode == -signal.SIGKILL, f"{what}: not killed (rc {killed.returncode})\n" \
                                                         f"{killed.stderr[-2000:]}"
            tried["killed_at"].append(where)
        else:
            tried["timer"] = {"after_s": round(where, 2), "killed": killed.returncode == -signal.SIGKILL}
            assert killed.returncode in (0, -signal.SIGKILL), f"{what}: rc {killed.returncode}\n{killed.stderr[-2000:]}"
        again = _run(work, job.rerun_args)
        assert again.returncode == 0, f"{what} (seed {SEED}): the rerun failed\n{again.stderr[-3000:]}"
        got = _files(work)
        assert sorted(got) == sorted(expected), f"{what}: other files than the whole run's: " \
            f"extra {sorted(set(got) - set(expected))}, missing {sorted(set(expected) - set(got))}"
        job.compare(ref, work, what)
        if job.paid is not None:  # the rerun asks only what the killed run had not saved
            before, after = set(job.paid[p0:p1]), job.paid[p1:]
            assert before | set(after) == set(whole_paid), f"{what}: other requests than the whole run's"
            twice = before & set(after)
            assert len(twice) <= job.in_flight, f"{what}: {len(twice)} requests paid twice (in flight: " \
                                                f"{job.in_flight})"
            tried.setdefault("paid_twice", []).append(len(twice))
    if os.environ.get("LLAMATUNE_KILL_REPORT"):  # one JSON line per job (README "Faults tried")
        with open(os.environ["LLAMATUNE_KILL_REPORT"], "a") as f:
            f.write(json.dumps({"job": job.name, "seed": SEED, **tried}) + "\n")
    return tried


def _same_bytes(ref: Path, work: Path, what: str, *, skip=()) -> None:
    a, b = _files(ref), _files(work)
    differ = [r for r in a if r not in skip and _sha(a[r]) != _sha(b[r])]
    assert differ == [], f"{what}: these files differ from the whole run's: {differ}"


# --- data ------------------------------------------------------------------------------------------------------

def test_finetome_preparation_killed_anywhere_reruns_to_the_same_files(tmp_path):
    job = Job("finetome", ["data", "finetome", "--source", str(FIXTURES / "finetome_sample.jsonl"), "--train", "20",
                           "--eval", "5", "--out", str(tmp_path / "work" / "data"), "--max-bad-fraction", "0.5"],
              compare=_same_bytes, exhaustive=True)
    tried = _crash_and_rerun(job, tmp_path)
    assert len(tried["killed_at"]) == tried["events"] >= 12


class _FakeOpenAI:
    """A deterministic OpenAI-compatible endpoint on 127.0.0.1: paraphrases (a reply that keeps or drops the slot
    values, chosen by a hash of the text) and judge verdicts (by a hash of the prompt); it records every request
    body, so that a request paid twice shows."""

    def __init__(self):
        self.paid: list[str] = []
        me = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    req = json.loads(body)
                except ValueError:  # the client was killed while sending: nothing to answer, nothing paid
                    return
                me.paid.append(hashlib.sha256(body).hexdigest())
                text = req["messages"][-1]["content"]
                h = int(hashlib.sha256(text.encode()).hexdigest(), 16)
                if req["model"] == "para":
                    reply = "Something else entirely." if h % 4 == 0 else "Quick question: " + text
                else:
                    reply = json.dumps({"reason": "r", "winner": ("A", "B", "tie")[h % 3]})
                send_json(self, 200, completion(req["model"], reply, 10, 5))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()


@pytest.fixture
def fake_openai():
    srv = _FakeOpenAI()
    yield srv
    srv.close()


@requires("openai")
def test_funccall_generation_with_paraphrases_killed_anywhere_pays_once_and_reruns_to_the_same_files(
        tmp_path, fake_openai):
    out = tmp_path / "work" / "data"
    job = Job("funccall", ["data", "funccall", "--out", str(out), "--n", "40", "--seed", "3",
                           "--paraphrase-endpoint", fake_openai.url, "--paraphrase-model", "para"],
              compare=_same_bytes, random_points=max(KILLS, 6), paid=fake_openai.paid)
    tried = _crash_and_rerun(job, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "reference" / "data" / "train.jsonl").read_text().splitlines()]
    assert any("Quick question: " in m["content"] for r in rows for m in r["messages"])  # paraphrases were used
    assert len(tried["killed_at"]) == max(KILLS, 6) and len(tried["paid_twice"]) == max(KILLS, 6) + 1


# --- training ---------------------------------------------------------------------------------------------------

STEPS, SAVE = 8, 4
TRAIN = ["train", str(REPO / "FineTome" / "recipes" / "tiny-cpu.yaml"), "--max_steps", str(STEPS), "--save_steps",
         str(SAVE), "--eval_steps", "4", "--eval_samples", "4", "--max_length", "128",
         "--per_device_train_batch_size", "1", "--learning_rate", "5e-3"]


@pytest.fixture(scope="module")
def finetome_dir(tmp_path_factory) -> Path:
    from llamatune.data.finetome import prepare

    out = tmp_path_factory.mktemp("finetome")
    prepare(str(FIXTURES / "finetome_sample.jsonl"), out, 40, 12, max_bad_fraction=0.2)
    return out


def _as_sets(obj):
    """PEFT writes ``target_modules`` from a set: lists of strings compare in any order."""
    if isinstance(obj, dict):
        return {k: _as_sets(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return sorted(obj) if all(isinstance(x, str) for x in obj) else [_as_sets(x) for x in obj]
    return obj


def _tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


def _same_training(ref: Path, work: Path, what: str) -> None:
    """Adapters (final and every checkpoint's) equal to float tolerance, the same losses, a finished record, and
    every small text file but the run's record and timings byte-identical."""
    import torch

    a, b = _files(ref), _files(work)
    for rel in a:
        if rel.endswith(".safetensors"):
            ta, tb = _tensors(a[rel]), _tensors(b[rel])
            assert ta.keys() == tb.keys(), f"{what}: {rel} holds other tensors"
            for k in ta:
                torch.testing.assert_close(tb[k], ta[k], rtol=1e-5, atol=1e-6, msg=f"{what}: {rel} {k}")
        elif rel.endswith("trainer_state.json"):
            la, lb = ([h["loss"] for h in json.loads(p[rel].read_text())["log_history"] if "loss" in h] for p in (a, b))
            assert lb == pytest.approx(la, rel=1e-5), f"{what}: {rel} losses differ"
        elif rel.endswith("README.md"):  # TRL's model card lists its tags from a set: in any order
            assert sorted(a[rel].read_text().splitlines()) == sorted(b[rel].read_text().splitlines()), \
                f"{what}: {rel} differs"
        elif rel.endswith(".json") and not rel.endswith("run.json"):
            assert _as_sets(json.loads(a[rel].read_text())) == _as_sets(json.loads(b[rel].read_text())), \
                f"{what}: {rel} differs"
        elif rel.endswith((".jinja", ".yaml")):
            assert _sha(a[rel]) == _sha(b[rel]), f"{what}: {rel} differs"
    run = json.loads(b["run/run.json"].read_text())
    assert run["status"] == "done" and run["global_step"] == STEPS, f"{what}: run.json {run.get('status')}"


@requires("peft", "trl")
def test_training_killed_anywhere_even_mid_checkpoint_resumes_to_the_same_adapter(tmp_path, finetome_dir):
    args = [*TRAIN, "--dataset_path", str(finetome_dir), "--output_dir", str(tmp_path / "work" / "run")]
    job = Job("train", args, rerun=[*args, "--resume"], compare=_same_training, focus="/checkpoint-")
    tried = _crash_and_rerun(job, tmp_path)
    assert tried["focus"] and "/checkpoint-" in tried["focus"]


# --- export -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(finetome_dir, tmp_path_factory) -> Path:
    from llamatune.recipe import load_recipe
    from llamatune.train import train

    run = tmp_path_factory.mktemp("trained") / "run"
    train(load_recipe(REPO / "FineTome" / "recipes" / "tiny-cpu.yaml",
                      [*TRAIN[2:], "--dataset_path", str(finetome_dir), "--output_dir", str(run)]))
    return run


def _same_export(ref: Path, work: Path, what: str) -> None:
    """The merged weights and every GGUF byte-identical; the fidelity report the same but for timings and mtimes."""
    a, b = _files(ref), _files(work)
    for rel in a:
        if rel.endswith((".gguf", ".safetensors")) or "/merged/" in rel:
            assert _sha(a[rel]) == _sha(b[rel]), f"{what}: {rel} differs"
    fa, fb = (_strip(json.loads(p["run/fidelity.json"].read_text())) for p in (a, b))
    assert fa == fb, f"{what}: fidelity.json differs"


def _strip(obj, keys=("timings", "seconds", "stamp")):  # stamp: the files' mtimes, what "up to date" checks
    if isinstance(obj, dict):
        return {k: _strip(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [_strip(v, keys) for v in obj]
    return obj


@requires("peft", "llama_cpp")
def test_export_killed_anywhere_reruns_to_the_same_ggufs(tmp_path, trained_run):
    def setup(work):
        shutil.copytree(trained_run, work / "run", ignore=shutil.ignore_patterns("merged", "gguf", "fidelity.json"))

    job = Job("export", ["export", str(tmp_path / "work" / "run"), "--quant", "f16,q8_0"], setup=setup,
              compare=_same_export)
    tried = _crash_and_rerun(job, tmp_path)
    assert any("spawn" in e for e in json.loads((tmp_path / "count.json").read_text())["events"])  # the converter
    assert len(tried["killed_at"]) == KILLS


# --- evaluation: tool-call generation and the judge --------------------------------------------------------------

def _same_eval(ref: Path, work: Path, what: str) -> None:
    """Every cached generation / verdict row the same (the set of rows: concurrent requests finish in any order)
    and every results file the same but for timings."""
    a, b = _files(ref), _files(work)
    for rel in a:
        if rel.endswith(".jsonl"):
            rows = [sorted(json.dumps(_jsonl_row(line), sort_keys=True) for line in p[rel].read_text().splitlines())
                    for p in (a, b)]
            assert rows[0] == rows[1], f"{what}: {rel} rows differ"
        elif rel.endswith(".json"):
            assert _strip(_json(a[rel])) == _strip(_json(b[rel])), f"{what}: {rel} differs"
        else:
            assert _sha(a[rel]) == _sha(b[rel]), f"{what}: {rel} differs"


VOLATILE = ("timings", "seconds", "stamp", "elapsed_s", "created", "usage", "time")


def _json(p: Path):
    return _strip(json.loads(p.read_text()), keys=VOLATILE)


def _jsonl_row(line: str):
    return _strip(json.loads(line), keys=VOLATILE)


@requires("llama_cpp")
def test_toolcall_generation_killed_anywhere_reruns_to_the_same_results(tmp_path, tiny_gguf):
    from llamatune.data.funccall import generate

    _, test = generate(60, seed=0)
    test.sort(key=lambda r: len(json.dumps(r)))
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in test[:6]))
    job = Job("toolcall", ["eval", "toolcall", "--model", str(tiny_gguf["f16"]), "--data", str(data), "--out",
                           str(tmp_path / "work" / "res" / "base.json"), "--max-tokens", "8", "--threads", "1"],
              compare=_same_eval, exhaustive=True)
    tried = _crash_and_rerun(job, tmp_path)
    assert tried["events"] >= 6  # one cache append per item at least


@requires("openai", "llama_cpp")
def test_judging_killed_anywhere_pays_once_and_reruns_to_the_same_verdicts(tmp_path, tiny_gguf, fake_openai):
    """Both models' answers are cached first (as after `eval judge` generated them); the kill lands among the paid
    judge requests (two in flight), the rerun asks only what was not saved."""
    from llamatune.evals.judge import load_prompts
    from llamatune.generate import generate_cached

    prompts = FIXTURES / "judge_prompts.jsonl"
    answers = tmp_path / "answers.jsonl"
    for spec in (str(tiny_gguf["f16"]), str(tiny_gguf["q8_0"])):
        generate_cached(spec, load_prompts(prompts), answers, max_tokens=6, progress=False)

    def setup(work):
        (work / "judge").mkdir(parents=True)
        shutil.copy(answers, work / "judge" / "answers.jsonl")

    job = Job("judge", ["eval", "judge", "--prompts", str(prompts), "--a", str(tiny_gguf["f16"]), "--b",
                        str(tiny_gguf["q8_0"]), "--judge-model", "judge", "--base-url", fake_openai.url, "--out",
                        str(tmp_path / "work" / "judge"), "--max-tokens", "6", "--concurrency", "2",
                        "--response-format", "text"],
              setup=setup, compare=_same_eval, exhaustive=True, paid=fake_openai.paid, in_flight=2)
    tried = _crash_and_rerun(job, tmp_path)
    assert tried["events"] >= 8 and max(tried["paid_twice"]) <= 2
    verdicts = (tmp_path / "reference" / "judge" / "verdicts.jsonl").read_text().splitlines()
    assert len(verdicts) >= len(load_prompts(prompts))  # (identical answers make both orders one request)
