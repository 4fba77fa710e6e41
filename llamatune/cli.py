"""The ``llamatune`` command line: subcommands that parse arguments and call the package, and the one mapping
from their errors to exit codes (:func:`exit_code`). No other logic here.

Each command lives in a module that exposes ``add_arguments(parser)`` and ``main(args) -> int``; modules
are imported only when their command runs, so ``llamatune --help`` stays fast.

    llamatune tiny-model --out DIR
    llamatune data finetome --source mlabonne/FineTome-100k --train 20000 --eval 200 --out data/finetome
    llamatune data funccall --out data/funccall --n 2000 --seed 0
    llamatune train FineTome/recipes/tiny-cpu.yaml
    llamatune rl FuncCall/recipes/grpo-cpu.yaml --sft_run runs/demo/tuned --exclude '[runs/demo/data]'
    llamatune export runs/tiny --quant f16,q8_0,q4_k_m
    llamatune soup runs/x/narrow-seed0 runs/x/narrow-seed1 --out runs/x/narrow-soup/merged
    llamatune push runs/llama-3.2-3b-funccall --repo USER/NAME [--space USER/SPACE] [--dry-run]
    llamatune eval toolcall|arc|judge|judge-agreement ...
    llamatune report results/
    llamatune chat --model X.gguf --mode weather
    llamatune serve X.gguf --port 8000
    llamatune demo
    llamatune sweep FuncCall/recipes/demo-sweep.yaml
"""

from __future__ import annotations

import argparse
import importlib
import sys

from llamatune.device import importable

# command path -> (module, one-line help)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("tiny-model",): ("llamatune.models", "write the tiny offline Llama (real Llama 3.2 tokenizer) to a directory"),
    ("data", "finetome"): ("llamatune.data.finetome", "FineTome-100K (ShareGPT) → messages train/eval JSONL"),
    ("data", "funccall"): ("llamatune.data.funccall", "generate the synthetic function-calling dataset"),
    ("train",): ("llamatune.train", "LoRA SFT from a recipe YAML (TRL, or unsloth on CUDA)"),
    ("rl",): ("llamatune.rl", "GRPO after the LoRA SFT, rewarded by the project's tool-call scorer"),
    ("soup",): ("llamatune.soup", "average the weights of fine-tunes of one base (a model soup of training seeds)"),
    ("export",): ("llamatune.export", "merge LoRA, convert to GGUF, quantize, check fidelity"),
    ("push",): ("llamatune.hub", "push a run's LoRA, merged weights and GGUFs (and a Space) to the Hugging Face Hub"),
    ("eval", "toolcall"): ("llamatune.evals.toolcall", "BFCL-style tool-call evaluation"),
    ("eval", "bfcl"): ("llamatune.evals.bfcl", "BFCL v4 (the field's function-calling test set), BFCL's AST scoring"),
    ("eval", "arc"): ("llamatune.evals.arc", "ARC-Challenge through lm-eval (HF or GGUF)"),
    ("eval", "judge"): ("llamatune.evals.judge", "pairwise LLM judge, both orders"),
    ("eval", "judge-agreement"): ("llamatune.evals.agreement", "judge-human agreement and Cohen's kappa"),
    ("report",): ("llamatune.report", "markdown tables and plots from results/"),
    ("chat",): ("llamatune.terminal", "chat with a GGUF as a tool-using agent in the terminal"),
    ("serve",): ("llamatune.endpoint", "serve a GGUF as an OpenAI-compatible endpoint that returns tool_calls"),
    ("demo",): ("llamatune.demo", "the offline end-to-end pipeline on the embedded small model"),
    ("sweep",): ("llamatune.sweep", "choose the demo's model and recipe on the validation split"),
}


def build_parser(argv_hint: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llamatune", description=__doc__.split("\n\n")[0])
    root = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for path, (module, help_) in COMMANDS.items():
        if not importable(module):
            continue
        subs = root
        if len(path) == 2:
            if path[0] not in groups:
                g = root.add_parser(path[0], help=f"{path[0]} commands")
                groups[path[0]] = g.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
            subs = groups[path[0]]
        p = subs.add_parser(path[-1], help=help_, description=help_)
        p.set_defaults(_module=module)
        # Only import the module whose arguments are needed (keeps `llamatune --help` fast).
        if argv_hint is None or list(path) == argv_hint[: len(path)]:
            importlib.import_module(module).add_arguments(p)
    return parser


# How a command's failure becomes an exit code, for every command (the commands raise; they never print errors):
# 2: bad input the user must fix (a missing file, a malformed row, a wrong argument, an existing output);
# 1: the work itself failed (a fidelity check, a judge that keeps failing, a training error);
# 130: interrupted (Ctrl-C / SIGTERM); an exception with an integer ``code`` attribute exits with that code.
INPUT_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, ValueError, LookupError)


def exit_code(exc: BaseException) -> int:
    code = getattr(exc, "code", None)
    if isinstance(code, int) and not isinstance(exc, SystemExit):
        return code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 2 if isinstance(exc, INPUT_ERRORS) else 1


def run(fn, args, prog: str = "llamatune") -> int:
    """``fn(args)`` with the project's error-to-exit-code mapping: an expected error is one line on stderr naming
    the command, never a traceback (a bug still shows its traceback)."""
    try:
        return int(fn(args) or 0)
    except (KeyboardInterrupt, RuntimeError, OSError, *INPUT_ERRORS) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, INPUT_ERRORS):
            raise  # a disk or network failure outside the commands' own handling: keep the traceback
        print(f"{prog}: {exc or 'interrupted'}", file=sys.stderr)
        return exit_code(exc)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    prog = " ".join(["llamatune", args.command] + ([args.subcommand] if getattr(args, "subcommand", None) else []))
    return run(importlib.import_module(args._module).main, args, prog)


if __name__ == "__main__":
    sys.exit(main())
