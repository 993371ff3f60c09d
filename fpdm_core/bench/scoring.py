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

from ..classifier import _logits_and_features
from ..metrics import frechet_distance
from ..sampling import balanced_labels, per_image_costs, sample_many
from ..stats import bootstrap_ci, paired_diff_ci

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
    labels = balanced_labels(n, model.config.num_classes)  # (n,)
    start = time.perf_counter()
    images, records = sample_many(model, diffusion, labels, sampler_config, seed=seed, batch_size=batch_size,
                                  device=device)  # (n, C, H, W)
    seconds = time.perf_counter() - start
    logits, feats = _logits_and_features(classifier.to(device), images)  # (n, 10), (n, F)
    return Scored(labels.numpy(), (logits.argmax(1) == labels).numpy(), feats.numpy(),
                  *per_image_costs(records, n, batch_size), seconds)


def fcd(features: np.ndarray, reference: tuple[np.ndarray, np.ndarray]) -> float:
    """Frechet distance of features (n, F) to reference (mean, covariance) statistics."""
    return frechet_distance(features.mean(axis=0), np.cov(features, rowvar=False), *reference)


def summary(s: Scored, reference: tuple[np.ndarray, np.ndarray]) -> dict:
    """Accuracy with its 95% bootstrap interval, FCD, costs."""
    acc, lo, hi = bootstrap_ci(s.correct.astype(float))
    return {"n": len(s.correct), "accuracy": acc, "accuracy_ci": [lo, hi], "fcd": fcd(s.features, reference),
            "block_evals_per_image": s.block_evals_per_image, "flops_per_image": s.flops_per_image,
            "seconds": s.seconds}


def paired_accuracy(a: Scored, b: Scored) -> dict:
    """Accuracy of a minus b over the same labels and seeds, with a paired 95% interval."""
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
