"""Sample quality on Fashion-MNIST without downloads: a small CNN judge and FCD.

FCD (Fréchet Classifier Distance) is the Fréchet distance between Gaussians fitted to the
judge's 128-d penultimate features of generated and of real test images. It plays the role
of FID (whose Inception weights cannot be downloaded here); its values are NOT comparable
with FID numbers. Class accuracy is the judge's accuracy on the labels the samples were
conditioned on. `python -m fpdm_core.metrics --help` lists the commands.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
import weakref
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import assets, cli, options, scores
from .checkpoints import CheckpointError, load_pipeline
from .classifier import (CLASSIFIER_PATH, FashionClassifier, _logits_and_features, load_classifier, save_classifier,
                         train_classifier)
from .data import load_fashion_mnist
from .devices import pick_device
from .sampling import SamplerConfig, balanced_labels, per_image_costs, sample_many


# ----------------------------------------------------------------------------- FCD
def feature_stats(classifier: FashionClassifier, images: torch.Tensor, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and covariance (F, F), float64, of the classifier features of images (N, 1, 28, 28)."""
    if len(images) < 2:
        raise ValueError(f"need at least 2 images for a covariance, got {len(images)}")
    _, feats = _logits_and_features(classifier, images, batch_size)
    return _moments(feats.numpy())


def _moments(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # (N, F) -> (F,), (F, F)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr(sqrtm(s1 @ s2)) for symmetric PSD s1, s2: scipy's sqrtm, else (or where it fails) `eigh`.

    sqrtm fails on the singular products that few samples give (n <= F): its result is then
    not finite or has a large imaginary part; tiny imaginary round-off is dropped.
    """
    try:
        from scipy.linalg import sqrtm
    except ImportError:
        return _trace_sqrt_product_eigh(s1, s2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LinAlgWarning on singular input; checked below
        covmean = sqrtm(s1 @ s2)
    if np.isfinite(covmean).all() and np.abs(np.imag(covmean)).max(initial=0) < 1e-3 * max(1.0, np.abs(covmean).max()):
        return float(np.trace(np.real(covmean)))
    return _trace_sqrt_product_eigh(s1, s2)


def _trace_sqrt_product_eigh(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr(sqrtm(s1 @ s2)) = sum sqrt(eig(sqrt(s1) s2 sqrt(s1))), a symmetric PSD matrix."""
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # sqrt(s1)
    m = r1 @ s2 @ r1
    return float(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum())


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(s1 + s2 - 2 sqrtm(s1 s2)), clipped at 0 (round-off on equal inputs)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"shapes do not match: mu {mu1.shape}, {mu2.shape}; sigma {s1.shape}, {s2.shape}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * _trace_sqrt_product(s1, s2)
    return max(float(value), 0.0)


_REAL_STATS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def real_stats(classifier: FashionClassifier, n: int = 10000, split: str = "test",
               data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Feature statistics of the first `n` real images of a split, cached per classifier object."""
    key = (n, split, str(data_dir))
    cache = _REAL_STATS.setdefault(classifier, {})
    if key not in cache:
        x, _ = load_fashion_mnist(split, data_dir)
        if not 2 <= n <= len(x):
            raise ValueError(f"n must be in 2..{len(x)} for the {split} split, got {n}")
        cache[key] = feature_stats(classifier, x[:n])
    return cache[key]


def evaluate(model, diffusion, sampler_config, *, n: int = 1000, classifier: FashionClassifier | None = None,
             seed: int = 0, batch_size: int = 250, device: str | torch.device = "cpu", real_n: int = 10000) -> dict:
    """Sample n class-conditional images (labels arange(n) % classes) and score them.

    Batch b uses `torch.Generator().manual_seed(seed + b)`. FCD (Fréchet Classifier Distance)
    is measured against `real_stats` of the first `real_n` test images. Costs are per image
    (averaged over batches for `adaptive`); `seconds` is the sampling wall time.
    """
    if n < 2 or batch_size < 1:
        raise ValueError(f"need n >= 2 and batch_size >= 1, got {n} and {batch_size}")
    classifier = classifier if classifier is not None else load_classifier(device=device)
    classifier = classifier.to(device)
    num_classes = model.config.num_classes
    labels = balanced_labels(n, num_classes)  # (n,)
    start = time.perf_counter()
    images, records = sample_many(model, diffusion, labels, sampler_config, seed=seed, batch_size=batch_size,
                                  device=device)  # (n, C, H, W)
    seconds = time.perf_counter() - start
    block_evals, flops = per_image_costs(records, n, batch_size)
    plan = records[0].plan
    logits, feats = _logits_and_features(classifier, images)  # (n, 10), (n, F)
    accuracy = (logits.argmax(1) == labels).double().mean().item() if num_classes else None
    return {
        "n": n,
        "accuracy": accuracy,
        "fcd": frechet_distance(*_moments(feats.numpy()), *real_stats(classifier, real_n, "test")),
        "block_evals_per_image": block_evals,
        "flops_per_image": flops,
        "seconds": seconds,
        "sampler": sampler_config.to_dict(),
        "plan": plan,
    }


# ----------------------------------------------------------------------------- command line
def _train_command(a: argparse.Namespace) -> int:
    start, cpu_start = time.perf_counter(), time.process_time()
    model, acc = train_classifier(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
                                  data_dir=a.data_dir, threads=a.threads, progress=not a.no_progress)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    command = "python -m fpdm_core.metrics " + " ".join(sys.argv[1:] if a.argv is None else a.argv)
    meta = {"epochs": a.epochs, "seed": a.seed, "batch_size": a.batch_size, "lr": a.lr, "threads": a.threads,
            "test_accuracy": acc, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "command": command, "torch": torch.__version__,
            "data": "Fashion-MNIST train (60000) / t10k (10000)"}
    save_classifier(model, a.out, meta)
    print(json.dumps({"out": str(a.out), "test_accuracy": acc, "wall_s": round(wall, 1)}))
    return 0


def load_samples_npz(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) in [-1, 1] and labels (N,) from a `samples.npz` of `python -m fpdm_core.sample`."""
    try:
        with np.load(path) as f:
            images, labels = f["images"], f["labels"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: not a samples file with 'images' (uint8) and 'labels' arrays ({e})") from e
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or images.shape[1:3] != (28, 28) or len(images) != len(labels):
        raise ValueError(f"{path}: need uint8 images (N, 28, 28) and N labels, got {images.dtype} {images.shape} "
                         f"and {len(labels)} labels")
    x = torch.from_numpy(images.reshape(len(images), 1, 28, 28).astype(np.float32)) / 127.5 - 1  # (N, 1, 28, 28)
    return x, torch.from_numpy(labels.astype(np.int64))


def _evaluate_command(a: argparse.Namespace, p: argparse.ArgumentParser) -> int:
    device = pick_device(a.device)
    classifier = load_classifier(a.classifier, device=device)
    if a.npz:
        images, labels = load_samples_npz(a.npz)
        result = {"npz": str(a.npz)}
    else:
        config = options.from_args(SamplerConfig, a, p)
        model, diffusion = load_pipeline(a.checkpoint, weights=a.weights, device=device)
        labels = balanced_labels(a.n, model.config.num_classes)
        start = time.perf_counter()
        images, records = sample_many(model, diffusion, labels, config, seed=a.seed,
                                      batch_size=a.batch_size, device=device)
        block_evals, flops = per_image_costs(records, a.n, a.batch_size)
        result = {"checkpoint": str(a.checkpoint), "sampler": config.to_dict(), "seconds": time.perf_counter() - start,
                  "block_evals_per_image": block_evals, "flops_per_image": flops}
    ref = scores.build_reference(classifier, n_fd=a.real_n, n_prdc=min(1000, a.real_n), device=device)
    summary = scores.summarize(scores.score(images.to(device), labels, classifier, ref), ref, n_boot=a.n_boot,
                               seed=a.seed)
    diagnostics = summary.pop("diagnostics")
    result = {"n": len(images), "accuracy": summary["accuracy"]["value"], "fcd": summary["fcd"]["value"], **result,
              "metrics": summary, "diagnostics": diagnostics, "real_n": a.real_n}
    text = json.dumps(result, indent=2)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m fpdm_core.metrics", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter
    t = sub.add_parser("train-classifier", help="train the Fashion-MNIST judge", formatter_class=fmt)
    t.add_argument("--out", default=str(assets.CHECKOUT_DIR / assets.NAMES["classifier"]), help="safetensors file to write")
    t.add_argument("--epochs", type=cli.int_in(1), default=2, help="passes over the 60000 training images")
    t.add_argument("--batch-size", type=cli.int_in(1), default=128, help="images per step")
    t.add_argument("--lr", type=cli.float_in(0.0, lo_open=True), default=3e-3, help="peak AdamW learning rate (one-cycle)")
    t.add_argument("--seed", type=cli.int_in(0, cli.MAX_SEED), default=0, help="seeds init, data order and augmentation")
    t.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (None: $FPDM_FASHION_MNIST_DIR or the Debian path)")
    t.add_argument("--threads", type=cli.threads_type(), default=1, help="torch CPU threads")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    e = sub.add_parser("evaluate", help="score samples (a checkpoint's, or a samples.npz) in both feature spaces, "
                       "with 95%% bootstrap intervals", formatter_class=fmt)
    source = e.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="FPDM or DiT checkpoint (.safetensors) to sample from")
    source.add_argument("--npz", help="score an existing samples.npz (from `python -m fpdm_core.sample`) instead")
    e.add_argument("--n-boot", type=cli.int_in(1), default=500, help="bootstrap resamples behind each interval")
    e.add_argument("--weights", default="ema", choices=("ema", "model"), help="which weights of the checkpoint")
    e.add_argument("--classifier", default=str(CLASSIFIER_PATH), help="judge weights")
    e.add_argument("--n", type=cli.int_in(1), default=1000, help="images to sample (labels cycle over the classes)")
    e.add_argument("--batch-size", type=cli.int_in(1), default=500, help="images per sampling batch (part of the noise seeding)")
    e.add_argument("--real-n", type=cli.int_in(2), default=10000, help="real test images in the FCD reference")
    options.add_arguments(e, SamplerConfig, title="sampler (fpdm_core.sampling.SamplerConfig)")
    e.add_argument("--seed", type=cli.int_in(0, cli.MAX_SEED), default=0, help="batch b uses seed + b")
    e.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, cuda:N or mps")
    e.add_argument("--threads", type=cli.threads_type(), default=None, help="torch CPU threads (None = torch's default)")
    e.add_argument("--out", default=None, help="also write the result JSON here")
    e.set_defaults(parser=e)
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    a.argv = argv
    try:
        if a.command == "train-classifier":
            return _train_command(a)
        if a.threads:
            torch.set_num_threads(a.threads)
        return _evaluate_command(a, a.parser)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        return cli.fail(e)


if __name__ == "__main__":
    sys.exit(main())
