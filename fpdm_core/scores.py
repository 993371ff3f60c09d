"""Sample quality in two independent feature spaces, every number with a 95% bootstrap interval.

- classifier space (the kit's Fashion-MNIST judge, `metrics.py`): class accuracy, per-class
  accuracy, FCD (Fréchet distance of the judge's 128-d features);
- pixel space (no classifier at all): the top `PCA_DIM` principal components of raw pixels,
  fitted on real training images: Fréchet distance (`fd_pixel`), precision and recall
  (Kynkäänniemi et al. 2019, k = 3: fidelity and diversity separately), density and coverage
  (Naeem et al. 2020, k = 5).

A verdict that one space gives and the other reverses is not a verdict; `fd_terms` splits each
Fréchet distance into its mean and covariance parts, and `brightness` / `contrast` compare pixel
statistics with real images, so a report can say *why* two metrics disagree.

Intervals resample the generated images (the real reference stays fixed, as for FID) and are
centred on the estimate (`stats.shifted_interval`: resampling biases a Fréchet distance up and
recall/coverage down).
Resampling is done with one count matrix (n_boot, N), so two sets scored on the same seeds and
labels get *paired* intervals of their difference (`paired_differences`). Recall and coverage
keep the k-NN radii of the full set under resampling (duplicates would shrink them to 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .data import load_fashion_mnist
from .classifier import FashionClassifier, _logits_and_features
from .stats import ALPHA, shifted_interval

PCA_DIM = 64
K_PR, K_DC = 3, 5  # neighbours for precision/recall and for density/coverage
N_BOOT = 500
METRICS = {
    "accuracy": {"label": "class accuracy (kit classifier)", "higher_is_better": True},
    "fcd": {"label": "FCD (kit-classifier features)", "higher_is_better": False},
    "fd_pixel": {"label": "Fréchet distance, pixel PCA (no classifier)", "higher_is_better": False},
    "precision": {"label": "precision, pixel PCA (fidelity)", "higher_is_better": True},
    "recall": {"label": "recall, pixel PCA (diversity)", "higher_is_better": True},
    "density": {"label": "density, pixel PCA (fidelity)", "higher_is_better": True},
    "coverage": {"label": "coverage, pixel PCA (diversity)", "higher_is_better": True},
}


@dataclass
class Reference:
    """Real-image statistics every score is measured against (float64, on `device`)."""

    pca_mean: torch.Tensor  # (784,)
    pca_basis: torch.Tensor  # (784, d)
    cls_mu: torch.Tensor  # (F,)
    cls_root: torch.Tensor  # (F, F) symmetric square root of the real covariance
    cls_trace: float
    pix_mu: torch.Tensor  # (d,)
    pix_root: torch.Tensor  # (d, d)
    pix_trace: float
    real_pix: torch.Tensor  # (M, d) the real set of precision/recall/density/coverage
    radius_pr: torch.Tensor  # (M,) distance to the K_PR-th real neighbour
    radius_dc: torch.Tensor  # (M,) distance to the K_DC-th real neighbour
    brightness: float  # mean pixel value of real images, in [0, 1]
    contrast: float  # mean per-image pixel std, in [0, 1]
    n_fd: int

    @property
    def device(self) -> torch.device:
        return self.pca_mean.device


def _sym_sqrt(c: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(c)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def _moments(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (N, F) -> (F,), (F, F)
    return f.mean(0), torch.cov(f.T)


def _kth_neighbour(x: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) distance from each row of x to its k-th nearest other row."""
    if len(x) <= k:
        raise ValueError(f"need more than k = {k} samples for k-NN radii, got {len(x)}")
    return torch.cdist(x, x).kthvalue(k + 1, dim=1).values  # +1: the point itself is at distance 0


def _pixels(images: torch.Tensor) -> torch.Tensor:
    """(N, 784) float64 in [0, 1] from images (N, 1, 28, 28) in [-1, 1]."""
    return ((images.double().flatten(1) + 1) / 2).clamp(0, 1)


@torch.no_grad()
def build_reference(classifier: FashionClassifier, *, data_dir=None, n_fd: int = 10000, n_pca: int = 10000,
                    n_prdc: int = 1000, pca_dim: int = PCA_DIM, device="cpu") -> Reference:
    """Fit the pixel PCA on real training images; real statistics from the test split."""
    train, _ = load_fashion_mnist("train", data_dir)
    test, _ = load_fashion_mnist("test", data_dir)
    if not (2 <= n_prdc <= n_fd <= len(test) and pca_dim <= n_pca <= len(train)):
        raise ValueError(f"need 2 <= n_prdc <= n_fd <= {len(test)} and pca_dim <= n_pca <= {len(train)}")
    fit = _pixels(train[:n_pca]).to(device)  # (P, 784)
    mean = fit.mean(0)
    basis = torch.linalg.svd(fit - mean, full_matrices=False).Vh[:pca_dim].T  # (784, d)
    real = test[:n_fd]
    pix = (_pixels(real).to(device) - mean) @ basis  # (n_fd, d)
    _, feats = _logits_and_features(classifier, real)  # (n_fd, F)
    cls_mu, cls_cov = _moments(feats.to(device))
    pix_mu, pix_cov = _moments(pix)
    real_pix = pix[:n_prdc]
    px = _pixels(real)
    return Reference(mean, basis, cls_mu, _sym_sqrt(cls_cov), float(cls_cov.trace()), pix_mu, _sym_sqrt(pix_cov),
                     float(pix_cov.trace()), real_pix, _kth_neighbour(real_pix, K_PR), _kth_neighbour(real_pix, K_DC),
                     float(px.mean()), float(px.std(1).mean()), n_fd)


@dataclass
class Scores:
    """Per-image quantities of one generated set; every metric is a function of these and a resampling."""

    labels: torch.Tensor  # (N,)
    correct: torch.Tensor  # (N,) float64 0/1
    cls_feats: torch.Tensor  # (N, F)
    pix_feats: torch.Tensor  # (N, d)
    in_real: torch.Tensor  # (N,) inside some real k=3 ball (precision)
    density_count: torch.Tensor  # (N,) real k=5 balls containing the image
    recall_hits: torch.Tensor  # (M, N) real r inside generated image j's k=3 ball
    cover_hits: torch.Tensor  # (M, N) generated j inside real r's k=5 ball
    brightness: torch.Tensor  # (N,) mean pixel value in [0, 1]
    contrast: torch.Tensor  # (N,) pixel std in [0, 1]

    def __len__(self) -> int:
        return len(self.labels)


@torch.no_grad()
def score(images: torch.Tensor, labels, classifier: FashionClassifier, ref: Reference) -> Scores:
    """Score images (N, 1, 28, 28) in [-1, 1] conditioned on `labels` (N,)."""
    labels = torch.as_tensor(labels).reshape(-1).long()
    if images.dim() != 4 or tuple(images.shape[1:]) != (1, 28, 28) or len(labels) != len(images):
        raise ValueError(f"need images (N, 1, 28, 28) and N labels, got {tuple(images.shape)} and {len(labels)}")
    dev = ref.device
    logits, feats = _logits_and_features(classifier, images)  # (N, 10), (N, F)
    px = _pixels(images).to(dev)  # (N, 784)
    pix = (px - ref.pca_mean) @ ref.pca_basis  # (N, d)
    d_real = torch.cdist(pix, ref.real_pix)  # (N, M)
    radius_fake = _kth_neighbour(pix, K_PR)  # (N,)
    return Scores(
        labels=labels.to(dev), correct=(logits.argmax(1) == labels).double().to(dev), cls_feats=feats.to(dev),
        pix_feats=pix, in_real=(d_real <= ref.radius_pr).any(1).double(),
        density_count=(d_real <= ref.radius_dc).sum(1).double(),
        recall_hits=(d_real <= radius_fake[:, None]).T.double(), cover_hits=(d_real <= ref.radius_dc).T.double(),
        brightness=px.mean(1), contrast=px.std(1),
    )


def resample_counts(n: int, n_boot: int, seed: int, device="cpu") -> torch.Tensor:
    """(1 + n_boot, n) float64 counts: row 0 is the full set (all ones), then bootstrap resamples."""
    idx = torch.as_tensor(np.random.default_rng(seed).integers(0, n, size=(n_boot, n)), device=device)
    counts = torch.zeros(n_boot, n, dtype=torch.float64, device=device).scatter_add_(
        1, idx, torch.ones(n_boot, n, dtype=torch.float64, device=device))
    return torch.cat([torch.ones(1, n, dtype=torch.float64, device=device), counts])


def _frechet(feats: torch.Tensor, w: torch.Tensor, mu_r: torch.Tensor, root_r: torch.Tensor, trace_r: float):
    """Fréchet distances (B,) of the weighted sets (w: (B, N) counts) to a real Gaussian, and the mean term (B,)."""
    n = w.shape[1]
    mu = w @ feats / n  # (B, F)
    second = torch.cat([torch.einsum("bn,nf,ng->bfg", c, feats, feats) for c in w.split(64)]) / n  # (B, F, F)
    cov = (second - mu[:, :, None] * mu[:, None, :]) * (n / (n - 1))  # (B, F, F), unbiased like np.cov
    m = root_r @ cov @ root_r  # (B, F, F) symmetric PSD
    tr_sqrt = torch.linalg.eigvalsh((m + m.transpose(1, 2)) / 2).clamp_min(0).sqrt().sum(1)  # (B,)
    mean_term = ((mu - mu_r) ** 2).sum(1)  # (B,)
    return (mean_term + cov.diagonal(dim1=1, dim2=2).sum(1) + trace_r - 2 * tr_sqrt).clamp_min(0), mean_term


def metric_draws(s: Scores, ref: Reference, counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every metric of METRICS under each row of `counts` (B, N): {name: (B,)}."""
    n = len(s)
    w = counts / n  # (B, N) weights summing to 1
    fcd, _ = _frechet(s.cls_feats, counts, ref.cls_mu, ref.cls_root, ref.cls_trace)
    fdp, _ = _frechet(s.pix_feats, counts, ref.pix_mu, ref.pix_root, ref.pix_trace)
    return {
        "accuracy": w @ s.correct,
        "fcd": fcd,
        "fd_pixel": fdp,
        "precision": w @ s.in_real,
        "recall": ((s.recall_hits @ counts.T) > 0).double().mean(0),  # (B,)
        "density": w @ s.density_count / K_DC,
        "coverage": ((s.cover_hits @ counts.T) > 0).double().mean(0),
    }


def _interval(draws: torch.Tensor) -> dict:
    value = float(draws[0])
    lo, hi = shifted_interval(value, draws[1:].cpu().numpy(), ALPHA)
    return {"value": value, "lo": lo, "hi": hi}


def summarize(s: Scores, ref: Reference, *, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """{metric: {value, lo, hi}} for every metric of METRICS, plus the diagnostics behind them."""
    counts = resample_counts(len(s), n_boot, seed, ref.device)
    out = {k: _interval(v) for k, v in metric_draws(s, ref, counts).items()}
    ones = counts[:1]
    fcd, fcd_mean = _frechet(s.cls_feats, ones, ref.cls_mu, ref.cls_root, ref.cls_trace)
    fdp, fdp_mean = _frechet(s.pix_feats, ones, ref.pix_mu, ref.pix_root, ref.pix_trace)
    per_class = [float(s.correct[s.labels == c].mean()) if bool((s.labels == c).any()) else None
                 for c in range(int(s.labels.max()) + 1)]
    out["diagnostics"] = {
        "n": len(s),
        "per_class_accuracy": per_class,
        "fd_terms": {"fcd": {"mean": float(fcd_mean[0]), "covariance": float(fcd[0] - fcd_mean[0])},
                     "fd_pixel": {"mean": float(fdp_mean[0]), "covariance": float(fdp[0] - fdp_mean[0])}},
        "brightness": {"samples": float(s.brightness.mean()), "real": ref.brightness},
        "contrast": {"samples": float(s.contrast.mean()), "real": ref.contrast},
    }
    return out


def paired_differences(a: Scores, b: Scores, ref: Reference, *, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """{metric: {value, lo, hi}} of metric(a) - metric(b), resampling the image pairs jointly.

    a and b must be scored on the same labels in the same order (same seeds: paired noise).
    """
    if len(a) != len(b) or not torch.equal(a.labels, b.labels):
        raise ValueError("paired differences need two sets scored on the same labels in the same order")
    counts = resample_counts(len(a), n_boot, seed, ref.device)
    da, db = metric_draws(a, ref, counts), metric_draws(b, ref, counts)
    return {k: _interval(da[k] - db[k]) for k in da}
