"""Training attention on a CPU: torch's flash-attention kernel against a matmul-based attention (scores, an fp32
softmax, the causal mask), forward and backward, per row shape the demo's packs hold. One JSON line.

    PYTHONPATH=. python bench/attention.py [--lengths 200,450,900] [--threads 2] [--repeats 10]

Shapes are SmolLM2-135M's (9 query heads, 3 KV heads, head size 64, batch 1: one packed row, as
:func:`llamatune.train_fast.packed_attention` calls it). ``ms``: the mean of ``--repeats`` forward + backward passes
after two warm-ups, per dtype, length and kernel; ``max_abs_diff``: the two kernels' outputs compared. The profile of
the bf16 training step (bench/README.md) puts the flash kernel's backward at a third of the step: this says whether a
matmul formulation, which the AMX tiles would run, is the way out.
"""

from __future__ import annotations

import argparse
import json
import time


def matmul_attention(q, k, v, scale: float):
    """Causal attention as matmuls: ``q`` [B, H, L, D], ``k``/``v`` [B, Hk, L, D] (grouped: H a multiple of Hk)."""
    import torch

    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = (q @ k.transpose(-1, -2)) * scale
    n = q.shape[2]
    scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(scores.float(), -1).to(q.dtype) @ v


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="200,450,900")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = {"bench": "attention", "threads": a.threads, "heads": 9, "kv_heads": 3, "head_dim": 64, "results": []}
    for dtype in (torch.bfloat16, torch.float32):
        for n in (int(x) for x in a.lengths.split(",")):
            torch.manual_seed(0)
            q = torch.randn(1, 9, n, 64, dtype=dtype, requires_grad=True)
            k, v = (torch.randn(1, 3, n, 64, dtype=dtype, requires_grad=True) for _ in range(2))
            kernels = {
                "flash": lambda: torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, is_causal=True, scale=0.125, enable_gqa=True),
                "matmul": lambda: matmul_attention(q, k, v, 0.125)}
            ms = {}
            for name, fn in kernels.items():
                for _ in range(2):
                    fn().float().sum().backward()
                t0 = time.perf_counter()
                for _ in range(a.repeats):
                    fn().float().sum().backward()
                ms[name] = round((time.perf_counter() - t0) / a.repeats * 1000, 2)
            with torch.no_grad():
                diff = (kernels["flash"]().float() - kernels["matmul"]().float()).abs().max().item()
            out["results"].append({"dtype": str(dtype).split(".")[-1], "length": n, "ms": ms,
                                   "matmul_over_flash": round(ms["matmul"] / ms["flash"], 2),
                                   "max_abs_diff": round(diff, 6)})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
