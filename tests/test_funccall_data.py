"""The function-calling generator: determinism, proportions, the family split, valid calls, null targets."""

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from llamatune.chat import render, validate_messages
from llamatune.data.funccall import (CATEGORIES, DEFAULT_PROPORTIONS, build_dataset, category_counts, generate,
                                     parse_proportions, split_families)
from llamatune.toolcall import ToolCall, parse_output, validate_call
from llamatune.tools import all_tools

from tests.conftest import REPO, requires
from tests.openai_fake import completion, send_json

N = 600


@pytest.fixture(scope="module")
def rows():
    train, test = generate(N, seed=3)
    return train, test


def _read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_same_seed_gives_byte_identical_files(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    build_dataset(a, 300, seed=7)
    build_dataset(b, 300, seed=7)
    build_dataset(c, 300, seed=8)
    for name in ("train.jsonl", "eval.jsonl", "card.md", "manifest.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "train.jsonl").read_bytes() != (c / "train.jsonl").read_bytes()
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["ids"]["test"] == [r["id"] for r in _read(a / "eval.jsonl")]
    card = (a / "card.md").read_text()
    for cat in CATEGORIES:  # counts per category and split are in the card
        tr = sum(r["category"] == cat for r in _read(a / "train.jsonl"))
        te = sum(r["category"] == cat for r in _read(a / "eval.jsonl"))
        assert f"| {cat} | {tr} | {te} | {tr + te} |" in card


def test_category_proportions(rows):
    train, test = rows
    assert len(test) == round(N * 0.2) and len(train) == N - len(test)
    for split in (train, test):
        counts = Counter(r["category"] for r in split)
        for cat, p in DEFAULT_PROPORTIONS.items():
            assert abs(counts[cat] - p * len(split)) <= 1, (cat, counts[cat])
    custom = {"single_call": 0.5, "no_tool": 0.5}
    tr, te = generate(100, seed=0, proportions=custom)
    assert Counter(r["category"] for r in tr + te) == Counter({"single_call": 50, "no_tool": 50})


def test_counts_and_proportion_errors():
    assert sum(category_counts(7).values()) == 7
    assert parse_proportions("single_call=0.4, no_tool=0.6") == {"single_call": 0.4, "no_tool": 0.6}
    with pytest.raises(ValueError, match="unknown category 'chitchat'"):
        category_counts(10, {"chitchat": 1})
    with pytest.raises(ValueError, match="category=number"):
        parse_proportions("single_call")


def test_split_by_template_family(rows):
    train, test = rows
    fam = lambda split: {f for r in split for f in r["families"]}  # noqa: E731
    assert not {r["template_id"] for r in train} & {r["template_id"] for r in test}
    assert not fam(train) & fam(test)
    split = split_families()
    assert all(split[f] == "train" for f in fam(train)) and all(split[f] == "test" for f in fam(test))
    # no user phrasing of the test set appears in training
    train_users = {m["content"] for r in train for m in r["messages"] if m["role"] == "user"}
    firsts = [r["messages"][0]["content"] for r in test if r["category"] == "single_call"]
    assert firsts and not set(firsts) & train_users
    assert {r["category"] for r in test} == set(CATEGORIES)


def test_every_call_is_valid_against_its_tool_schema(rows):
    names = set(all_tools())
    n_calls = 0
    for r in rows[0] + rows[1]:
        offered = {t["function"]["name"] for t in r["tools"]}
        assert offered and offered <= names, r["id"]
        for m in r["messages"]:
            for tc in m.get("tool_calls", []):
                call = ToolCall(tc["function"]["name"], tc["function"]["arguments"])
                assert validate_call(call, r["tools"]) is None, (r["id"], call)
                n_calls += 1
        if r["expected"]:
            assert validate_call(ToolCall(r["expected"]["name"], r["expected"]["arguments"]), r["tools"]) is None
    assert n_calls > N / 2


def test_targets_match_expected(rows):
    for r in rows[0] + rows[1]:
        validate_messages(r["messages"], r["id"])
        target = r["messages"][-1]
        assert target["role"] == "assistant"
        if r["expected"] is None:
            assert "tool_calls" not in target and target["content"].strip()
            assert not parse_output(target["content"]).attempted, r["id"]
            if r["category"] == "clarify":
                assert "?" in target["content"]
        else:
            fn = target["tool_calls"][0]["function"]
            assert (fn["name"], fn["arguments"]) == (r["expected"]["name"], r["expected"]["arguments"])
        turns = [m for m in r["messages"] if m["role"] != "system"]
        if r["category"] == "no_tool":
            assert r["expected"] is None and len(turns) == 2
        if r["category"] == "tool_result":
            assert r["expected"] is None and r["messages"][-2]["role"] == "tool"
            content = r["messages"][-2]["content"]  # wrapped as the agent wraps tool results
            assert set(content) in ({"tool", "result", "note"}, {"tool", "error", "note"})
            assert content["tool"] == r["messages"][-3]["tool_calls"][0]["function"]["name"]
        if r["category"] == "multi_turn":
            assert sum(m["role"] == "user" for m in r["messages"]) == 2


def test_rows_render_through_the_project_template(rows):
    r = next(r for r in rows[0] if r["category"] == "tool_result")
    text = render(r["messages"], r["tools"])
    fn = r["messages"][1]["tool_calls"][0]["function"]
    assert json.dumps({"name": fn["name"], "parameters": fn["arguments"]}, ensure_ascii=False) in text
    assert "<|start_header_id|>ipython<|end_header_id|>\n\n{" in text
    assert all("_keep" not in m for r in rows[0] + rows[1] for m in r["messages"])


class _FakeOpenAI(BaseHTTPRequestHandler):
    calls = 0

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls += 1
        text = body["messages"][-1]["content"]
        reply = "Quick question: " + text if type(self).calls % 5 else "Something else entirely."
        send_json(self, 200, completion(body["model"], reply, len(text.split()), len(reply.split())))

    def log_message(self, *a):
        pass


@requires("openai")
def test_paraphrase_through_an_openai_compatible_server_is_cached(tmp_path):
    server = HTTPServer(("127.0.0.1", 0), _FakeOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v1"
    try:
        meta = build_dataset(tmp_path, 20, seed=1, paraphrase_endpoint=url, paraphrase_model="fake")
        first = _FakeOpenAI.calls
        assert first > 0 and meta["paraphrase"]["used"] > 0
        assert meta["paraphrase"]["rejected"] > 0  # replies that drop the slot values are not used
        train = _read(tmp_path / "train.jsonl")
        assert any(m["content"].startswith("Quick question: ") for r in train for m in r["messages"] if m["role"] == "user")
        assert not any("Quick question" in json.dumps(r) for r in _read(tmp_path / "eval.jsonl"))
        before = (tmp_path / "train.jsonl").read_bytes()
        build_dataset(tmp_path, 20, seed=1, paraphrase_endpoint=url, paraphrase_model="fake")
        assert _FakeOpenAI.calls == first  # all from the cache
        assert (tmp_path / "train.jsonl").read_bytes() == before
    finally:
        server.shutdown()


def test_cli_writes_the_dataset(tmp_path):
    from llamatune.cli import main

    assert main(["data", "funccall", "--out", str(tmp_path), "--n", "50", "--seed", "2"]) == 0
    assert len(_read(tmp_path / "train.jsonl")) == 40 and len(_read(tmp_path / "eval.jsonl")) == 10


def test_icl_examples_come_from_training_families_only():
    from llamatune.data.icl import icl_examples, icl_system_prompt

    split = split_families()
    ex = icl_examples(7, seed=0)
    assert len(ex) == 7 and {r["category"] for r in ex} == set(CATEGORIES)
    assert all(split[f] == "train" for r in ex for f in r["families"])
    text = icl_system_prompt(3)
    assert text.count("Example ") == 3 and '"parameters"' in text
    assert icl_system_prompt(0) == ""


def test_agent_system_prompt_on_training_rows_of_agent_tool_sets(rows):
    from llamatune.protocol import MODES, SYSTEM_PROMPTS
    from llamatune.data.funccall import agent_system_prompt

    train, test = rows
    assert not any(m["role"] == "system" for r in test for m in r["messages"])
    moded = [r for r in train if agent_system_prompt([t["function"]["name"] for t in r["tools"]])]
    with_system = [r for r in moded if r["messages"][0]["role"] == "system"]
    assert 0.3 < len(with_system) / len(moded) < 0.7
    for r in with_system:
        assert r["messages"][0]["content"].startswith(tuple(SYSTEM_PROMPTS[m] for m in MODES if MODES[m]))
    others = [r for r in train if r not in moded]
    assert others and not any(r["messages"][0]["role"] == "system" for r in others)


@requires("trl", "peft")
def test_funccall_recipes_validate():
    """Both FuncCall recipes load and every key is a RECIPE_KEYS / SFTConfig / LoraConfig field."""
    from llamatune.train import load_recipe, split_recipe

    big = load_recipe(REPO / "FuncCall" / "recipes" / "llama-3.2-3b-lora.yaml")
    extra, sft, lora = split_recipe(big)
    assert lora["r"] == 16 and lora["lora_alpha"] == 16 and len(lora["target_modules"]) == 7
    assert sft["num_train_epochs"] == 1 and sft["assistant_only_loss"] is True  # 1,000 rows x 1 epoch
    assert extra["dataset_path"] == "data/funccall" and extra["chat_template"] == "llama-3.2"
    tiny = load_recipe(REPO / "FuncCall" / "recipes" / "tiny-cpu.yaml")
    extra, sft, _ = split_recipe(tiny)
    assert extra["model_name_or_path"] == "tiny" and sft["eval_strategy"] == "no"
