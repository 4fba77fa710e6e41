"""The README's pictures, taken from the real Space: ``space/app.py`` serving the demo GGUFs that ``make demo``
wrote (``runs/demo/gguf``), weather and Wikipedia answered by the local fake Open-Meteo/MediaWiki servers,
driven in Chromium. Each test asserts what its picture shows before it is saved.

    make screenshots      # writes assets/space-*.png (needs runs/demo/gguf: run `make demo` first)

Without ``$LLAMATUNE_SCREENSHOTS`` the pictures go to a temporary directory (the test still checks them).
The conversations are single greedy runs of the models on this machine's CPU; the rates (how often the tuned
model calls a tool when it should) are in the README's tables, not in these pictures.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from llamatune.tools import http
from llamatune.tools.fakes import FakeServices
from tests.conftest import REPO, requires
from tests.space_fakes import free_port, load_app

CHROMIUM = "/usr/bin/chromium"
GGUF_DIR = REPO / "runs" / "demo" / "gguf"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.needs_artifact(str(GGUF_DIR)),
    requires("playwright", "gradio", "llama_cpp"),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} not installed (run `make browser`)"),
    pytest.mark.skipif(not any(GGUF_DIR.glob("*.gguf")), reason=f"no GGUFs in {GGUF_DIR} (run `make demo`)"),
]
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
WEATHER = "What's the weather in Oslo?"
RESEARCH = "What does Wikipedia say about Ada Lovelace?"


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    d = Path(os.environ.get("LLAMATUNE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def served():
    from llamatune.serving import default_model

    http.clear_cache()
    fake = FakeServices().start()
    app = load_app()
    registry = app.make_registry(app.parse_args(["--models-dir", str(GGUF_DIR), "--threads", "2"]))
    demo = app.build_demo(registry.agent_factory, registry.names)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    tuned = default_model(registry.names)
    base = next(n for n in registry.names if "base" in n.lower())
    yield demo.local_url, tuned, base
    demo.close()
    fake.stop()
    http.clear_cache()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def conversation(browser, url: str, model: str, mode: str, text: str, *, timeout: float = 600):
    """A fresh page: choose model and mode, send ``text``, wait for the turn's summary line; the page."""
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.set_default_timeout(30_000)
    page.goto(url)
    page.wait_for_selector("#msg textarea")
    page.locator("#model-select input[role=combobox]").click()
    page.get_by_role("option", name=model, exact=True).click()
    page.locator("#mode-select").get_by_text(mode, exact=True).click()
    page.locator("#msg textarea").fill(text)
    page.locator("#msg textarea").press("Enter")
    deadline = time.time() + timeout
    while "LLM call" not in page.locator("#chatbot").inner_text():
        assert time.time() < deadline, f"{model} gave no answer in {timeout} s"
        time.sleep(0.5)
    return page


def open_tool_steps(page) -> list[str]:
    """Expand every tool step of the chat (collapsed by default), let the chat grow to show the whole turn (the
    picture), and return the steps' titles."""
    steps = page.locator("#chatbot").get_by_text("🛠️", exact=False)
    titles = steps.all_inner_texts()
    for i in range(steps.count()):
        steps.nth(i).click()
    page.add_style_tag(content="#chatbot, #chatbot > div { height: auto !important; max-height: none !important; }")
    return titles


def final_answer(page, question: str) -> str:
    """The turn's answer as the visitor reads it: the chat's text with its tool steps still collapsed, after the
    question, without the steps' titles and the summary line."""
    text = page.locator("#chatbot").inner_text().split(question, 1)[-1]
    for title in page.locator("#chatbot").get_by_text("🛠️", exact=False).all_inner_texts():
        text = text.replace(title, "")
    return re.sub(r"\s*\n\s*\d+\s*$", "", text.rsplit("LLM call", 1)[0])  # "…answer\n2 LLM calls · …"


def test_weather_conversation_shows_its_tool_trace_and_a_grounded_answer(served, browser, out_dir):
    from llamatune.evals.scoring import grounding_reason
    from llamatune.tools import all_tools

    url, tuned, _ = served
    page = conversation(browser, url, tuned, "weather", WEATHER)
    answer = final_answer(page, WEATHER)
    titles = open_tool_steps(page)
    called = [n for n in ("get_current_weather", "get_weather_forecast") if any(n in t for t in titles)]
    assert called, titles
    chat = page.locator("#chatbot").inner_text()
    assert "1 tool call" in chat or "2 tool calls" in chat, chat[-600:]
    # the answer is prose from the fake Open-Meteo result: no broken call, no result pasted as the answer
    assert "Invalid tool call" not in chat, chat[-800:]
    assert "{" not in answer and "<tool" not in answer, answer
    result = json.dumps(all_tools()[called[0]](location="Oslo"))  # what the fake served for Oslo
    context = [{"role": "user", "content": WEATHER}, {"role": "tool", "content": result}]
    assert grounding_reason(answer, context) is None, (answer, result)
    page.screenshot(path=str(out_dir / "space-weather.png"), full_page=True)
    page.close()


def test_plain_chatbot_beside_the_wikipedia_researcher(served, browser, out_dir):
    url, tuned, _ = served
    chat = conversation(browser, url, tuned, "chat", "Write a haiku about autumn.")
    assert "0 tool calls" in chat.locator("#chatbot").inner_text()  # chat mode offers no tools
    open_tool_steps(chat)
    chat.screenshot(path=str(out_dir / "space-chat.png"), full_page=True)
    chat.close()
    research = conversation(browser, url, tuned, "research", RESEARCH)
    titles = open_tool_steps(research)
    assert any("wikipedia" in t for t in titles), titles
    research.screenshot(path=str(out_dir / "space-research.png"), full_page=True)
    research.close()


def test_same_prompt_before_funccall_tuning(served, browser, out_dir):
    """The base model on the weather prompt of the first picture: what the tune changed."""
    url, tuned, base = served
    page = conversation(browser, url, base, "weather", WEATHER)
    titles = open_tool_steps(page)
    text = page.locator("#chatbot").inner_text()
    page.screenshot(path=str(out_dir / "space-before.png"), full_page=True)
    page.close()
    assert base in text and tuned not in text  # the base model answered (the summary line names the model)
    assert not any("weather" in t for t in titles), titles  # ... without calling the weather tool
