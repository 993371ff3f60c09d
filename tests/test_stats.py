"""Bootstrap intervals and the verdict rule."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fpdm_core.stats import VERDICTS, bootstrap_ci, paired_diff_ci, percentile_interval, verdict


def test_bootstrap_ci_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = rng.normal(0.5, 1.0, 100)
    large = rng.normal(0.5, 1.0, 10000)
    v, lo, hi = bootstrap_ci(small)
    assert lo < v < hi and v == pytest.approx(small.mean())
    _, lo2, hi2 = bootstrap_ci(large)
    assert (hi2 - lo2) < (hi - lo) / 5  # width ~ 1/sqrt(n): 10x fewer -> ~10x narrower
    assert lo2 < 0.5 < hi2


def test_bootstrap_ci_matches_normal_theory_for_a_proportion():
    x = np.r_[np.ones(800), np.zeros(200)]  # p = 0.8, n = 1000
    _, lo, hi = bootstrap_ci(x, seed=3)
    half = 1.96 * np.sqrt(0.8 * 0.2 / 1000)  # 0.0248
    assert lo == pytest.approx(0.8 - half, abs=0.006)
    assert hi == pytest.approx(0.8 + half, abs=0.006)


def test_custom_statistic_and_reproducible_seed():
    x = np.arange(50.0)
    assert bootstrap_ci(x, np.median, seed=4) == bootstrap_ci(x, np.median, seed=4)
    assert bootstrap_ci(x, np.median)[0] == 24.5


def test_paired_difference_removes_shared_noise():
    rng = np.random.default_rng(2)
    shared = rng.normal(0, 5, 400)  # the same noise in both runs (paired seeds)
    a, b = shared + 0.3, shared
    d, lo, hi = paired_diff_ci(a, b)
    assert d == pytest.approx(0.3) and lo == pytest.approx(0.3) and hi == pytest.approx(0.3)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_diff_ci(a, b[:-1])


@pytest.mark.parametrize("lo, hi, higher, expected", [
    (0.01, 0.05, True, "reproduced"),
    (-0.05, -0.01, True, "not reproduced"),
    (-0.01, 0.05, True, "inconclusive"),  # the interval overlaps zero
    (-0.05, -0.01, False, "reproduced"),  # lower is better (a distance)
    (0.01, 0.05, False, "not reproduced"),
    (0.0, 0.0, True, "inconclusive"),
])
def test_verdict_rule(lo, hi, higher, expected):
    assert verdict(lo, hi, higher_is_better=higher) == expected


def test_underpowered_is_never_not_reproduced():
    assert verdict(-0.5, -0.4, powered=False) == "inconclusive (underpowered)"
    with pytest.raises(ValueError):
        verdict(1.0, 0.0)
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap_ci([1.0])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=60), st.integers(0, 10))
def test_interval_contains_statistic_of_resamples(values, seed):
    v, lo, hi = bootstrap_ci(values, seed=seed, n_boot=200)
    assert lo <= hi
    assert min(values) - 1e-9 <= lo and hi <= max(values) + 1e-9
    assert verdict(lo - 1e-12, hi + 1e-12) in VERDICTS


def test_percentile_interval_rejects_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        percentile_interval(np.arange(10), alpha=1.5)
