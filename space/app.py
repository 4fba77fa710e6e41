"""The Gradio Space: GGUFs on CPU (three Llama-3.2-3B ones, base, FineTome-tuned and FuncCall-tuned, or the
demo's small ones) as a live weather assistant, a Wikipedia researcher or a plain chatbot. Everything it does is in the ``llamatune`` package
(``llamatune.agent``, ``llamatune.serving``); this file only builds the UI and launches it.

    python space/app.py                                   # the models of space/models.yaml (resolved at startup)
    python space/app.py --models-dir runs/demo/gguf       # local GGUFs, e.g. from `llamatune export` / `make demo`
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llamatune.protocol import MODES

HERE = Path(__file__).resolve().parent
DESCRIPTION = (
    "Pick a model and a mode. **weather** uses live Open-Meteo data, **research** searches Wikipedia, **chat** "
    "offers no tools. Tool calls and their results appear as collapsible steps above the answer; a question "
    "that needs no tool is answered in a single model call. **ICL** adds a few worked tool-use examples to "
    "the system prompt. Models run on CPU with llama.cpp, one at a time."
)
EXAMPLES = {
    "weather": "What's the weather like in Oslo right now?",
    "research": "Who was Ada Lovelace?",
    "chat": "Write a haiku about autumn.",
}


def build_demo(agent_factory, model_names: list[str], *, modes=tuple(MODES), default_model: str | None = None,
               title: str | None = None, limits=None, turn_log=None):
    """The UI. ``agent_factory(model_name, mode, icl)`` returns a lease (``busy``, ``needs_load``, ``wait``, and a
    context manager yielding an :class:`llamatune.agent.Agent`), e.g. ``ModelRegistry.agent_factory``.
    ``limits`` (:class:`llamatune.serving.ServingLimits`, e.g. the registry's) sizes Gradio's queue: the
    registry's line decides who waits for a model and who is told to try again. ``turn_log(record)`` receives
    each turn's timings. The title names the models served and the function-calling fine-tune is selected first,
    unless told."""
    import gradio as gr

    from llamatune.chat_turn import respond as respond_turn
    from llamatune.serving import ServingLimits, space_title
    from llamatune.serving import default_model as pick_default

    if not model_names:
        raise ValueError("build_demo needs at least one model name")
    limits = limits or ServingLimits()
    default_model = default_model or pick_default(list(model_names))
    title = title or space_title(list(model_names))

    def respond(message: str, history: list, model_name: str, mode: str, icl: bool):
        """Answer one message with the chosen model and mode; yields the reply as it is produced."""
        from gradio.context import LocalContext  # ChatInterface does not pass gr.Request to its function

        who = getattr(LocalContext.request.get(None), "session_hash", None)
        yield from respond_turn(agent_factory, message, history, model_name, mode, icl, who=who, log=turn_log)

    with gr.Blocks(title=title, fill_height=True) as demo:
        gr.Markdown(f"## {title}\n{DESCRIPTION}")
        with gr.Row(equal_height=True):
            model = gr.Dropdown(list(model_names), value=default_model, label="Model",
                                elem_id="model-select", scale=3)
            mode = gr.Radio(list(modes), value=modes[0], label="Mode", elem_id="mode-select", scale=2)
            icl = gr.Checkbox(value=False, label="ICL (few-shot tool examples)", elem_id="icl-switch", scale=1)
        chatbot = gr.Chatbot(label="Agent", elem_id="chatbot", height=520, layout="panel",
                             placeholder="Ask about the weather, a Wikipedia topic, or anything else.")
        gr.ChatInterface(
            respond,
            chatbot=chatbot,
            textbox=gr.Textbox(placeholder="Message", elem_id="msg", submit_btn=True, stop_btn=True),
            additional_inputs=[model, mode, icl],
            examples=[[EXAMPLES[m], default_model, m, False] for m in modes if m in EXAMPLES],
            cache_examples=False,
            # turns in the app at once: those holding a model and those in the registry's line (one generation
            # per model, first come first served, a visible wait), plus room to answer "busy" at once
            concurrency_limit=limits.concurrency,
            fill_height=True,
        )
    demo.queue(max_size=limits.queue_size)
    return demo


def make_registry(args):
    """The model registry from ``--models-dir`` or ``--config`` (see ``space/models.yaml``), under the limits of
    the config's ``settings`` (the flags override them). Every model is resolved here, at startup: a hub file comes
    from the cache (``preload_from_hub`` fills it when the Space is built) or is downloaded now, and a missing one
    raises FileNotFoundError naming the models.yaml entry."""
    from llamatune.serving import (ModelRegistry, ServingLimits, llama_cpp_loader, load_config, models_from_dir,
                                   resolve_all)

    specs, settings = load_config(args.config)
    if args.models_dir:
        specs = models_from_dir(args.models_dir, n_ctx=args.n_ctx or 4096)
    if args.n_ctx:
        for s in specs:
            s.n_ctx = args.n_ctx
    resolve_all(specs)
    limits = ServingLimits.from_settings(settings, f"{args.config}: settings", **{
        k: getattr(args, k) for k in ("max_resident", "max_waiting", "wait_timeout", "turn_deadline", "queue_size",
                                      "max_llm_calls", "max_new_tokens", "constrain")}, n_threads=args.threads)
    return ModelRegistry(specs, llama_cpp_loader(n_threads=limits.n_threads), limits=limits,
                         agent_kwargs={"max_llm_calls": limits.max_llm_calls, "max_new_tokens": limits.max_new_tokens,
                                       "constrain": limits.constrain})


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models-dir", help="serve every *.gguf under this directory instead of the config")
    p.add_argument("--config", default=str(HERE / "models.yaml"), help="models YAML (default: space/models.yaml)")
    p.add_argument("--host", default=None, help="default: $GRADIO_SERVER_NAME or 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: $GRADIO_SERVER_PORT or 7860")
    p.add_argument("--max-resident", type=int, default=None, help="models kept in memory at once (default 1)")
    p.add_argument("--max-waiting", type=int, default=None, help="turns that may wait in line for a model")
    p.add_argument("--wait-timeout", type=float, default=None, help="seconds a turn may wait in line")
    p.add_argument("--turn-deadline", type=float, default=None, help="seconds a turn may hold its model")
    p.add_argument("--queue-size", type=int, default=None, help="Gradio's queue beyond the turns let in")
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: physical cores)")
    p.add_argument("--n-ctx", type=int, default=None, help="context length (default: per model, 4096)")
    p.add_argument("--max-llm-calls", type=int, default=None, help="LLM calls per turn (default 2)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="tokens per LLM call (default 512)")
    p.add_argument("--no-constrain", dest="constrain", action="store_const", const=False, default=None,
                   help="decode tool calls freely (default: settings' constrain, true: under the tools' lazy grammar)")
    p.add_argument("--turn-log", default=None, help="append one JSON line per turn here (timings and outcome; "
                                                    "no message text), e.g. for bench/space_load.py")
    return p.parse_args(argv)


def turn_logger(path):
    """A thread-safe appender of turn records to a JSONL file, or None without a path."""
    if not path:
        return None
    import threading

    from llamatune.jsonl import append_jsonl

    lock = threading.Lock()

    def log(record: dict) -> None:
        with lock:
            append_jsonl(path, record)

    return log


def launch(argv=None, **launch_kwargs):
    """Build the registry and the UI from the command line, and serve (blocking unless told otherwise)."""
    args = parse_args(argv)
    try:
        registry = make_registry(args)
    except (FileNotFoundError, ValueError) as exc:  # fail at startup, loudly, not on the first request
        raise SystemExit(f"space/app.py: {exc}") from exc
    demo = build_demo(registry.agent_factory, registry.names, limits=registry.limits,
                      turn_log=turn_logger(args.turn_log))
    return demo.launch(server_name=args.host, server_port=args.port, **launch_kwargs)


main = launch

if __name__ == "__main__":
    launch()
