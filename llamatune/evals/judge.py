"""Pairwise LLM judge, both orders, FastChat's consistency rule, every number with a CI and a test.

    export OPENAI_API_KEY=...
    llamatune eval judge --prompts data/finetome/eval.jsonl --a base.gguf --b ft.gguf \\
        --judge-model gpt-4.1-mini --out results/judge-ft-vs-base [--reference] [--base-url URL]

1. Both models answer every prompt (GGUF via llama-cpp-python, or HF [+peft]); answers are cached in
   ``OUT/answers.jsonl`` per (model fingerprint, prompt), so reruns resume.
2. The judge sees each pair twice, A/B and B/A, and returns ``{"reason", "winner": "A"|"B"|"tie"}``
   (JSON schema; a free-text answer is parsed too: JSON fragments, ``[[A]]``/``[[B]]``/``[[C]]``, "Winner: A").
   Verdicts go to the append-only ``OUT/verdicts.jsonl`` the moment they arrive; on Ctrl-C or ``kill``
   (SIGTERM) the requests in flight are finished and saved, so nothing paid is lost and a rerun asks only what is
   missing (a hard kill -9 can lose at most the requests in flight, ``--concurrency``).
3. A model wins a prompt only if both orders agree; any disagreement is a tie (FastChat's rule). Reported:
   W/L/T, win rate (Wilson CI), adjusted win rate (W + T/2)/n (bootstrap CI), a sign test on W vs L (ties
   excluded), the judge's position consistency, token usage and the estimated cost. Prompts whose verdict
   could not be parsed in either order are counted apart (``n_invalid``), not as ties.

Prompts JSONL rows: ``{"id", "messages": [...]}`` (a final assistant turn is taken as the reference answer
and removed) or ``{"id", "prompt": "..."}``; an optional ``"reference"`` field gives the reference answer,
used with ``--reference`` (FastChat's reference-guided judging).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from llamatune.evals import stats
from llamatune.evals.judge_client import (JudgeClient, JudgeError, VerdictCache, ask_all, cost_usd,
                                         require_api_key)
from llamatune.jsonl import write_json

PROMPT_VERSION = "pair-v2-json-1"
SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to "
    "the user question displayed below. You should choose the assistant that follows the user's instructions and "
    "answers the user's question better. Your evaluation should consider factors such as the helpfulness, "
    "relevance, accuracy, depth, creativity, and level of detail of their responses. {reference_rule}Avoid any "
    "position biases and ensure that the order in which the responses were presented does not influence your "
    "decision. Do not allow the length of the responses to influence your evaluation. Do not favor certain names "
    "of the assistants. Be as objective as possible. Answer with a JSON object: "
    '{{"reason": "<a short explanation, at most {max_chars} characters>", "winner": "A" or "B" or "tie"}}.'
)
REFERENCE_RULE = ("You will be given a reference answer; identify and correct any mistakes in the assistants' "
                  "answers by comparing them with it. ")


# --- prompts ------------------------------------------------------------------------------------------------
def load_prompts(path: str | Path) -> list[dict]:
    """``[{"id", "messages", "reference"}]`` from a JSONL file; errors name the file, row and field."""
    from llamatune.chat import validate_messages
    from llamatune.jsonl import iter_jsonl

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file not found: {path}")
    out, seen = [], set()
    for i, row in iter_jsonl(path):
        where = f"{path}:{i}"
        pid = str(row.get("id", i))
        if pid in seen:
            raise ValueError(f"{where}: field 'id' {pid!r} is repeated")
        seen.add(pid)
        reference = row.get("reference")
        tools = row.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise ValueError(f"{where}: field 'tools' must be a list of JSON schemas")
        if "messages" in row:
            msgs = list(row["messages"])
            validate_messages(msgs, where=f"{where}: field 'messages'")
            if msgs[-1]["role"] == "assistant":  # the held-out answer: the reference, not part of the prompt
                reference = reference or _turn_text(msgs[-1])
                msgs = msgs[:-1]
            if not msgs or msgs[-1]["role"] not in ("user", "tool", "ipython"):
                raise ValueError(f"{where}: field 'messages' must end with a user (or tool) turn, "
                                 "optionally followed by the reference assistant turn")
        elif isinstance(row.get("prompt"), str) and row["prompt"].strip():
            msgs = [{"role": "user", "content": row["prompt"]}]
        else:
            raise ValueError(f"{where}: needs field 'messages' (a chat) or 'prompt' (a string)")
        out.append({"id": pid, "messages": msgs, "reference": reference, **({"tools": tools} if tools else {})})
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out


def _turn_text(m: dict) -> str:
    if m.get("tool_calls"):  # every call of the turn, in Meta's format (what the judge is told calls look like)
        from llamatune.chatformat import render_calls

        return render_calls(m["tool_calls"], "llama-3.2")
    c = m.get("content")
    return c if isinstance(c, str) else json.dumps(c, ensure_ascii=False)


def judge_messages(prompt: dict, first: str, second: str, *, reference: bool = False,
                   max_chars: int = 400) -> list[dict]:
    """The judge's chat for one order: tools offered, the conversation, then Assistant A's and B's answers."""
    turns = prompt["messages"]
    user = ""
    if prompt.get("tools"):
        tools = [{"name": t.get("function", t).get("name"), "description": t.get("function", t).get("description"),
                  "parameters": t.get("function", t).get("parameters")} for t in prompt["tools"]]
        user += f"[Available Tools]\n{json.dumps(tools, ensure_ascii=False)}\n\n"
    if len(turns) == 1:
        user += f"[User Question]\n{_turn_text(turns[0])}\n\n"
    else:
        convo = "".join(f"[{m['role'].capitalize()}]\n{_turn_text(m)}\n\n" for m in turns)
        user += (f"[The Start of Conversation]\n{convo}[The End of Conversation]\n"
                 "(The answers are to its last turn.)\n\n")
    use_ref = reference and prompt.get("reference")
    if use_ref:
        user += f"[The Start of Reference Answer]\n{prompt['reference']}\n[The End of Reference Answer]\n\n"
    user += (f"[The Start of Assistant A's Answer]\n{first}\n[The End of Assistant A's Answer]\n\n"
             f"[The Start of Assistant B's Answer]\n{second}\n[The End of Assistant B's Answer]")
    system = SYSTEM.format(reference_rule=REFERENCE_RULE if use_ref else "", max_chars=max_chars)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# --- verdicts -----------------------------------------------------------------------------------------------
_WORD = {"a": "A", "b": "B", "tie": "tie", "c": "tie", "draw": "tie", "equal": "tie", "none": "tie"}


def parse_verdict(text: str) -> tuple[str | None, str]:
    """``(winner, reason)`` with winner in {"A", "B", "tie"} or None when the text holds no verdict."""
    text = (text or "").strip()
    try:
        obj = json.loads(text)
        if isinstance(obj, dict):
            w = _WORD.get(str(obj.get("winner", "")).strip().lower())
            if w:
                return w, str(obj.get("reason", ""))
    except json.JSONDecodeError:
        pass
    m = re.search(r'"?(?:winner|verdict)"?\s*[:=]\s*"?\s*\[*\s*(A|B|tie|C|draw)\b', text, re.I)
    if m:
        reason = re.search(r'"reason"\s*:\s*"((?:[^"\\]|\\.)*)', text)
        return _WORD[m.group(1).lower()], (reason.group(1) if reason else text[:200])
    brackets = set(re.findall(r"\[\[(A|B|C)\]\]", text))
    if len(brackets) == 1:
        return _WORD[brackets.pop().lower()], text[:200]
    m = re.search(r"\b(?:assistant|response)\s+(A|B)\s+is\s+(?:better|the winner)", text, re.I)
    if m:
        return m.group(1).upper(), text[:200]
    if re.search(r"\b(?:it'?s a tie|tie\b|both (?:are )?equally)", text, re.I):
        return "tie", text[:200]
    return None, text[:200]


def to_model(position_winner: str | None, order: str) -> str | None:
    """Map a verdict about positions (A = first shown) to models: in order "BA" model B was shown first."""
    if position_winner in (None, "tie") or order == "AB":
        return position_winner
    return {"A": "B", "B": "A"}[position_winner]


def consistent_verdict(v_ab: str | None, v_ba: str | None) -> str | None:
    """FastChat's rule on model-level verdicts: a win only when both orders agree; otherwise a tie."""
    if v_ab is None or v_ba is None:
        return None
    return v_ab if v_ab == v_ba else "tie"


def summarize(items: list[dict], n_boot: int = 10000, seed: int = 0) -> dict:
    """Aggregate model-level verdicts (``item["verdict"]`` in A/B/tie/None; A is model A winning)."""
    valid = [it for it in items if it["verdict"] is not None]
    w = sum(it["verdict"] == "A" for it in valid)
    lo = sum(it["verdict"] == "B" for it in valid)
    t = len(valid) - w - lo
    n = len(valid)
    both = [it for it in items if it["ab"] is not None and it["ba"] is not None]
    agree = sum(it["ab"] == it["ba"] for it in both)
    singles = [p for it in items for p in (it.get("ab_position"), it.get("ba_position")) if p is not None]
    agg = {"n": n, "n_invalid": len(items) - n, "wins": w, "losses": lo, "ties": t}
    if n:
        scores = [1.0 if it["verdict"] == "A" else 0.5 if it["verdict"] == "tie" else 0.0 for it in valid]
        agg.update(win_rate=stats.proportion(w, n), loss_rate=lo / n, tie_rate=t / n,
                   adjusted_win_rate=stats.mean_metric(scores, n_boot=n_boot, seed=seed))
    agg["sign_test_p"] = stats.sign_test(w, lo)
    agg["position_consistency"] = agree / len(both) if both else None
    agg["first_position_preference"] = (sum(p == "A" for p in singles) / sum(p in "AB" for p in singles)
                                        if any(p in "AB" for p in singles) else None)
    return agg


# --- the run ------------------------------------------------------------------------------------------------
def run_judge(prompts: str | Path | list[dict], a: str, b: str, judge_model: str, out: str | Path, *,
              base_url: str | None = None, reference: bool = False, a_name: str | None = None,
              b_name: str | None = None, max_tokens: int = 512, concurrency: int = 4, retry_invalid: bool = False,
              response_format: str = "json_schema", reason_max_chars: int = 400, judge_max_tokens: int = 300,
              max_retries: int = 6, backoff: float = 1.0, timeout: float = 120.0,
              price_in: float | None = None, price_out: float | None = None, progress: bool = True,
              backend: str = "auto") -> dict:
    """Answer, judge both orders, aggregate; writes ``OUT/judge.json`` (kind ``judge``) and returns it. HF models
    answer on ``backend`` (:func:`llamatune.generate.load_generator`: batched transformers on a GPU, or vLLM)."""
    from llamatune.generate import generate_cached
    from llamatune.model_spec import parse_spec

    require_api_key()  # before any work
    client = JudgeClient(judge_model, base_url=base_url, response_format=response_format,
                         reason_max_chars=reason_max_chars, max_tokens=judge_max_tokens, max_retries=max_retries,
                         backoff=backoff, timeout=timeout)
    plist = prompts if isinstance(prompts, list) else load_prompts(prompts)
    client.check_key()  # a refused key stops here, before answers are generated
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sa, sb = parse_spec(a), parse_spec(b)
    names = {"A": a_name or sa.label, "B": b_name or sb.label}
    if names["A"] == names["B"]:
        names = {"A": names["A"] + " (A)", "B": names["B"] + " (B)"}
    answers = {k: generate_cached(spec, plist, out / "answers.jsonl", max_tokens=max_tokens, progress=progress,
                                  backend=backend) for k, spec in (("A", sa), ("B", sb))}

    cache = VerdictCache(out / "verdicts.jsonl")
    formats = [r.get("format") for r in cache.rows.values()
               if r.get("judge_model") == judge_model and r.get("requested_format") == response_format]
    if response_format == "json_schema" and formats and formats[-1] in ("json_object", "text"):
        client.format = formats[-1]  # this endpoint already refused json_schema: do not ask it again
    jobs = {}  # (prompt id, order) -> (key, messages)
    for p in plist:
        for order, (x, y) in (("AB", ("A", "B")), ("BA", ("B", "A"))):
            msgs = judge_messages(p, answers[x][p["id"]], answers[y][p["id"]], reference=reference,
                                  max_chars=reason_max_chars)
            jobs[(p["id"], order)] = (VerdictCache.key(judge_model, msgs, client.settings()), msgs)

    def needed(key):
        row = cache.get(key)
        return row is None or (retry_invalid and row.get("winner") is None)

    todo, queued = [], set()
    for jid, (k, m) in jobs.items():  # identical requests (e.g. identical answers in both orders) are asked once
        if needed(k) and k not in queued:
            queued.add(k)
            todo.append((jid, k, m))
    t0 = time.time()

    def save(jid, key, r) -> None:  # in the worker: a paid verdict is on disk the moment it arrives
        winner, reason = parse_verdict(r["text"])
        cache.put({"key": key, "id": jid[0], "order": jid[1], "judge_model": judge_model, "winner": winner,
                   "reason": reason, "raw": r["text"], "finish_reason": r["finish_reason"], "format": r["format"],
                   "requested_format": response_format,
                   "prompt_tokens": r["prompt_tokens"], "completion_tokens": r["completion_tokens"],
                   "time": time.time()})

    usage = ask_all(client, todo, save, concurrency=concurrency, progress=progress, desc=f"judge {judge_model}")
    errors, interrupted = usage["errors"], usage["interrupted"]

    items = []
    for p in plist:
        rows = {o: cache.get(jobs[(p["id"], o)][0]) for o in ("AB", "BA")}
        pos = {o: (r or {}).get("winner") for o, r in rows.items()}
        ab, ba = to_model(pos["AB"], "AB"), to_model(pos["BA"], "BA")
        items.append({"id": p["id"], "messages": p["messages"], "reference": p.get("reference"),
                      "answer_a": answers["A"][p["id"]], "answer_b": answers["B"][p["id"]],
                      "ab_position": pos["AB"], "ba_position": pos["BA"], "ab": ab, "ba": ba,
                      "verdict": consistent_verdict(ab, ba), "consistent": (ab == ba) if ab and ba else None,
                      "reason_ab": (rows["AB"] or {}).get("reason"), "reason_ba": (rows["BA"] or {}).get("reason"),
                      "missing": [o for o, r in rows.items() if r is None]})
    all_rows = [cache.get(k) for k in dict.fromkeys(k for k, _ in jobs.values()) if cache.get(k)]
    total = {t: sum(r.get(t, 0) for r in all_rows) for t in ("prompt_tokens", "completion_tokens")}
    result = {
        "kind": "judge", "name": f"{names['A']} vs {names['B']}", "a": names["A"], "b": names["B"],
        "a_model": a, "b_model": b, "judge_model": judge_model, "base_url": base_url, "reference": reference,
        "prompt_version": PROMPT_VERSION, "n_prompts": len(plist), "complete": not errors and not interrupted,
        "aggregate": summarize(items),
        "usage": {"requests_this_run": client.requests, "verdicts_this_run": usage["verdicts"],
                  "prompt_tokens_this_run": usage["prompt_tokens"],
                  "completion_tokens_this_run": usage["completion_tokens"],
                  "prompt_tokens_total": total["prompt_tokens"], "completion_tokens_total": total["completion_tokens"],
                  "cost_usd_this_run": cost_usd(judge_model, usage["prompt_tokens"], usage["completion_tokens"],
                                                price_in, price_out),
                  "cost_usd_total": cost_usd(judge_model, total["prompt_tokens"], total["completion_tokens"],
                                             price_in, price_out)},
        "seconds": round(time.time() - t0, 2), "items": items,
    }
    write_json((out / "judge.json"), result, indent=1)
    result["path"] = str(out / "judge.json")
    if interrupted:
        raise KeyboardInterrupt(f"interrupted: {len(all_rows)} verdicts are saved in {cache.path}; rerun to continue")
    if errors:
        raise JudgeError(f"{errors[0]}\nKept: answers in {out / 'answers.jsonl'}, {len(all_rows)} verdicts in "
                         f"{cache.path}, partial results in {result['path']}; rerun to continue.", code=errors[0].code)
    agg = result["aggregate"]
    if agg["n_invalid"]:
        bad = next((r for r in all_rows if r.get("winner") is None), {})
        msg = (f"the judge gave no parseable verdict for {agg['n_invalid']} of {len(items)} prompts (e.g. "
               f"{bad.get('raw', '')[:120]!r}); they are left out of W/L/T. The raw answers are in {cache.path}; "
               "rerun with --retry-invalid to ask again.")
        if agg["n"] == 0:
            raise JudgeError(msg, code=4)
        print(f"warning: {msg}", file=sys.stderr)
    return result


def format_result(r: dict) -> str:
    a = r["aggregate"]
    lines = [f"{r['a']} vs {r['b']} (judge {r['judge_model']}, both orders, {r['n_prompts']} prompts)",
             f"  W/L/T {a['wins']}/{a['losses']}/{a['ties']} (n={a['n']}, invalid {a['n_invalid']})"]
    if a["n"]:
        from llamatune.report import metric_cell

        lines.append(f"  win rate {metric_cell(a['win_rate'])}; adjusted {metric_cell(a['adjusted_win_rate'])}; "
                     f"sign test p={a['sign_test_p']:.3g}")
    if a["position_consistency"] is not None:
        lines.append(f"  judge position consistency {a['position_consistency']:.3f}")
    u = r["usage"]
    cost = ""
    if u["cost_usd_total"] is not None:
        cost = f", est. ${u['cost_usd_this_run']:.4f} this run (${u['cost_usd_total']:.4f} total)"
    lines.append(f"  judge requests this run {u['requests_this_run']}, tokens in/out this run "
                 f"{u['prompt_tokens_this_run']}/{u['completion_tokens_this_run']}{cost}")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("--prompts", required=True, help="held-out prompts JSONL (id + messages or prompt)")
    parser.add_argument("--a", required=True, help="model A: X.gguf, HF dir/id, or DIR+peft=ADAPTER")
    parser.add_argument("--b", required=True, help="model B (same forms)")
    parser.add_argument("--judge-model", required=True, help="e.g. gpt-4.1-mini")
    parser.add_argument("--base-url", help="OpenAI-compatible endpoint (default: the OpenAI API)")
    parser.add_argument("--reference", action="store_true", help="show the judge the reference answer")
    parser.add_argument("--out", help="output dir (default results/judge-<a>-vs-<b>)")
    parser.add_argument("--a-name", help="label of model A in tables")
    parser.add_argument("--b-name", help="label of model B in tables")
    parser.add_argument("--max-tokens", type=int, default=512, help="answer length for A and B")
    parser.add_argument("--concurrency", type=int, default=4, help="judge requests in flight")
    parser.add_argument("--retry-invalid", action="store_true", help="ask again where the verdict was unparseable")
    parser.add_argument("--response-format", default="json_schema", choices=("json_schema", "json_object", "text"),
                        help="first format to try (falls back automatically when the endpoint rejects it)")
    parser.add_argument("--reason-max-chars", type=int, default=400)
    parser.add_argument("--judge-max-tokens", type=int, default=300)
    parser.add_argument("--max-retries", type=int, default=6, help="per request, on 429/5xx/timeouts")
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles)")
    parser.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    parser.add_argument("--price-in", type=float, help="USD per 1M input tokens (cost estimate)")
    parser.add_argument("--price-out", type=float, help="USD per 1M output tokens (cost estimate)")
    parser.add_argument("--backend", default="auto", choices=("auto", "hf", "vllm"),
                        help="HF models A/B: transformers (batched on a GPU) or vLLM; auto = vLLM when installed + GPU")


def main(args) -> int:
    from llamatune.model_spec import parse_spec

    require_api_key()  # before any paid or slow work; a JudgeError exits with its code (llamatune.cli)
    out = args.out or f"results/judge-{parse_spec(args.a).label}-vs-{parse_spec(args.b).label}"
    r = run_judge(args.prompts, args.a, args.b, args.judge_model, out, base_url=args.base_url,
                  reference=args.reference, a_name=args.a_name, b_name=args.b_name, max_tokens=args.max_tokens,
                  concurrency=args.concurrency, retry_invalid=args.retry_invalid,
                  response_format=args.response_format, reason_max_chars=args.reason_max_chars,
                  judge_max_tokens=args.judge_max_tokens, max_retries=args.max_retries, backoff=args.backoff,
                  timeout=args.timeout, price_in=args.price_in, price_out=args.price_out,
                  backend=args.backend)
    print(format_result(r))
    print(f"written {r['path']}")
    return 0
