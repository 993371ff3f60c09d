"""Statistics behind every verdict the kit prints: bootstrap intervals and the verdict rule.

A claim is "reproduced" only when the 95% interval of the difference (in the claim's favour)
excludes zero, "not reproduced" when it excludes zero the other way, and "inconclusive"
otherwise. A run that cannot decide (models near chance, too few samples) is
"inconclusive (underpowered)", never "not reproduced".
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

VERDICTS = ("reproduced", "not reproduced", "inconclusive", "inconclusive (underpowered)")
ALPHA = 0.05  # two-sided 95% intervals everywhere
N_BOOT = 2000


def _resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) indices drawn with replacement; one seed, so intervals are reproducible."""
    if n < 2:
        raise ValueError(f"a bootstrap needs at least 2 samples, got {n}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _draws(x: np.ndarray, idx: np.ndarray, stat) -> np.ndarray:
    """stat of every resample (n_boot,); vectorised for the mean."""
    if stat is np.mean:
        return x[idx].mean(axis=1)
    return np.array([stat(x[i]) for i in idx])


def percentile_interval(draws: np.ndarray, alpha: float = ALPHA) -> tuple[float, float]:
    """Equal-tailed (alpha/2, 1 - alpha/2) percentile interval of bootstrap draws."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    lo, hi = np.quantile(np.asarray(draws, dtype=np.float64), [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def shifted_interval(value: float, draws: np.ndarray, alpha: float = ALPHA) -> tuple[float, float]:
    """Percentile interval of `draws` moved by (value - median(draws)).

    For a plug-in statistic that resampling biases (a Fréchet distance grows when duplicates
    shrink the effective sample; recall shrinks), the plain percentile interval can miss the
    estimate itself; shifting by the bootstrap bias keeps the interval's width and centres it on
    the estimate. For an unbiased statistic such as a mean the shift is ~0.
    """
    lo, hi = percentile_interval(draws, alpha)
    shift = value - float(np.median(draws))
    return lo + shift, hi + shift


def bootstrap_ci(values, stat: Callable[[np.ndarray], float] = np.mean, *, n_boot: int = N_BOOT,
                 alpha: float = ALPHA, seed: int = 0) -> tuple[float, float, float]:
    """(statistic, lo, hi): percentile bootstrap over the first axis of `values` (samples)."""
    x = np.asarray(values)
    idx = _resample_indices(len(x), n_boot, seed)  # (n_boot, n)
    draws = _draws(x, idx, stat)  # (n_boot,)
    return (float(stat(x)), *percentile_interval(draws, alpha))


def paired_diff_ci(a, b, stat: Callable[[np.ndarray], float] = np.mean, *, n_boot: int = N_BOOT,
                   alpha: float = ALPHA, seed: int = 0) -> tuple[float, float, float]:
    """(stat(a) - stat(b), lo, hi) resampling the pairs jointly (same seeds / noise in both runs)."""
    a, b = np.asarray(a), np.asarray(b)
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    idx = _resample_indices(len(a), n_boot, seed)  # (n_boot, n)
    draws = _draws(a, idx, stat) - _draws(b, idx, stat)  # (n_boot,)
    return (float(stat(a) - stat(b)), *percentile_interval(draws, alpha))


def verdict(lo: float, hi: float, *, higher_is_better: bool = True, powered: bool = True) -> str:
    """Verdict on a claim from the CI [lo, hi] of (claimed-better minus baseline).

    With `higher_is_better=False` (distances, memory), a negative difference favours the claim.
    """
    if not powered:
        return "inconclusive (underpowered)"
    if not lo <= hi:
        raise ValueError(f"need lo <= hi, got [{lo}, {hi}]")
    favour_lo, favour_hi = (lo, hi) if higher_is_better else (-hi, -lo)
    if favour_lo > 0:
        return "reproduced"
    if favour_hi < 0:
        return "not reproduced"
    return "inconclusive"

