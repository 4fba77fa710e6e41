"""The package's shape, checked from its source: layers point one way, and each concept has one implementation.

The import graph counts every ``import`` of a ``llamatune`` module, inside functions too (a deferred import
still makes a cycle: it only hides it until the call).
"""

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "llamatune"


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """``module -> {llamatune modules it imports}``, from the source (every import statement, at any depth)."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in mods and t != name}
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle_through_a_deferred_import():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_the_package_modules():
    graph = import_graph()
    assert {"llamatune.agent", "llamatune.protocol", "llamatune.data.funccall"} <= set(graph)
    assert "llamatune.protocol" in graph["llamatune.agent"]  # the graph sees imports (sanity)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


@pytest.mark.parametrize("module, allowed", [
    ("llamatune.chatformat", set()), ("llamatune.protocol", {"llamatune.chatformat"}), ("llamatune.jsonl", set()),
    ("llamatune.toolcall", {"llamatune.chatformat"}), ("llamatune.gguf_meta", set()), ("llamatune.model_spec", set()),
    ("llamatune.evals.stats", set()), ("llamatune.chat", {"llamatune.chatformat", "llamatune.gguf_meta", "llamatune.jsonl"}),
    ("llamatune.grammar", {"llamatune.chatformat"}),
])
def test_contract_modules_sit_at_the_bottom(module, allowed):
    assert import_graph()[module] <= allowed, f"{module} imports {sorted(import_graph()[module] - allowed)}"


def test_data_and_serving_meet_only_in_the_contract():
    """The data generator never imports the agent or the serving layer (they share ``protocol``), and the agent
    never imports the data generator (its caller hands it the ICL examples)."""
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("llamatune.data"):
            assert not deps & {"llamatune.agent", "llamatune.serving", "llamatune.terminal"}, name
    assert not any(d.startswith("llamatune.data") for d in graph["llamatune.agent"])


def _sources():
    for path in _modules().values():
        yield path, path.read_text(encoding="utf-8")


def test_one_module_constructs_llama_cpp():
    where = {p.name for p, src in _sources() if re.search(r"\bLlama\(", src.replace("Llama.from_pretrained", ""))}
    assert where == {"runtime.py"}


def test_one_jsonl_appender():
    """Appending to a file happens in the store only (``open(..., "a…")``); the one other append is a server's
    log file handed to its subprocess, not rows."""
    appenders = {p.name for p, src in _sources() if re.search(r"""open\([^)]*["']a[+b]*["']""", src)}
    assert appenders == {"jsonl.py", "llamacpp_server.py"}


def test_one_way_to_replace_a_file_whole():
    """Temporary siblings (``.part``, ``.tmp``) are named in the store only: every atomic write, of a JSON document
    or of a GGUF the quantizer fills, goes through ``write_text`` or ``replacing``."""
    makers = {p.name for p, src in _sources() if re.search(r"""["']\.(?:part|tmp)\b|\.tmp\{|\.with_suffix\(["']\.tmp""", src)}
    assert makers == {"jsonl.py"}


def test_one_confidence_interval_convention():
    """Every metric is ``{"value", "low", "high", "n"}``: no ``ci_low``/``ci_high`` or ``*_ci`` keys anywhere."""
    key = r"""["'](?:ci_low|ci_high|\w+_ci)["']\s*[:\]]|\b\w+_ci\s*=[^=]"""  # a dict key, a subscript, a keyword
    offenders = {p.name for p, src in _sources() if re.search(key, src)}
    assert offenders == set()


def test_modules_stay_small():
    big = {p.relative_to(PKG).as_posix(): n for p, src in _sources() if (n := src.count("\n")) > 420}
    assert big == {}


def test_the_readme_file_list_names_every_module():
    readme = (PKG.parent / "README.md").read_text(encoding="utf-8")
    files = readme[readme.index("## Files"):readme.index("## Installing by hand")]
    missing = sorted(p.relative_to(PKG).as_posix() for p in _modules().values()
                     if p.name not in ("__init__.py", "__main__.py") and not re.search(rf"\b{re.escape(p.stem)}\b", files))
    assert missing == []


def test_the_cli_maps_every_commands_errors_to_one_set_of_exit_codes(tmp_path, capsys):
    from llamatune import cli
    from llamatune.evals.judge_client import JudgeError
    from llamatune.export import FidelityError
    from llamatune.hub import HubError

    codes = {exc: cli.exit_code(exc) for exc in (ValueError("bad row"), FileNotFoundError("x"), FidelityError("f16"),
                                                  HubError("login"), JudgeError("down", code=3), KeyboardInterrupt())}
    assert list(codes.values()) == [2, 2, 1, 2, 3, 130]
    # a command raises; the CLI prints one line naming the command, never a traceback
    assert cli.main(["eval", "toolcall", "--predictions", str(tmp_path / "p.jsonl")]) == 2
    assert capsys.readouterr().err.strip() == "llamatune eval toolcall: --out is required with --model or --predictions"
    assert cli.main(["report", str(tmp_path / "none")]) == 2
    assert "llamatune report: results directory not found" in capsys.readouterr().err
