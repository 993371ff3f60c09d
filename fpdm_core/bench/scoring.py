"""Image-by-image scores of generated samples, so every comparison gets a paired bootstrap interval.

Samples follow `metrics.evaluate`: labels `arange(n) % classes`, batch b drawn with
`torch.Generator().manual_seed(seed + b)`, so two models sampled with the same seed and n get the
same labels and starting noise (paired). Accuracy carries the interval; FCD is a point value (one
FCD bootstrap draw costs about half a second of CPU here).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

CHANCE = 0.1  # class accuracy of guessing among the ten classes
MIN_ACCURACY = 0.3  # the best model of a comparison must reach this (trained long enough to learn something)
MIN_N = 200  # samples per point below which a comparison is underpowered


@dataclass
class Scored:
    labels: np.ndarray  # (n,)
    correct: np.ndarray  # (n,) bool: the judge agrees with the requested class
    features: np.ndarray  # (n, F) float64 judge features
    block_evals_per_image: float
    flops_per_image: float
    seconds: float  # sampling wall time


@torch.no_grad()
def sample_and_score(model, diffusion, sampler_config, classifier, *, n: int, seed: int, batch_size: int = 250,
                     device: str | torch.device = "cpu") -> Scored:
    """Sample n class-conditional images and judge each one."""
    from ..sampling import sample

    num_classes = max(model.config.num_classes, 1)
    labels = torch.arange(n) % num_classes  # (n,)
    classifier = classifier.to(device).eval()
    correct, feats, block_evals, flops = [], [], 0.0, 0.0
    start = time.perf_counter()
    for b, y in enumerate(labels.split(batch_size)):
        x, record = sample(model, diffusion, y, sampler_config, generator=torch.Generator().manual_seed(seed + b),
                           device=device)  # (b, C, H, W)
        f = classifier.features(x.to(device, torch.float32))  # (b, F)
        correct.append((classifier.head(f).argmax(1).cpu() == y).numpy())
        feats.append(f.double().cpu().numpy())
        block_evals += record.spent_block_evals * len(y)
        flops += record.spent_flops * len(y)
    return Scored(labels.numpy(), np.concatenate(correct), np.concatenate(feats), block_evals / n, flops / n,
                  time.perf_counter() - start)


def fcd(features: np.ndarray, reference: tuple[np.ndarray, np.ndarray]) -> float:
    """Frechet distance of features (n, F) to reference (mean, covariance) statistics."""
    from ..metrics import frechet_distance

    return frechet_distance(features.mean(axis=0), np.cov(features, rowvar=False), *reference)


def summary(s: Scored, reference: tuple[np.ndarray, np.ndarray]) -> dict:
    """Accuracy with its 95% bootstrap interval, FCD, costs."""
    from ..stats import bootstrap_ci

    acc, lo, hi = bootstrap_ci(s.correct.astype(float))
    return {"n": len(s.correct), "accuracy": acc, "accuracy_ci": [lo, hi], "fcd": fcd(s.features, reference),
            "block_evals_per_image": s.block_evals_per_image, "flops_per_image": s.flops_per_image,
            "seconds": s.seconds}


def paired_accuracy(a: Scored, b: Scored) -> dict:
    """Accuracy of a minus b over the same labels and seeds, with a paired 95% interval."""
    from ..stats import paired_diff_ci

    if not np.array_equal(a.labels, b.labels):
        raise ValueError("paired comparison needs the same labels in the same order (same n and seed)")
    diff, lo, hi = paired_diff_ci(a.correct.astype(float), b.correct.astype(float))
    return {"metric": "accuracy", "diff": diff, "ci": [lo, hi], "n": len(a.correct)}


def power_problem(n: int, accuracies: list[float], lows: list[float]) -> str:
    """Why a comparison cannot decide ("" when it can): n below MIN_N, a model not clearly above chance
    (the lower end of its accuracy interval at or below CHANCE), or no model reaching MIN_ACCURACY."""
    if n < MIN_N:
        return f"n = {n} < {MIN_N}"
    if min(lows) <= CHANCE:
        return f"a model is not clearly above chance (accuracy interval down to {min(lows):.2f}; chance {CHANCE})"
    if max(accuracies) < MIN_ACCURACY:
        return f"no model reaches {MIN_ACCURACY} accuracy (best {max(accuracies):.2f})"
    return ""
