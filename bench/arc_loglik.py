"""ARC log-likelihood scoring on llama.cpp: the shared-KV batch (a question evaluated once, its cells shared by one
sequence per choice, the choices of several questions in one batch) against one request at a time (the in-process
path before it: requests in sorted order, the KV cache of the common prefix kept, one ``llama_decode`` per choice),
same GGUF, same requests, same threads, one run; both paths' accuracy; and, as a cross-check, lm-eval's ``gguf``
model over ``llama_cpp.server`` on the first few requests.

    PYTHONPATH=. python bench/arc_loglik.py [--gguf X.gguf] [--data tests/fixtures/arc_sample.jsonl] [--server-n 8]

Default model: the base demo GGUF when ``runs/demo`` exists, else SmolLM2-135M-Instruct f16 (built once into the cache);
``--gguf tiny`` takes the tiny f16 test model. Items/s of each path: best of ``--repeats`` passes over every item,
the cache emptied before each. One JSON line: ``batch_speedup`` (items/s shared-KV batch ÷ one at a time; target
>= 2), ``accuracy`` (acc and acc_norm of both), ``max_abs_diff_batch`` (largest |Δ log-likelihood| between them),
``speedup``/``max_abs_diff`` (in-process ÷ server, on ``--server-n`` requests; 0 skips the server). On a machine shared
with other jobs the numbers swing: note the load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def tiny_f16() -> Path:
    from llamatune.gguf_convert import convert_hf_to_gguf
    from llamatune.models import tiny_model_dir

    path = tiny_model_dir() / "gguf" / "tiny-f16.gguf"
    return path if path.exists() else convert_hf_to_gguf(tiny_model_dir(), path, "f16")


def default_gguf() -> Path:
    demo = sorted((REPO / "runs" / "demo" / "gguf").glob("*base*.gguf"))
    if demo:
        return demo[0]
    sys.path.insert(0, str(REPO / "bench"))
    from decode_batch import smollm2_f16

    return smollm2_f16()


def arc_requests(data: str):
    """The cloze task's (context, continuation) requests, as lm-eval builds them for ARC, and the items."""
    from lm_eval.api.instance import Instance

    from llamatune.evals.arc import load_arc_items

    items, reqs = load_arc_items(data), []
    for it in items:
        ctx = f"Question: {it['question']}\nAnswer:"
        reqs += [Instance("loglikelihood", {}, (ctx, " " + c), i) for i, c in enumerate(it["choices"]["text"])]
    return items, reqs


class OneAtATime:
    """The in-process scorer as it was: requests in sorted token order, each evaluated after the longest common
    prefix with what the KV cache holds (so a question's choices evaluate the question once), one ``llama_decode``
    per request, logits only where a continuation token is predicted; the row predicting a question's first choice
    token is kept for its other choices."""

    def __init__(self, lm):
        self.lm, self.dec = lm, lm.decoder  # the same llama.cpp context as the batch (its slot 0 only)
        self.held: list[int] = []  # what slot 0 holds in the KV cache
        self.last = None
        self.evaluated = 0

    def rows(self, tokens, need_from):
        from llamatune.decode import common_prefix

        dec, lib = self.dec, self.dec._lib
        p = min(common_prefix(self.held, tokens), need_from)
        lib.llama_memory_seq_rm(dec.mem, 0, p, -1)
        self.held = self.held[:p]
        out = []
        for i in range(p, len(tokens), dec.n_batch):
            chunk = tokens[i: i + dec.n_batch]
            for j, t in enumerate(chunk):
                dec.put(j, t, i + j, 0, i + j >= need_from)
            dec.batch.n_tokens = len(chunk)
            if lib.llama_decode(dec.ctx, dec.batch) != 0:
                raise RuntimeError("llama_decode failed")
            for j in range(len(chunk)):
                if i + j >= need_from:
                    ptr = lib.llama_get_logits_ith(dec.ctx, j)
                    out.append(np.ctypeslib.as_array(ptr, shape=(dec.n_vocab,)).copy())
            self.held += chunk
            self.evaluated += len(chunk)
        return np.stack(out)

    def score(self, ctx, cont):
        from llamatune.evals.llamacpp_lm import log_softmax

        ctx, cont = self.lm._fit(ctx, cont)
        whole, start = ctx + cont, len(ctx)
        if self.last is not None and self.last[0] == tuple(ctx):
            first = self.last[1][None]
            rows = first if len(cont) == 1 else np.vstack([first, self.rows(whole[:-1], start)])
        else:
            rows = self.rows(whole[:-1], start - 1)
            self.last = (tuple(ctx), rows[0])
        return float(log_softmax(rows)[np.arange(len(cont)), cont].sum()), bool(np.all(rows.argmax(-1) == cont))

    def loglikelihood(self, reqs):
        enc = [self.lm._encode_pair(c, x) for c, x in (r.args for r in reqs)]  # as lm-eval encodes them
        order = sorted(range(len(enc)), key=lambda i: enc[i][0] + enc[i][1])
        out = [None] * len(enc)
        for i in order:
            out[i] = self.score(*enc[i])
        return out


def accuracy(items, reqs, scores) -> dict:
    acc = norm = k = 0
    for it in items:  # the requests are the items' choices, in order
        gold = it["choices"]["label"].index(it["answerKey"])
        texts = it["choices"]["text"]
        ll, k = [s[0] for s in scores[k:k + len(texts)]], k + len(texts)
        acc += int(np.argmax(ll)) == gold
        norm += int(np.argmax([x / len(" " + t) for x, t in zip(ll, texts)])) == gold
    return {"acc": round(acc / len(items), 4), "acc_norm": round(norm / len(items), 4)}


def best_of(repeats, fn):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", help="a GGUF, or 'tiny' (default: the demo's base GGUF, else SmolLM2 f16)")
    p.add_argument("--data", default=str(REPO / "tests/fixtures/arc_sample.jsonl"))
    p.add_argument("--server-n", type=int, default=8, help="requests sent to the (slow) server; 0: none")
    p.add_argument("--n-ctx", type=int, default=1024)
    p.add_argument("--threads", type=int, default=None, help="default: $LLAMATUNE_THREADS, else the physical cores")
    p.add_argument("--repeats", type=int, default=5, help="passes per path (the best one is reported)")
    a = p.parse_args()
    from llamatune.evals.llamacpp_lm import LlamaCppLM
    from llamatune.runtime import threads

    gguf = tiny_f16() if a.gguf == "tiny" else Path(a.gguf) if a.gguf else default_gguf()
    items, reqs = arc_requests(a.data)
    lm = LlamaCppLM(model_path=str(gguf), n_ctx=a.n_ctx, n_threads=a.threads)
    seq = OneAtATime(lm)
    try:
        lm.loglikelihood(reqs[:8], disable_tqdm=True)  # warm up: weights paged in, buffers allocated

        def batched():
            lm.decoder.clear()
            e0 = lm.n_evaluated
            return lm.loglikelihood(reqs, disable_tqdm=True), lm.n_evaluated - e0

        def one_at_a_time():
            lm.decoder.clear()
            seq.held, seq.last, seq.evaluated = [], None, 0
            return seq.loglikelihood(reqs), seq.evaluated

        (fast, ev_fast), t_fast = best_of(a.repeats, batched)
        (slow, ev_slow), t_slow = best_of(a.repeats, one_at_a_time)
    finally:
        lm.close()
    res = {"bench": "arc_loglik", "gguf": gguf.name, "items": len(items), "requests": len(reqs),
           "threads": threads(a.threads), "batch_items_per_s": round(len(items) / t_fast, 2),
           "one_at_a_time_items_per_s": round(len(items) / t_slow, 2),
           "batch_speedup": round(t_slow / t_fast, 2),
           "accuracy": {"batch": accuracy(items, reqs, fast), "one_at_a_time": accuracy(items, reqs, slow)},
           "max_abs_diff_batch": max(abs(x[0] - y[0]) for x, y in zip(fast, slow)),
           "same_greedy_flags": [x[1] for x in fast] == [y[1] for y in slow],
           "tokens_evaluated": {"batch": ev_fast, "one_at_a_time": ev_slow}}
    res["same_accuracy"] = res["accuracy"]["batch"] == res["accuracy"]["one_at_a_time"]
    if a.server_n:
        from lm_eval.models.gguf import GGUFLM

        from llamatune.evals.llamacpp_server import LlamaCppServer

        sub = reqs[: a.server_n]
        with LlamaCppServer(gguf, n_ctx=a.n_ctx) as srv:
            server = GGUFLM(base_url=srv.url)
            server.loglikelihood(sub[:1], disable_tqdm=True)  # warm up
            t = time.perf_counter()
            slow_srv = server.loglikelihood(sub, disable_tqdm=True)
            t_srv = time.perf_counter() - t
        res.update(server_requests=len(sub), server_req_per_s=round(len(sub) / t_srv, 3),
                   speedup=round((len(reqs) / t_fast) / (len(sub) / t_srv), 1),
                   max_abs_diff=max(abs(x[0] - y[0]) for x, y in zip(fast, slow_srv)))
    res.update(cpus=os.cpu_count(), load=round(os.getloadavg()[0], 1),
               goal={"batch_speedup": ">= 2 (same accuracy)", "speedup": ">= 50", "max_abs_diff": "<= 1e-3 (f16)"})
    print(json.dumps(res))


if __name__ == "__main__":
    main()
