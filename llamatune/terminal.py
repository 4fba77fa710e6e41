"""``llamatune chat``: a GGUF as a tool-using agent in the terminal (answer on stdout, the agent's trace on stderr).

    llamatune chat --model X.gguf --mode weather|research|chat [--icl K] [--max-llm-calls N] [--prompt "..."]
"""

from __future__ import annotations

import json
import sys

from llamatune.agent import Agent, Event
from llamatune.protocol import MODES


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="a GGUF file")
    parser.add_argument("--mode", default="weather", choices=list(MODES))
    parser.add_argument("--template", default="auto", help="chat template name, or 'auto' (from the GGUF)")
    parser.add_argument("--icl", type=int, default=0, help="few-shot tool-use examples in the system prompt")
    parser.add_argument("--max-llm-calls", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--no-constrain", dest="constrain", action="store_false",
                        help="decode calls freely (default: under the lazy grammar of the offered tools)")
    parser.add_argument("--prompt", action="append", help="answer these messages and exit (repeatable)")
    parser.add_argument("--quiet", action="store_true", help="do not print the trace")


def print_event(ev: Event, out=sys.stdout, err=sys.stderr) -> None:
    """How the terminal shows an event: answer tokens on stdout, the trace on stderr."""
    d = ev.data
    if ev.kind == "token":
        out.write(d["text"])
        out.flush()
    elif ev.kind == "llm_call":
        err.write(f"  [llm call {d['n']}/{d['of']}, prompt {d['prompt_tokens']} tokens]\n")
    elif ev.kind == "tool_call":
        err.write(f"  [tool] {d['name']}({json.dumps(d['arguments'], ensure_ascii=False)})\n")
    elif ev.kind == "tool_result":
        shown = d["error"] if d["error"] is not None else json.dumps(d["result"], ensure_ascii=False)
        err.write(f"  [result{' error' if d['error'] is not None else ''}] {shown[:300]}\n")
    elif ev.kind == "invalid_call":
        err.write(f"  [invalid call, not executed; {d['action']}] {d['reason']}\n")
    elif ev.kind == "note":
        err.write(f"  [note] {d['text']}\n")
    elif ev.kind == "final":
        err.write(f"  [{d['llm_calls']} llm call(s), {d['tool_calls']} tool call(s), {d['seconds']} s]\n")
    err.flush()


def main(args) -> int:
    from llamatune.chat import model_template
    from llamatune.data.icl import icl_block
    from llamatune.runtime import LlamaCppModel

    template = model_template(args.model) if args.template == "auto" else args.template
    model = LlamaCppModel(args.model, n_ctx=args.n_ctx, n_threads=args.threads, chat_template=template,
                          temperature=args.temperature)
    examples = icl_block(args.icl, tools=MODES[args.mode], template=template) if args.icl else ""
    agent = Agent(model, mode=args.mode, max_llm_calls=args.max_llm_calls, examples=examples,
                  max_new_tokens=args.max_new_tokens, constrain=args.constrain)
    null = open("/dev/null", "w") if args.quiet else sys.stderr
    history: list[dict] = []
    try:
        prompts = iter(args.prompt) if args.prompt else None
        if prompts is None:
            print(f"{model.name} as a {args.mode} agent ({model.n_threads} threads). /reset clears, Ctrl-D quits.",
                  file=sys.stderr)
        while True:
            try:
                msg = next(prompts) if prompts is not None else input("\nyou> ")
            except (StopIteration, EOFError):
                break
            if msg.strip() == "/reset":
                history = []
                continue
            if not msg.strip():
                continue
            if prompts is None:
                sys.stdout.write("bot> ")
            for ev in agent.run(history, msg):
                print_event(ev, err=null)
                if ev.kind == "final":
                    history += ev.data["messages"]
            sys.stdout.write("\n")
    finally:
        model.close()
    return 0
