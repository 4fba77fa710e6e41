"""Memory read bandwidth of this machine, as one llama.cpp-like stream would see it. Prints one JSON line.

    python bench/bandwidth.py [--mb 512] [--repeats 9]

``read_gb_s``: best of N ``numpy.max`` over a float32 array far larger than the caches (one thread reading;
``max`` is vectorised and light, so it is limited by memory, where ``sum``'s pairwise summation is not);
``copy_gb_s``: best of N ``numpy.copyto`` of the same array, counting bytes read + written. Decoding a GGUF
reads every weight once per token, so ``model bytes × tok/s ÷ read_gb_s`` (bench/gguf_decode.py) says how
close decoding is to the memory-bandwidth limit. On a machine shared with other jobs, take the best of many.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def measure(mb: int = 512, repeats: int = 9) -> dict:
    """``{"read_gb_s", "copy_gb_s", "array_mb", "repeats"}``: best-of-``repeats`` single-stream bandwidths."""
    import numpy as np

    n = mb * 2**20 // 4
    a = np.ones(n, dtype=np.float32)  # touched, so no page faults in the timed loops
    b = np.empty_like(a)
    b.fill(0)
    read, copy = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        a.max()
        read.append(time.perf_counter() - t)
        t = time.perf_counter()
        np.copyto(b, a)
        copy.append(time.perf_counter() - t)
    nbytes = a.nbytes
    return {"read_gb_s": round(nbytes / min(read) / 1e9, 2), "copy_gb_s": round(2 * nbytes / min(copy) / 1e9, 2),
            "read_gb_s_median": round(nbytes / sorted(read)[len(read) // 2] / 1e9, 2),
            "array_mb": mb, "repeats": repeats}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=int, default=512, help="array size in MiB (well above the last-level cache)")
    p.add_argument("--repeats", type=int, default=9)
    a = p.parse_args(argv)
    print(json.dumps({"bench": "bandwidth", **measure(a.mb, a.repeats)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
