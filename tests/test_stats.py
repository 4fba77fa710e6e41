"""llamatune.evals.stats against known values (hand-computed and scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llamatune.evals import stats


def test_sign_test_known_value():
    # scipy.stats.binomtest(24, 34).pvalue = 0.024306510109454393
    assert stats.sign_test(24, 10) == pytest.approx(0.0243065101, abs=1e-9)
    assert stats.sign_test(10, 24) == pytest.approx(0.0243065101, abs=1e-9)
    assert stats.sign_test(0, 0) == 1.0
    assert stats.sign_test(5, 5) == 1.0
    assert stats.sign_test(3, 0) == pytest.approx(0.25)  # 2 * (1/2)^3


@pytest.mark.parametrize("k,n", [(0, 1), (1, 7), (3, 10), (24, 34), (50, 120), (0, 60), (17, 17)])
def test_binom_matches_scipy(k, n):
    scipy_stats = pytest.importorskip("scipy.stats")
    assert stats.binom_two_sided(k, n) == pytest.approx(scipy_stats.binomtest(k, n).pvalue, rel=1e-12, abs=1e-15)


def test_mcnemar_hand_table():
    # 4 both right, 1 (A wrong, B right), 5 (A right, B wrong), 2 both wrong
    a = [1] * 4 + [0] * 1 + [1] * 5 + [0] * 2
    b = [1] * 4 + [1] * 1 + [0] * 5 + [0] * 2
    r = stats.mcnemar_exact([bool(x) for x in a], [bool(x) for x in b])
    assert (r["b01"], r["b10"], r["n"]) == (1, 5, 12)
    assert r["p_value"] == pytest.approx(14 / 64)  # 2 * (C(6,0) + C(6,1)) / 2^6
    same = stats.mcnemar_exact(a, a)
    assert same["b01"] == same["b10"] == 0 and same["p_value"] == 1.0
    with pytest.raises(ValueError, match="equal lengths"):
        stats.mcnemar_exact([True], [True, False])


def test_cohen_kappa_textbook():
    # Wikipedia: 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no → p_o = .7, p_e = .5, kappa = .4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert stats.cohen_kappa(a, b) == pytest.approx(0.4)
    assert stats.cohen_kappa(a, a) == pytest.approx(1.0)
    assert stats.cohen_kappa(["x"] * 4, ["x"] * 4) == 1.0
    # systematic disagreement is below zero
    assert stats.cohen_kappa(["A", "B"] * 5, ["B", "A"] * 5) == pytest.approx(-1.0)


def test_wilson_known_value():
    # Wilson 95% for 8/10: (0.4902, 0.9433) (standard tables)
    low, high = stats.wilson_ci(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert stats.wilson_ci(0, 0) == (0.0, 1.0)
    low, high = stats.wilson_ci(0, 20)
    assert low == 0.0 and 0.15 < high < 0.17


def test_paired_bootstrap_diff_matches_normal_approx():
    rng = np.random.default_rng(1)
    n = 1172
    a = rng.random(n) < 0.412
    b = rng.random(n) < 0.396
    r = stats.paired_bootstrap_diff(a, b, n_boot=4000, seed=0)
    assert r["diff"] == pytest.approx(a.mean() - b.mean())
    d = a.astype(float) - b.astype(float)
    se = d.std(ddof=1) / math.sqrt(n)
    # the half-width of a 95% CI is ~1.96 SE, and at n=1172 for independent accuracies ~0.4, SE ≈ 2 points
    assert (r["high"] - r["low"]) / 2 == pytest.approx(1.96 * se, rel=0.1)
    assert 0.015 < se < 0.025
    assert r["low"] < r["diff"] < r["high"]
    # deterministic given the seed
    assert stats.paired_bootstrap_diff(a, b, n_boot=4000, seed=0) == r


def test_paired_bootstrap_is_paired():
    # b = a with 3 flips out of 200: the paired CI must be tight, far tighter than an unpaired one
    a = np.array([i % 2 == 0 for i in range(200)])
    b = a.copy()
    b[:3] = ~b[:3]
    r = stats.paired_bootstrap_diff(a, b, n_boot=2000)
    assert r["high"] - r["low"] < 0.05


def test_bootstrap_ci_mean_and_custom_stat():
    values = np.r_[np.ones(30), np.zeros(70)]
    low, high = stats.bootstrap_ci(values, n_boot=4000)
    wl, wh = stats.wilson_ci(30, 100)
    assert low == pytest.approx(wl, abs=0.03) and high == pytest.approx(wh, abs=0.03)
    low, high = stats.bootstrap_ci(values, stat=np.median, n_boot=200)
    assert low == high == 0.0
    with pytest.raises(ValueError):
        stats.bootstrap_ci([])


def test_permutation_test_enumerates_the_splits_of_two_seed_sets():
    # 3 seeds against 3: 20 splits; the observed split and its mirror are the most extreme, so p = 2/20 = min_p
    r = stats.permutation_test([0.55, 0.60, 0.58], [0.66, 0.70, 0.69])
    assert r["diff"] == pytest.approx((0.66 + 0.70 + 0.69) / 3 - (0.55 + 0.60 + 0.58) / 3)
    assert r["p_value"] == pytest.approx(0.1) and r["min_p"] == pytest.approx(0.1)
    # overlapping seeds: by hand, the splits whose |gap| reaches the observed 0.1/3 ...
    r = stats.permutation_test([0.0, 0.2, 0.4], [0.1, 0.3, 0.3])
    pooled, obs, extreme = [0.0, 0.2, 0.4, 0.1, 0.3, 0.3], 0.1 / 3, 0
    import itertools
    for idx in itertools.combinations(range(6), 3):
        ga = [pooled[i] for i in idx]
        gb = [pooled[i] for i in range(6) if i not in idx]
        extreme += abs(sum(gb) / 3 - sum(ga) / 3) >= obs - 1e-12
    assert r["p_value"] == pytest.approx(extreme / 20) and r["p_value"] > 0.5
    with pytest.raises(ValueError, match="non-empty"):
        stats.permutation_test([], [1.0])


def test_permutation_test_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    a, b = [0.61, 0.55, 0.70, 0.52], [0.66, 0.71, 0.69]
    ref = scipy_stats.permutation_test((b, a), lambda x, y: np.mean(x) - np.mean(y), permutation_type="independent",
                                       n_resamples=np.inf, alternative="two-sided")
    r = stats.permutation_test(a, b)
    # scipy's two-sided p doubles the smaller tail; this test counts |difference| (the same for equal sizes)
    assert len(ref.null_distribution) == 35 and r["min_p"] == pytest.approx(1 / 35)
    assert r["p_value"] == pytest.approx(np.mean(np.abs(ref.null_distribution) >= abs(ref.statistic) - 1e-12))
    equal = scipy_stats.permutation_test((b, a[:3]), lambda x, y: np.mean(x) - np.mean(y),
                                         permutation_type="independent", n_resamples=np.inf)
    assert stats.permutation_test(a[:3], b)["p_value"] == pytest.approx(equal.pvalue)
