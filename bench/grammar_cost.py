"""What the call grammar (llamatune/grammar.py) costs: building it per tool set, and sampling under it. One JSON line.

    PYTHONPATH=. python bench/grammar_cost.py [--model X.gguf ...] [--tokens 64] [--repeats 3] [--threads N]

* ``build``: :func:`llamatune.grammar.call_grammar` on the project's seven tools for each template syntax, cold (its
  cache cleared) and cached, and llama.cpp's parse of it (``sampler()``, lazy, on the model's vocabulary); then cold
  over the tool set of every row of BFCL's AST categories (from the cached bfcl-eval wheel; skipped without it).
* ``models``: for each GGUF (default: the tiny test model, Llama 3.2's 128k vocabulary, then SmolLM2-135M's Q4_1 when
  cached), a fixed prompt, then ``--tokens`` tokens decoded one at a time (best of ``--repeats``), with the project's
  tools and the syntax of the model's template:
  ``greedy`` (a chain of greedy alone); ``grammar`` (the grammar active from the first token, applied to the whole
  vocabulary before greedy: the worst case, every token of a call); ``check_first`` (greedy first, the one token
  checked against the grammar, the whole vocabulary filtered only when it is refused: what llama.cpp's own
  ``common_sampler`` does); ``lazy_idle`` (the lazy grammar in the chain, never triggered: a text answer's cost).
  ``sample_ms`` is the sampler's time per token, ``tok_s`` decode + sampling, ``ratio`` = tok_s ÷ greedy's.
  An end-of-generation token resets the grammar and decoding goes on, so every mode decodes the same count.
  The decoded tokens are the model's (the tiny model is random; SmolLM2 untuned does not write calls), so
  ``check_first`` resamples nearly every token there; ``forced_call`` gives the per-token cost along the tokens of
  valid calls themselves: ``full_apply_ms`` (the whole vocabulary filtered) and ``check_one_ms`` (the one token a
  model writing the call right would pick, checked), each with its ``llama_sampler_accept``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPT = ("You can call these functions: get_current_weather, get_weather_forecast, calculate. User: what will "
          "the weather be in Oslo tomorrow, in celsius? Assistant:")


def _tools() -> list[dict]:
    from llamatune.tools import all_tools

    return [t.schema for t in all_tools().values()]


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def build_cost(repeats: int, vocab) -> dict:
    from llamatune import grammar

    tools, out = _tools(), {}
    for name, syntax in grammar.PRESETS.items():
        cold = []
        for _ in range(repeats):
            grammar._build.cache_clear()
            t = time.perf_counter()
            g = grammar.call_grammar(tools, syntax)
            cold.append(time.perf_counter() - t)
        t = time.perf_counter()
        grammar.call_grammar(tools, syntax)
        cached = time.perf_counter() - t
        parse = []
        for _ in range(repeats):
            t = time.perf_counter()
            smpl = g.sampler(vocab, lazy=True)
            parse.append(time.perf_counter() - t)
            import llama_cpp

            llama_cpp.llama_sampler_free(smpl)
        out[name] = {"tools": len(tools), "cold_ms": _ms(min(cold)), "cached_ms": _ms(cached),
                     "llama_cpp_parse_ms": _ms(min(parse)), "grammar_chars": len(g.grammar),
                     "grammar_rules": g.grammar.count("\n")}
    try:
        from llamatune.evals import bfcl_data

        rows = bfcl_data.load_rows(bfcl_data.AST_CATEGORIES)
    except Exception as e:  # no wheel here: the project's tools are still measured
        out["bfcl"] = {"skipped": f"{type(e).__name__}: {e}"[:200]}
        return out
    times, sizes, fallbacks = [], [], 0
    for row in rows:
        grammar._build.cache_clear()
        t = time.perf_counter()
        g = grammar.call_grammar(row["tools"], grammar.SMOLLM2)
        times.append(time.perf_counter() - t)
        sizes.append(len(g.grammar))
        fallbacks += bool(g.fallbacks)
    times.sort()
    out["bfcl"] = {"tool_sets": len(rows), "max_tools": max(len(r["tools"]) for r in rows),
                   "cold_ms_median": _ms(statistics.median(times)), "cold_ms_p95": _ms(times[int(0.95 * len(times))]),
                   "cold_ms_max": _ms(times[-1]), "grammar_chars_median": int(statistics.median(sizes)),
                   "grammar_chars_max": max(sizes), "tool_sets_with_fallbacks": fallbacks}
    return out


def _decode(llm, ids, n_tokens: int, mode: str, g) -> dict:
    import llama_cpp
    import numpy as np

    from llamatune.grammar import allowed

    ctx, vocab = llm._ctx.ctx, llm._model.vocab
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    gram = None
    if mode in ("grammar", "lazy_idle"):
        llama_cpp.llama_sampler_chain_add(chain, g.sampler(vocab, lazy=mode == "lazy_idle"))  # the chain owns it
    elif mode == "check_first":
        gram = g.sampler(vocab, lazy=False)
        cand = np.zeros(n_vocab, dtype=[("id", np.int32), ("logit", np.float32), ("p", np.float32)])
        cand["id"] = np.arange(n_vocab)
    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
    llm.reset()
    llm.eval(ids)
    sample_s, resampled, ends = 0.0, 0, 0
    start = time.perf_counter()
    try:
        for _ in range(n_tokens):
            t = time.perf_counter()
            token = llama_cpp.llama_sampler_sample(chain, ctx, -1)
            if gram is not None:
                if not allowed(gram, token):  # filter the whole vocabulary, then greedy again
                    resampled += 1
                    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
                    cand["logit"] = logits
                    data = cand.ctypes.data_as(llama_cpp.llama_token_data_p)
                    arr = llama_cpp.llama_token_data_array(data, n_vocab, -1, False)
                    llama_cpp.llama_sampler_apply(gram, ctypes.byref(arr))
                    token = int(cand["id"][np.argmax(cand["logit"])])
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    llama_cpp.llama_sampler_reset(gram)
                else:
                    llama_cpp.llama_sampler_accept(gram, token)
            elif llama_cpp.llama_vocab_is_eog(vocab, token):
                llama_cpp.llama_sampler_reset(chain)  # a finished call: start again, keep decoding
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                ends += 1
            sample_s += time.perf_counter() - t
            llm.eval([token])
        total = time.perf_counter() - start
    finally:
        llama_cpp.llama_sampler_free(chain)
        if gram is not None:
            llama_cpp.llama_sampler_free(gram)
    return {"tok_s": n_tokens / total, "sample_ms": sample_s / n_tokens * 1e3, "resampled": resampled, "ends": ends}


def forced_call_cost(vocab, syntax, g, repeats: int) -> dict:
    """Per token of valid calls (no model: their own tokens, one by one), what the grammar costs when it filters
    the whole vocabulary and when it checks the one token a model that writes the call right would pick."""
    import llama_cpp
    import numpy as np

    from llamatune.grammar import allowed, tokenize

    calls = [{syntax.name_key: "get_weather_forecast",
              syntax.arguments_key: {"location": "Paris, France", "days": 3, "unit": "celsius"}},
             {syntax.name_key: "convert_units",
              syntax.arguments_key: {"value": 12.5, "from_unit": "km", "to_unit": "mile"}}]
    body = json.dumps(calls if syntax.parallel else calls[0], ensure_ascii=False)
    tokens = tokenize(vocab, f"{syntax.opener or ''}{body}{syntax.closer or ''}")
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    cand = np.zeros(n_vocab, dtype=[("id", np.int32), ("logit", np.float32), ("p", np.float32)])
    cand["id"] = np.arange(n_vocab)
    data = cand.ctypes.data_as(llama_cpp.llama_token_data_p)
    best = {}
    for mode in ("full_apply", "check_one") * repeats:
        smpl = g.sampler(vocab, lazy=False)
        t = time.perf_counter()
        for token in tokens:
            if mode == "full_apply":
                cand["logit"] = 0.0
                arr = llama_cpp.llama_token_data_array(data, n_vocab, -1, False)
                llama_cpp.llama_sampler_apply(smpl, ctypes.byref(arr))
                assert cand["logit"][token] == 0.0
            else:
                assert allowed(smpl, token)
            llama_cpp.llama_sampler_accept(smpl, token)
        best[mode] = min(best.get(mode, 1e9), (time.perf_counter() - t) / len(tokens))
        llama_cpp.llama_sampler_free(smpl)
    return {"tokens": len(tokens), "full_apply_ms": _ms(best["full_apply"]), "check_one_ms": _ms(best["check_one"])}


def sampling_cost(path: Path, syntax_name: str, n_tokens: int, repeats: int, threads: int) -> dict:
    from llamatune.grammar import PRESETS, call_grammar
    from llamatune.runtime import open_llama

    g = call_grammar(_tools(), PRESETS[syntax_name])
    llm = open_llama(str(path), n_ctx=1024, n_threads=threads, n_threads_batch=threads)
    try:
        ids = llm.tokenize(PROMPT.encode(), add_bos=True)
        import llama_cpp

        row = {"model": path.name, "n_vocab": llama_cpp.llama_vocab_n_tokens(llm._model.vocab), "syntax": syntax_name,
               "tokens": n_tokens}
        modes = ("greedy", "grammar", "check_first", "lazy_idle")
        best: dict[str, dict] = {}
        for _ in range(repeats + 1):  # the first round warms up
            for mode in modes:
                r = _decode(llm, ids, n_tokens, mode, g)
                if _ and (mode not in best or r["tok_s"] > best[mode]["tok_s"]):
                    best[mode] = r
        row["forced_call"] = forced_call_cost(llm._model.vocab, PRESETS[syntax_name], g, repeats)
        for mode in modes:
            r = best[mode]
            row[mode] = {"tok_s": round(r["tok_s"], 1), "sample_ms": round(r["sample_ms"], 3),
                         "ratio": round(r["tok_s"] / best["greedy"]["tok_s"], 3)}
            if mode == "check_first":
                row[mode]["resampled"] = r["resampled"]
            if mode != "greedy" and mode != "lazy_idle":
                row[mode]["calls_finished"] = r["ends"]
    finally:
        llm.close()
    return row


def default_models() -> list[tuple[Path, str]]:
    from llamatune.gguf_convert import convert_hf_to_gguf
    from llamatune.models import tiny_model_dir

    f16 = tiny_model_dir() / "gguf" / "tiny-f16.gguf"
    if not f16.exists():
        convert_hf_to_gguf(tiny_model_dir(), f16, "f16")
    models = [(f16, "llama-3.2")]
    from llamatune import pypi, smollm2

    if (pypi.cache_dir() / smollm2.GGUF_NAME).exists():  # never downloaded for this
        models.append((smollm2.smollm2_gguf_path(), "smollm2"))
    return models


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", help="GGUF:SYNTAX (repeatable; SYNTAX: smollm2, llama-3.2, gemma-3)")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="default: physical cores")
    a = p.parse_args(argv)
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # the lazy sampler logs every token at DEBUG

    import llama_cpp

    from llamatune.runtime import physical_cores

    threads = a.threads or physical_cores()
    models = [(Path(m.rpartition(":")[0]), m.rpartition(":")[2]) for m in a.model] if a.model else default_models()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    vmodel = llama_cpp.llama_model_load_from_file(str(models[0][0]).encode(), params)
    try:
        build = build_cost(a.repeats, llama_cpp.llama_model_get_vocab(vmodel))
    finally:
        llama_cpp.llama_model_free(vmodel)
    rows = [sampling_cost(path, syntax, a.tokens, a.repeats, threads) for path, syntax in models]
    print(json.dumps({"bench": "grammar_cost", "threads": threads, "build": build, "models": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
