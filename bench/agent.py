"""Agent benchmark: LLM calls per turn, streaming overhead, and KV reuse of the shared prompt prefix.

    python bench/agent.py [--model X.gguf] [--threads N] [--repeats 3] [--constrain]

Default model: the tuned demo GGUF when ``runs/demo/`` has one, else the tiny test model (random weights: its
call counts say nothing about tool use, only that the machinery works). Tools answer from local fake
Open-Meteo/Wikipedia servers, so the bench is offline and repeatable. Prints one JSON line:

* ``calls_no_tool`` / ``calls_tool``: mean LLM calls per turn over held-out prompts that need no tool / need
  one, with the mode's tools offered (the original study's agent always made 2);
* ``tool_called_frac`` / ``false_call_frac``: how often a tool was called on tool / no-tool prompts;
  ``invalid_calls``: turns that reported an invalid call. ``--constrain``: the agent decodes calls under its tools'
  lazy grammar, as the Space and ``llamatune chat`` do by default (off here, so the numbers are the raw model's);
* ``decode_ratio``: the agent's decode tok/s (first token to the final event, streaming through the agent)
  ÷ raw ``Llama.generate`` tok/s on the same prompt, threads and token count (target ≥ 0.95);
* ``ttft_ratio``: second-turn time to first token ÷ first-turn, with a long shared prefix (``--prefix-tokens``:
  system prompt with reference notes + tools + ICL examples), measured from ``Agent.run`` to the first sampled
  token (target ≤ 0.2); ``ttft_ratio_space_prefix`` is the same with the Space's own prefix (tools + examples).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Held out: none of these is an ICL example (llamatune.data.icl).
NO_TOOL = [
    ("weather", "Why do leaves change colour in autumn?"),
    ("weather", "Give me a two-line poem about fog."),
    ("weather", "What does a barometer measure?"),
    ("weather", "Thanks for your help!"),
    ("research", "Say good morning in French."),
    ("research", "What is 12 times 12?"),
    ("research", "Summarise our chat so far in one sentence."),
    ("research", "Can you recommend a name for a cat?"),
]
TOOL = [
    ("weather", "Is it cold in Oslo at the moment?"),
    ("weather", "What's the forecast for Tokyo for the next two days?"),
    ("weather", "Current temperature in Paris, France in fahrenheit?"),
    ("weather", "Do I need an umbrella in Tokyo this week?"),
    ("research", "Give me the Wikipedia summary of Ada Lovelace."),
    ("research", "Search Wikipedia for the largest moon of Saturn."),
    ("research", "Look up Titan (moon) on Wikipedia."),
    ("research", "Find Wikipedia articles about Ada Lovelace."),
]
LONG_ANSWER = "Write a long story about a lighthouse keeper and a storm, with many details."
TURNS = ("Hi! Who are you and what can you do?", "Nice. Tell me one fun fact about clouds.")


def default_model() -> Path:
    demo = sorted((REPO / "runs" / "demo").rglob("*.gguf")) if (REPO / "runs" / "demo").exists() else []
    if demo:
        rank = lambda p: (("funccall" not in str(p).lower() and "tuned" not in str(p).lower()),  # noqa: E731
                          "f16" in p.name.lower() or "f32" in p.name.lower(), str(p))
        return sorted(demo, key=rank)[0]
    from llamatune.gguf_convert import convert_hf_to_gguf, quantize
    from llamatune.models import tiny_model_dir

    d = tiny_model_dir() / "gguf"
    f16, q8 = d / "tiny-f16.gguf", d / "tiny-q8_0.gguf"
    if not f16.exists():
        convert_hf_to_gguf(tiny_model_dir(), f16, "f16")
    if not q8.exists():
        quantize(f16, q8, "q8_0")
    return q8


class Recorder:
    """Wraps a model and keeps the stats of every call (``LlamaCppModel.stats``)."""

    def __init__(self, model):
        self.m, self.calls = model, []
        self.name, self.template, self.n_ctx = model.name, model.template, model.n_ctx

    def tokenize(self, text):
        return self.m.tokenize(text)

    def count_tokens(self, text):
        return self.m.count_tokens(text)

    @property
    def supports_grammar(self):
        return getattr(self.m, "supports_grammar", False)

    def complete(self, prompt, *, max_tokens, stop, stream, **kw):
        def gen():
            yield from self.m.complete(prompt, max_tokens=max_tokens, stop=stop, stream=True, **kw)
            self.calls.append(dict(self.m.stats))

        return gen()


CONSTRAIN = False  # --constrain


def calls_per_turn(model, prompts, max_new_tokens):
    from llamatune.agent import Agent

    calls, tooled, invalid = [], 0, 0
    for mode, q in prompts:
        events = list(Agent(model, mode=mode, max_new_tokens=max_new_tokens, constrain=CONSTRAIN).run([], q))
        final = events[-1].data
        calls.append(final["llm_calls"])
        tooled += final["tool_calls"] > 0
        invalid += any(e.kind == "invalid_call" for e in events)
    return statistics.mean(calls), tooled / len(prompts), invalid


def decode_rates(model, max_new_tokens, repeats):
    """Median (agent/raw ratio, agent tok/s, raw tok/s) over pairs of runs on the same prompt and token count;
    the order within a pair alternates, so drift on a shared machine does not favour either side."""
    import llama_cpp

    from llamatune.agent import Agent

    agent = Agent(model, mode="chat", max_new_tokens=max_new_tokens, constrain=CONSTRAIN)
    prompt = agent.render([{"role": "system", "content": agent.system_prompt}, {"role": "user", "content": LONG_ANSWER}])
    tokens = model.tokenize(prompt)
    llm = model.llama

    def agent_rate():
        model.reset_cache()
        for _ in agent.run([], LONG_ANSWER):
            pass
        t_end = time.perf_counter()
        st = model.stats
        return (st["generated"] - 1) / (t_end - st["t_start"] - st["ttft"]), st["generated"]

    def raw_rate(n):
        model.reset_cache()
        t_first = None
        for i, tok in enumerate(llm.generate(tokens, temp=0.0)):
            if t_first is None:
                t_first = time.perf_counter()
            if i + 1 >= n or llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok):
                break
        return i / (time.perf_counter() - t_first)

    _, n = agent_rate()  # the number of tokens the agent generates (greedy: the same every time)
    ratios, agent_rates, raw_rates = [], [], []
    for r in range(repeats):
        if r % 2:
            raw = raw_rate(n)
            a, _ = agent_rate()
        else:
            a, _ = agent_rate()
            raw = raw_rate(n)
        ratios.append(a / raw)
        agent_rates.append(a)
        raw_rates.append(raw)
    return statistics.median(ratios), statistics.median(agent_rates), statistics.median(raw_rates), n


def long_system_prompt(model, target_tokens: int) -> str:
    """The weather system prompt plus reference notes (WMO code meanings), about ``target_tokens`` long."""
    from llamatune.protocol import SYSTEM_PROMPTS
    from llamatune.tools.weather import WMO

    text, i = SYSTEM_PROMPTS["weather"] + "\n\nReference notes for reading weather data:", 0
    codes = list(WMO.items())
    while model.count_tokens(text) < target_tokens:
        code, desc = codes[i % len(codes)]
        text += f"\n- Note {i + 1}: WMO weather code {code} means {desc}."
        i += 1
    return text


def ttft_pair(model, repeats, system_prompt=None, max_new_tokens=16):
    """Median first- and second-turn time to first token (``Agent.run`` to the first sampled token) in weather
    mode with ICL examples; the shared prefix is the system prompt, tools and examples."""
    from llamatune.agent import Agent
    from llamatune.data.icl import icl_block
    from llamatune.protocol import MODES

    rec = Recorder(model)
    examples = icl_block(6, tools=MODES["weather"], template=model.template)  # calls in the model's own syntax
    agent = Agent(rec, mode="weather", examples=examples, max_new_tokens=max_new_tokens, system_prompt=system_prompt,
                  constrain=CONSTRAIN)
    firsts, seconds = [], []
    for _ in range(repeats):
        model.reset_cache()
        history = []
        for turn, q in enumerate(TURNS):
            rec.calls.clear()
            t0 = time.perf_counter()
            for ev in agent.run(history, q):
                if ev.kind == "final":
                    history += ev.data["messages"]
            st = rec.calls[0]
            (firsts if turn == 0 else seconds).append(st["t_start"] + st["ttft"] - t0)
            if turn == 0:
                prefix = st["prompt_tokens"]
    return statistics.median(firsts), statistics.median(seconds), prefix


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="agent benchmark (one JSON line)")
    p.add_argument("--model", help="a GGUF (default: runs/demo's tuned GGUF, else the tiny model)")
    p.add_argument("--template", default="auto")
    p.add_argument("--threads", type=int, default=None, help="default: physical cores")
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--max-new-tokens", type=int, default=64, help="per call, for the calls-per-turn prompts")
    p.add_argument("--decode-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--prefix-tokens", type=int, default=2048, help="length of the long shared prefix for ttft_ratio")
    p.add_argument("--constrain", action="store_true", help="decode calls under the tools' lazy grammar")
    args = p.parse_args(argv)
    global CONSTRAIN
    CONSTRAIN = args.constrain

    from llamatune.runtime import LlamaCppModel, physical_cores
    from llamatune.chat import model_template
    from llamatune.tools import http
    from llamatune.tools.fakes import FakeServices

    path = Path(args.model) if args.model else default_model()
    template = model_template(path) if args.template == "auto" else args.template
    threads = args.threads or physical_cores()
    model = LlamaCppModel(str(path), n_ctx=args.n_ctx, n_threads=threads, chat_template=template)
    http.clear_cache()
    try:
        with FakeServices():
            model.complete("Hello", max_tokens=4, stop=[], stream=False)  # warm-up
            calls_no_tool, false_call, invalid_no_tool = calls_per_turn(model, NO_TOOL, args.max_new_tokens)
            calls_tool, called, invalid_tool = calls_per_turn(model, TOOL, args.max_new_tokens)
            decode_ratio, agent_tps, raw_tps, n_dec = decode_rates(model, args.decode_tokens, args.repeats)
            ttft1, ttft2, prefix = ttft_pair(model, args.repeats, long_system_prompt(model, args.prefix_tokens))
            s1, s2, space_prefix = ttft_pair(model, args.repeats)  # the Space's own prefix: tools + 6 examples
    finally:
        model.close()
    out = {
        "model": str(path), "template": template, "threads": threads, "constrained": args.constrain,
        "invalid_calls": invalid_no_tool + invalid_tool,
        "calls_no_tool": round(calls_no_tool, 3), "calls_tool": round(calls_tool, 3),
        "tool_called_frac": round(called, 3), "false_call_frac": round(false_call, 3),
        "n_no_tool": len(NO_TOOL), "n_tool": len(TOOL),
        "decode_ratio": round(decode_ratio, 3), "agent_decode_tok_s": round(agent_tps, 2),
        "raw_decode_tok_s": round(raw_tps, 2), "decode_tokens": n_dec,
        "ttft_ratio": round(ttft2 / ttft1, 3), "ttft_first_s": round(ttft1, 4), "ttft_second_s": round(ttft2, 4),
        "shared_prefix_tokens": prefix,
        "ttft_ratio_space_prefix": round(s2 / s1, 3), "space_prefix_tokens": space_prefix,
        "original_study_calls_per_tool_turn": 2,
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
