"""Run every benchmark, collect their JSON lines into bench/results.json and regenerate bench/README.md's table.

    python bench/run_all.py [--quick] [--only a,b] [--skip a,b] [--timeout-scale 1.0]
    python bench/run_all.py --table-only          # re-render the README table from bench/results.json

Each benchmark runs as a subprocess (``PYTHONPATH`` = the repo) with its own timeout; its last stdout line that
is a JSON object is its result. ``--quick`` runs fewer steps/tokens/repeats. With ``--only``/``--skip`` the
other benchmarks keep their previous results in results.json (each result records its own date and load).
The README table sits between ``<!-- bench:begin -->`` and ``<!-- bench:end -->`` and is written by this tool.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results.json"
README = REPO / "bench" / "README.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
DEMO_RECIPE = "FuncCall/recipes/smollm2-135m-demo.yaml"
GEMMA_RECIPE = "FuncCall/recipes/gemma-270m-demo.yaml"


@dataclass
class Bench:
    name: str
    args: list[str]
    quick: list[str] = field(default_factory=list)  # appended in --quick mode (argparse: the last value wins)
    timeout: int = 600  # seconds, full mode (quick: half)
    requires: str | None = None  # a repo path that must exist, else the bench is skipped with a note
    full_only: bool = False


def benches(cores: int, demo_recipe: str = DEMO_RECIPE) -> list[Bench]:
    return [
        Bench("bandwidth", ["bench/bandwidth.py"], ["--repeats", "5"], 120),
        Bench("train_tiny", ["bench/train.py", "--recipe", "FineTome/recipes/tiny-cpu.yaml", "--steps", "20"],
              ["--steps", "8"], 900),
        Bench("train_demo", ["bench/train.py", "--recipe", demo_recipe, "--steps", "6"], ["--steps", "3"], 1800,
              requires=demo_recipe),
        Bench("train_gemma", ["bench/train.py", "--recipe", GEMMA_RECIPE, "--steps", "6"], ["--steps", "3"], 1800,
              requires=GEMMA_RECIPE),
        Bench("gemma_step", ["bench/gemma_step.py", "--threads", str(cores), "--steps", "5"], ["--steps", "2"], 900),
        Bench("gguf_decode", ["bench/gguf_decode.py"], ["--tokens", "64", "--repeats", "2"], 900),
        Bench("eval_order", ["bench/eval_order.py"], ["--limit", "20"], 900, requires="runs/demo/data/val.jsonl"),
        Bench("agent", ["bench/agent.py"], ["--repeats", "2", "--prefix-tokens", "1024"], 1800),
        Bench("arc_loglik", ["bench/arc_loglik.py", "--threads", str(cores)], ["--server-n", "4", "--repeats", "2"], 900,
              requires="bench/arc_loglik.py"),
        Bench("decode_batch", ["bench/decode_batch.py", "--threads", str(cores)], ["--limit", "40", "--no-share-run"],
              2400),
        Bench("constrain", ["bench/constrain.py", "--threads", str(cores)], ["--limit", "40", "--repeats", "1"], 2400),
        Bench("gemma_gguf", ["bench/gemma_gguf.py", "--threads", str(cores)], [], 1200, full_only=True),
        Bench("space_load", ["bench/space_load.py"], ["--sessions", "4"], 2400, requires="runs/demo/gguf"),
    ]


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine_info() -> dict:
    """CPU model, cores, RAM, library versions, date and load (no heavy imports)."""
    cpu, mem_kb = platform.processor() or "?", None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    sys.path.insert(0, str(REPO))
    from llamatune.runtime import physical_cores

    return {
        "cpu": cpu, "logical_cpus": os.cpu_count(), "physical_cores": physical_cores(),
        "ram_gib": round(mem_kb / 2**20, 1) if mem_kb else None,
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "torch": _version("torch"), "llama_cpp_python": _version("llama_cpp_python"),
        "transformers": _version("transformers"), "trl": _version("trl"), "numpy": _version("numpy"),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def last_json(stdout: str) -> dict | None:
    """The last line of ``stdout`` that parses as a JSON object."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


def run_bench(b: Bench, quick: bool, timeout_scale: float = 1.0) -> dict:
    """Run one benchmark and return its record (``status``: ok, failed, timeout or skipped)."""
    rec: dict = {"name": b.name, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 "mode": "quick" if quick else "full", "load_before": round(os.getloadavg()[0], 2)}
    if b.requires and not (REPO / b.requires).exists():
        return {**rec, "status": "skipped", "note": f"{b.requires} not present"}
    if quick and b.full_only:
        return {**rec, "status": "skipped", "note": "full mode only"}
    cmd = [sys.executable, *b.args, *(b.quick if quick else [])]
    timeout = b.timeout * timeout_scale * (0.5 if quick else 1.0)
    rec["cmd"] = " ".join(["python", *cmd[1:]])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(f"[bench] {b.name}: {rec['cmd']} (timeout {timeout:.0f} s)", file=sys.stderr, flush=True)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: a timeout kills servers it started
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        rec.update(status="timeout", seconds=round(time.perf_counter() - t, 1), stderr_tail=err[-2000:])
        return rec
    rec.update(seconds=round(time.perf_counter() - t, 1), rc=proc.returncode, load_after=round(os.getloadavg()[0], 2))
    result = last_json(out)
    if result is None:
        rec.update(status="failed", stderr_tail=err[-2000:], stdout_tail=out[-1000:])
    else:
        rec.update(status="ok", result=result)  # rc 1 with a result = a target missed (train.py), not a crash
    print(f"[bench] {b.name}: {rec['status']} in {rec['seconds']} s", file=sys.stderr, flush=True)
    return rec


# ---------------------------------------------------------------------------------------------------------------
# The README table

# (bench, result key, label, target) with target ("ge"|"le", value) or None.
METRICS = [
    ("bandwidth", "read_gb_s", "memory read bandwidth, one stream (GB/s)", None),
    ("bandwidth", "copy_gb_s", "memory copy bandwidth, read + write (GB/s)", None),
    ("train_tiny", "step_s", "tiny recipe: step time (s)", None),
    ("train_tiny", "tokens_per_s", "tiny recipe: real tokens/s", None),
    ("train_tiny", "non_pad_fraction", "tiny recipe: non-pad token fraction", ("ge", 0.95)),
    ("train_tiny", "padded_non_pad_fraction", "tiny recipe, plain padding: non-pad fraction", None),
    ("train_demo", "model", "demo recipe: model", None),
    ("train_demo", "data", "demo recipe: data", None),
    ("train_demo", "step_s", "demo recipe: step time (s)", None),
    ("train_demo", "tokens_per_s", "demo recipe: real tokens/s", None),
    ("train_demo", "non_pad_fraction", "demo recipe: non-pad token fraction", ("ge", 0.95)),
    ("train_demo", "padded_non_pad_fraction", "demo recipe, plain padding: non-pad fraction", None),
    ("train_demo", "speedup_vs_stock", "demo recipe: rows/s, label-only head ÷ stock TRL loss", None),
    ("train_gemma", "step_s", "gemma-3-270m recipe: step time, label-only head (s)", None),
    ("train_gemma", "stock_step_s", "gemma-3-270m recipe: step time, stock TRL loss (s)", None),
    ("train_gemma", "speedup_vs_stock", "gemma-3-270m recipe: rows/s, label-only head ÷ stock TRL loss", ("ge", 2.5)),
    ("gemma_step", "step_s_median", "gemma-3-270m LoRA step, 1 × 256 tokens, plain PEFT (s)", None),
    ("eval_order", "speedup", "tool-call eval: file order ÷ sorted prompts (KV prefix reuse), s/item", None),
    ("eval_order", "same_outputs", "tool-call eval: same outputs in both orders", None),
    ("agent", "model", "agent: model", None),
    ("agent", "calls_no_tool", "agent: LLM calls per no-tool turn (original: 2)", None),
    ("agent", "calls_tool", "agent: LLM calls per tool turn", None),
    ("agent", "tool_called_frac", "agent: tool called on tool prompts", None),
    ("agent", "false_call_frac", "agent: tool called on no-tool prompts", None),
    ("agent", "decode_ratio", "agent: decode tok/s ÷ raw llama.cpp", ("ge", 0.95)),
    ("agent", "ttft_ratio", "agent: 2nd-turn ÷ 1st-turn time to first token (long prefix)", ("le", 0.2)),
    ("agent", "ttft_ratio_space_prefix", "agent: same, with the Space's own prefix", None),
    ("arc_loglik", "gguf", "ARC loglik: model", None),
    ("arc_loglik", "batch_speedup", "ARC loglik: items/s, shared-KV batch ÷ one request at a time", ("ge", 2.0)),
    ("arc_loglik", "same_accuracy", "ARC loglik: same accuracy (acc, acc_norm) both ways", None),
    ("arc_loglik", "speedup", "ARC loglik: in-process ÷ server requests/s", ("ge", 50)),
    ("arc_loglik", "max_abs_diff", "ARC loglik: max abs diff in-process vs server", ("le", 1e-3)),
    ("decode_batch", "model", "decode batch: model", None),
    ("decode_batch", "batch", "decode batch: sequences decoded together", None),
    ("decode_batch", "speedup_vs_sequential", "decode batch: tool-call eval items/s, batched ÷ one at a time",
     ("ge", 4.0)),
    ("decode_batch", "identical_fraction", "decode batch: greedy outputs identical to one at a time", ("ge", 0.99)),
    ("decode_batch", "verdicts_changed", "decode batch: items whose verdict changed", ("le", 0)),
    ("decode_batch", "prefix_sharing_speedup", "decode batch: with ÷ without prompt-prefix sharing", None),
    ("constrain", "model", "constrained calls: model", None),
    ("constrain", "decode_tok_s_ratio", "constrained calls: decode tok/s, lazy call grammar ÷ raw (same items)",
     ("ge", 0.9)),
    ("constrain", "invalid_calls_raw", "constrained calls: invalid calls, raw", None),
    ("constrain", "invalid_calls_constrained", "constrained calls: invalid calls, constrained", ("le", 0)),
    ("constrain", "invalid_calls_at_budget_constrained", "constrained calls: of those, cut by the token budget", None),
    ("constrain", "irrelevance_raw", "constrained calls: irrelevance (no call where none is wanted), raw", None),
    ("constrain", "irrelevance_constrained", "constrained calls: irrelevance, constrained", None),
    ("gemma_gguf", "convert_f16_s", "gemma-3-270m HF → GGUF f16 conversion (s)", None),
    ("space_load", "sessions", "Space under load: concurrent sessions, 3 turns each", None),
    ("space_load", "answered_fraction", "Space under load: turns answered or told to wait", ("ge", 1.0)),
    ("space_load", "cross_talk", "Space under load: answers naming another session's subject", ("le", 0)),
    ("space_load", "stuck_after_disconnect", "Space under load: turns stuck behind a closed session", ("le", 0)),
    ("space_load", "p50_s", "Space under load: seconds per turn, p50", None),
    ("space_load", "p95_s", "Space under load: seconds per turn, p95", None),
    ("space_load", "queue_wait_p95_s", "Space under load: wait for the model, p95 (s)", None),
    ("space_load", "rss_growth_mb", "Space under load: server RSS growth over the run (MB)", ("le", 100)),
]


def _fmt(v) -> str:
    if isinstance(v, str):
        return Path(v).name if "/" in v and " " not in v else v  # a bare model path: its file or directory name
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 and v != 0 else f"{v:,.3f}".rstrip("0").rstrip(".")
    return str(v)


def _check(value, target) -> str:
    if target is None or not isinstance(value, (int, float)):
        return ""
    op, x = target
    ok = value >= x if op == "ge" else value <= x
    return f"{'≥' if op == 'ge' else '≤'} {_fmt(x)} {'✅' if ok else '❌'}"


def render_table(results: dict) -> str:
    """Markdown for the README from a results.json object (``{"machine": {...}, "benches": {name: record}}``)."""
    m, recs = results.get("machine", {}), results.get("benches", {})
    lines = [
        f"Measured {m.get('date', '?')} on {m.get('cpu', '?')}: {m.get('physical_cores', '?')} physical cores "
        f"({m.get('logical_cpus', '?')} logical), {m.get('ram_gib', '?')} GiB RAM, {m.get('os', '?')}; "
        f"Python {m.get('python', '?')}, torch {m.get('torch', '?')}, llama-cpp-python "
        f"{m.get('llama_cpp_python', '?')}, transformers {m.get('transformers', '?')}. "
        f"Load average at the start: {', '.join(_fmt(x) for x in m.get('loadavg', [])) or '?'}.",
        "",
        "| benchmark | metric | value | target |",
        "|---|---|---|---|",
    ]
    for name, rec in recs.items():
        if rec.get("status") != "ok":
            why = rec.get("note") or (f"rc {rec['rc']}" if "rc" in rec else "") or rec.get("status")
            lines.append(f"| {name} | {rec.get('status')}: {why} | | |")
            continue
        res = rec["result"]
        shown = False
        for bench, key, label, target in METRICS:
            if bench == name and key in res:
                lines.append(f"| {name} | {label} | {_fmt(res[key])} | {_check(res[key], target)} |")
                shown = True
        if not shown and name != "gguf_decode":
            lines.append(f"| {name} | (no known metrics; see results.json) | | |")
    gg = recs.get("gguf_decode", {})
    if gg.get("status") == "ok":
        r = gg["result"]
        lines += [
            "",
            f"GGUF decode, {r.get('threads', '?')} threads, greedy; bandwidth limit = measured read bandwidth "
            f"{_fmt(r.get('read_gb_s'))} GB/s ÷ file bytes:",
            "",
            "| model | MB | prompt tok/s | decode tok/s | bandwidth-bound tok/s | bytes × tok/s ÷ bandwidth |",
            "|---|---|---|---|---|---|",
        ]
        for row in r.get("models", []):
            lines.append(f"| {row['model']} | {row['bytes'] / 1e6:.1f} | {_fmt(row['prompt_tok_s'])} | "
                         f"{_fmt(row['decode_tok_s'])} | {_fmt(row['bandwidth_bound_tok_s'])} | "
                         f"{_fmt(row['bandwidth_ratio'])} |")
    modes = sorted({rec.get("mode", "?") for rec in recs.values()})
    loads = [rec["load_before"] for rec in recs.values() if "load_before" in rec]
    lines += ["", f"Mode: {', '.join(modes)}. Load average before each benchmark: "
                  f"{_fmt(min(loads)) if loads else '?'}–{_fmt(max(loads)) if loads else '?'}. "
                  "Raw numbers: [results.json](results.json)."]
    return "\n".join(lines)


def update_readme(text: str, table: str) -> str:
    """``text`` with everything between the bench markers replaced by ``table``."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"README must contain one {BEGIN} followed by one {END}")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer steps/tokens/repeats, half the timeouts")
    p.add_argument("--only", help="comma-separated benchmark names")
    p.add_argument("--skip", help="comma-separated benchmark names")
    p.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every timeout")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--readme", default=str(README))
    p.add_argument("--demo-recipe", default=DEMO_RECIPE, help="the recipe of the train_demo benchmark")
    p.add_argument("--table-only", action="store_true", help="only re-render the README from the results file")
    a = p.parse_args(argv)

    results_path, readme = Path(a.results), Path(a.readme)
    old = json.loads(results_path.read_text()) if results_path.exists() else {}
    if not a.table_only:
        machine = machine_info()
        all_b = benches(machine["physical_cores"], a.demo_recipe)
        names = [b.name for b in all_b]
        only = set(a.only.split(",")) if a.only else set(names)
        skip = set(a.skip.split(",")) if a.skip else set()
        unknown = (only | skip) - set(names)
        if unknown:
            p.error(f"unknown benchmark(s) {sorted(unknown)}; known: {', '.join(names)}")
        recs = dict(old.get("benches", {}))
        for b in all_b:
            if b.name in only and b.name not in skip:
                recs[b.name] = run_bench(b, a.quick, a.timeout_scale)
                old = {"machine": machine, "benches": {n: recs[n] for n in names if n in recs}}
                results_path.write_text(json.dumps(old, indent=1) + "\n")  # after each bench: a crash keeps the rest
    if not old:
        p.error(f"{results_path}: no results to render")
    readme.write_text(update_readme(readme.read_text(), render_table(old)))
    print(f"wrote {results_path} and the table in {readme}", file=sys.stderr)
    failed = [n for n, r in old["benches"].items() if r.get("status") in ("failed", "timeout")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
