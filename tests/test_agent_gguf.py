"""End to end through llama-cpp-python on the tiny GGUF: the agent runs real turns, the second turn reuses
the KV cache of the shared prefix, streaming equals one-shot decoding, stop strings and the CLI work."""

import subprocess
import sys

import pytest

from tests.conftest import REPO, requires

pytestmark = requires("llama_cpp")


@pytest.fixture(scope="module")
def tiny_llm(tiny_gguf):
    from llamatune.runtime import LlamaCppModel

    m = LlamaCppModel(str(tiny_gguf["q8_0"]), n_ctx=1024, n_threads=1)  # 1 thread: the test machine is shared
    yield m
    m.close()


def test_agent_turns_on_tiny_gguf_reuse_the_prefix(tiny_llm):
    from llamatune.agent import Agent

    agent = Agent(tiny_llm, mode="weather", max_new_tokens=6)
    history = []
    stats = []
    for msg in ["What's the weather in Oslo?", "And tomorrow?"]:
        events = list(agent.run(history, msg))
        final = events[-1]
        assert final.kind == "final" and 1 <= final.data["llm_calls"] <= 2 and final.data["text"]
        history += final.data["messages"]
        stats.append(dict(tiny_llm.stats))
    # turn 2 re-processes only what is new: the system prompt, tools and turn 1 come from the KV cache
    assert stats[1]["cached_tokens"] >= stats[0]["prompt_tokens"]
    assert stats[1]["prompt_tokens"] - stats[1]["cached_tokens"] < 60


def test_stream_equals_one_shot_and_stops(tiny_llm):
    prompt = "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>" \
             "<|start_header_id|>assistant<|end_header_id|>\n\n"
    whole = tiny_llm.complete(prompt, max_tokens=8, stop=[], stream=False)
    pieces = list(tiny_llm.complete(prompt, max_tokens=8, stop=[], stream=True))
    assert whole == "".join(pieces) and tiny_llm.stats["generated"] == 8
    assert tiny_llm.stats["cached_tokens"] == tiny_llm.stats["prompt_tokens"]  # the same prompt again
    # a stop string cuts the text before it and ends decoding early
    first = whole[:1]
    assert first and tiny_llm.complete(prompt, max_tokens=8, stop=[first], stream=False) == ""
    assert tiny_llm.stats["finish"] == "stop" and tiny_llm.stats["generated"] < 8
    assert tiny_llm.count_tokens(prompt) == len(tiny_llm.tokenize(prompt)) and tiny_llm.tokenize(prompt)[0] == 128000


def test_cli_chat_one_shot(tiny_gguf):
    r = subprocess.run([sys.executable, "-m", "llamatune", "chat", "--model", str(tiny_gguf["q8_0"]), "--mode",
                        "chat", "--prompt", "hi", "--max-new-tokens", "4", "--n-ctx", "512", "--threads", "1"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[llm call 1/2" in r.stderr and "1 llm call(s), 0 tool call(s)" in r.stderr
