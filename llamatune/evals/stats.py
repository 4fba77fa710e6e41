"""Statistics for honest evaluation: every number with its uncertainty and a test.

Pure Python + numpy (exact binomial tails with integer arithmetic, so scipy is not needed; the tests check
them against ``scipy.stats``). Shared by the ARC, judge and tool-call evaluators and by the report.

* ``mcnemar_exact(a_correct, b_correct)`` — paired test on item correctness (exact binomial on discordant pairs)
* ``paired_bootstrap_diff(a, b)`` — bootstrap CI of ``mean(a) - mean(b)`` resampling *items* (pairs kept)
* ``bootstrap_ci(values, stat)`` — percentile bootstrap CI of any statistic
* ``wilson_ci(k, n)`` — Wilson score interval of a proportion
* ``sign_test(wins, losses)`` — two-sided exact binomial test (ties excluded by the caller)
* ``cohen_kappa(labels_a, labels_b)`` — chance-corrected agreement of two raters
* ``permutation_test(a, b)`` — exact two-sided test of mean(b) − mean(a) for two small independent samples (the
  training seeds of two settings: the seed, not the item, is then the unit that repeats)

and the one result shape every evaluator writes and the report reads:

* ``proportion(k, n)`` / ``mean_metric(values)`` — a metric ``{"value", "low", "high", "n"}`` (+ ``"k"``);
* ``paired_comparison(a_correct, b_correct)`` — the one paired comparison of two systems on the same items:
  ``{"n", "a", "b", "diff", "mcnemar"}`` where ``diff`` is the metric of accuracy(B) − accuracy(A).

Conventions: ``paired_bootstrap_diff``'s ``diff`` is *first minus second*; a comparison is always B − A (B the
new system, A the baseline); CIs are two-sided at level ``ci`` (default 0.95).
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from statistics import NormalDist
from typing import Callable, Sequence

import numpy as np

__all__ = [
    "binom_two_sided",
    "bootstrap_ci",
    "cohen_kappa",
    "mcnemar_exact",
    "mean_metric",
    "paired_bootstrap_diff",
    "paired_comparison",
    "permutation_test",
    "proportion",
    "sign_test",
    "wilson_ci",
]


def binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial p-value for ``k`` successes in ``n`` trials under p = 1/2.

    With p = 1/2 the distribution is symmetric, so the two-sided p-value (the probability of an outcome at
    most as likely as ``k``, as in ``scipy.stats.binomtest``) is ``min(1, 2·P(X ≤ min(k, n-k)))``.
    """
    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 1.0
    m = min(k, n - k)
    tail = Fraction(sum(math.comb(n, i) for i in range(m + 1)), 2**n)
    return float(min(Fraction(1), 2 * tail))


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test of ``wins`` vs ``losses`` (ties must be excluded before calling)."""
    if wins < 0 or losses < 0:
        raise ValueError(f"wins and losses must be >= 0, got {wins}, {losses}")
    return binom_two_sided(wins, wins + losses)


def permutation_test(a: Sequence[float], b: Sequence[float]) -> dict:
    """Exact two-sided permutation test of ``mean(b) - mean(a)`` for two independent samples (every split of the
    pooled values into groups of their sizes is enumerated, so keep them small: seeds of a setting).

    ``p_value`` is the share of splits whose |difference| is at least the observed one; ``min_p`` the smallest
    p-value the two sizes can give at all (3 seeds against 3: 2/20 = 0.1, so no gap between them is significant at
    0.05, however large).
    """
    a, b = [float(x) for x in a], [float(x) for x in b]
    if not a or not b:
        raise ValueError(f"permutation test needs both samples non-empty, got {len(a)} and {len(b)}")
    pooled, k = a + b, len(a)
    if math.comb(len(pooled), k) > 1_000_000:
        raise ValueError(f"permutation test enumerates every split: {len(a)} + {len(b)} values are too many")
    obs = sum(b) / len(b) - sum(a) / len(a)
    extreme = 0
    for idx in itertools.combinations(range(len(pooled)), k):
        chosen = set(idx)
        ga = [pooled[i] for i in idx]
        gb = [v for i, v in enumerate(pooled) if i not in chosen]
        extreme += abs(sum(gb) / len(gb) - sum(ga) / len(ga)) >= abs(obs) - 1e-12
    splits = math.comb(len(pooled), k)
    return {"diff": obs, "p_value": extreme / splits, "n_a": len(a), "n_b": len(b),
            "min_p": (2 if len(a) == len(b) else 1) / splits}


def _as_bool(x: Sequence, name: str) -> np.ndarray:
    arr = np.asarray(list(x))
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a flat sequence")
    return arr.astype(bool)


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict:
    """Exact McNemar test on paired item correctness.

    ``b01`` counts items that A got wrong and B right, ``b10`` items A got right and B wrong; the p-value is
    the exact two-sided binomial test of ``b01`` vs ``b10`` (the concordant items carry no information).
    """
    a = _as_bool(a_correct, "a_correct")
    b = _as_bool(b_correct, "b_correct")
    if len(a) != len(b):
        raise ValueError(f"paired test needs equal lengths, got {len(a)} and {len(b)}")
    b01 = int(np.sum(~a & b))
    b10 = int(np.sum(a & ~b))
    return {"b01": b01, "b10": b10, "n": int(len(a)), "p_value": binom_two_sided(b01, b01 + b10)}


def _resample_means(values: np.ndarray, n_boot: int, rng: np.random.Generator, chunk: int = 1_000_000) -> np.ndarray:
    """Means of ``n_boot`` bootstrap resamples of the rows of ``values`` (n,) or (n, k), in memory-bounded chunks."""
    n = len(values)
    per = max(1, chunk // max(n, 1))
    out = []
    done = 0
    while done < n_boot:
        m = min(per, n_boot - done)
        idx = rng.integers(0, n, size=(m, n))
        out.append(values[idx].mean(axis=1))
        done += m
    return np.concatenate(out)


def _check_ci(ci: float) -> tuple[float, float]:
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    return (1 - ci) / 2 * 100, (1 + ci) / 2 * 100


def paired_bootstrap_diff(
    a: Sequence[float], b: Sequence[float], n_boot: int = 10000, seed: int = 0, ci: float = 0.95
) -> dict:
    """Paired bootstrap CI of ``mean(a) - mean(b)``: items are resampled with their (a, b) pair intact.

    Returns ``{"diff", "low", "high", "mean_a", "mean_b", "n"}``.
    """
    a_arr = np.asarray(list(a), dtype=float)
    b_arr = np.asarray(list(b), dtype=float)
    if len(a_arr) != len(b_arr):
        raise ValueError(f"paired bootstrap needs equal lengths, got {len(a_arr)} and {len(b_arr)}")
    if len(a_arr) == 0:
        raise ValueError("paired bootstrap needs at least one item")
    lo_q, hi_q = _check_ci(ci)
    d = a_arr - b_arr
    boots = _resample_means(d, n_boot, np.random.default_rng(seed))
    low, high = np.percentile(boots, [lo_q, hi_q])
    return {
        "diff": float(d.mean()),
        "low": float(low),
        "high": float(high),
        "mean_a": float(a_arr.mean()),
        "mean_b": float(b_arr.mean()),
        "n": int(len(d)),
    }


def bootstrap_ci(
    values: Sequence[float],
    stat: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 10000,
    seed: int = 0,
    ci: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI ``(low, high)`` of ``stat(values)``, resampling items with replacement."""
    arr = np.asarray(list(values), dtype=float)
    if len(arr) == 0:
        raise ValueError("bootstrap needs at least one value")
    lo_q, hi_q = _check_ci(ci)
    rng = np.random.default_rng(seed)
    if stat is np.mean:
        boots = _resample_means(arr, n_boot, rng)
    else:
        boots = np.array([stat(arr[rng.integers(0, len(arr), len(arr))]) for _ in range(n_boot)], dtype=float)
    low, high = np.percentile(boots, [lo_q, hi_q])
    return float(low), float(high)


def wilson_ci(k: int, n: int, ci: float = 0.95) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` for ``k`` successes out of ``n`` (``(0, 1)`` when n = 0)."""
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    _check_ci(ci)
    z = NormalDist().inv_cdf(1 - (1 - ci) / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def cohen_kappa(labels_a: Sequence, labels_b: Sequence) -> float:
    """Cohen's kappa of two raters over the same items (any hashable labels).

    ``(p_o - p_e) / (1 - p_e)``; 1.0 when both raters use one and the same label everywhere (p_e = 1).
    """
    a, b = list(labels_a), list(labels_b)
    if len(a) != len(b):
        raise ValueError(f"kappa needs equal lengths, got {len(a)} and {len(b)}")
    if not a:
        raise ValueError("kappa needs at least one item")
    n = len(a)
    cats = sorted(set(a) | set(b), key=repr)
    p_o = sum(x == y for x, y in zip(a, b)) / n
    p_e = sum((a.count(c) / n) * (b.count(c) / n) for c in cats)
    if p_e == 1.0:
        return 1.0
    return (p_o - p_e) / (1 - p_e)


# --- the result shape -------------------------------------------------------------------------------------

def proportion(k: int, n: int, ci: float = 0.95) -> dict:
    """``{"value", "low", "high", "n", "k"}`` of ``k`` successes in ``n`` (Wilson CI; ``None`` values when n = 0)."""
    low, high = wilson_ci(k, n, ci)
    return {"value": k / n if n else None, "k": int(k), "n": int(n), "low": low if n else None,
            "high": high if n else None}


def mean_metric(values: Sequence[float], n_boot: int = 10000, seed: int = 0, ci: float = 0.95) -> dict:
    """``{"value", "low", "high", "n"}`` of the mean of ``values`` (percentile bootstrap CI)."""
    vals = [float(v) for v in values]
    if not vals:
        return {"value": None, "low": None, "high": None, "n": 0}
    low, high = bootstrap_ci(vals, n_boot=n_boot, seed=seed, ci=ci)
    return {"value": sum(vals) / len(vals), "low": low, "high": high, "n": len(vals)}


def paired_comparison(a_correct: Sequence[bool], b_correct: Sequence[bool], n_boot: int = 10000,
                      seed: int = 0) -> dict:
    """System B against baseline A on the same items: both accuracies, the paired-bootstrap CI of B − A, and the
    exact McNemar test (``b01``: items only B got right, ``b10``: only A)."""
    a, b = [bool(x) for x in a_correct], [bool(x) for x in b_correct]
    boot = paired_bootstrap_diff([float(x) for x in b], [float(x) for x in a], n_boot=n_boot, seed=seed)
    return {"n": len(a), "a": proportion(sum(a), len(a)), "b": proportion(sum(b), len(b)),
            "diff": {"value": boot["diff"], "low": boot["low"], "high": boot["high"], "n": boot["n"]},
            "mcnemar": mcnemar_exact(a, b)}
