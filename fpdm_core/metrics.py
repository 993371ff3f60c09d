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
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from . import assets, cli, options
from .checkpoints import CheckpointError, atomic_save

CLASSIFIER_PATH = assets.shipped("classifier")  # the shipped judge (found by fpdm_core.assets)
CLASSIFIER_FORMAT = "fpdm-kit/classifier/1"
METADATA_KEY = "fpdm_classifier"


# ----------------------------------------------------------------------------- the judge
def _conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class FashionClassifier(nn.Module):
    """conv 32 -> pool -> conv 64 -> pool -> conv 128 -> pool -> linear 128 (features) -> linear 10.

    Input: (B, 1, 28, 28) images in [-1, 1]. Each conv is 3x3 + BatchNorm + ReLU; the
    features are the ReLU outputs of the 128-unit hidden layer.
    """

    def __init__(self, widths: tuple[int, int, int, int] = (32, 64, 128, 128), num_classes: int = 10):
        super().__init__()
        self.widths, self.num_classes = tuple(widths), num_classes
        c1, c2, c3, hidden = self.widths
        self.conv1, self.conv2, self.conv3 = _conv(1, c1), _conv(c1, c2), _conv(c2, c3)
        self.fc = nn.Linear(c3 * 4 * 4, hidden)
        self.head = nn.Linear(hidden, num_classes)

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28) -> (B, F)
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"expected images of shape (B, 1, 28, 28) in [-1, 1], got {tuple(x.shape)}")
        h = F.max_pool2d(self.conv1(x), 2)  # (B, 32, 14, 14)
        h = F.max_pool2d(self.conv2(h), 2)  # (B, 64, 7, 7)
        h = F.max_pool2d(self.conv3(h), 2, ceil_mode=True)  # (B, 128, 4, 4)
        return F.relu(self.fc(h.flatten(1)))  # (B, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28) -> (B, 10) logits
        return self.head(self.features(x))


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and shifts of up to 2 pixels (background -1 fills in), per image."""
    B = x.shape[0]
    flip = torch.rand(B, generator=generator) < 0.5  # (B,)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x[:, 0], (2, 2, 2, 2), value=-1.0)  # (B, 32, 32)
    dy, dx = torch.randint(0, 5, (2, B), generator=generator)  # (B,), (B,)
    rows = (dy[:, None] + torch.arange(28))[:, :, None]  # (B, 28, 1)
    cols = (dx[:, None] + torch.arange(28))[:, None, :]  # (B, 1, 28)
    return padded[torch.arange(B)[:, None, None], rows, cols].unsqueeze(1)  # (B, 1, 28, 28)


@torch.no_grad()
def _logits_and_features(classifier: FashionClassifier, images: torch.Tensor, batch_size: int = 500):
    """Logits (N, 10) and float64 features (N, F) on the CPU, in eval mode (the mode is restored)."""
    was_training = classifier.training
    classifier.eval()
    device = next(classifier.parameters()).device
    logits, feats = [], []
    for chunk in images.split(batch_size):
        f = classifier.features(chunk.to(device, torch.float32))  # (b, F)
        feats.append(f.double().cpu())
        logits.append(classifier.head(f).cpu())
    classifier.train(was_training)
    return torch.cat(logits), torch.cat(feats)  # (N, 10), (N, F)


def class_accuracy(classifier: FashionClassifier, images: torch.Tensor, labels, batch_size: int = 500) -> float:
    """Fraction of images (N, 1, 28, 28) in [-1, 1] that the classifier assigns to `labels` (N,)."""
    labels = torch.as_tensor(labels).reshape(-1)
    if len(labels) != len(images) or len(images) == 0:
        raise ValueError(f"need as many labels as images (and at least one), got {len(labels)} and {len(images)}")
    logits, _ = _logits_and_features(classifier, images, batch_size)
    return (logits.argmax(1) == labels.cpu()).double().mean().item()


def train_classifier(epochs: int = 2, batch_size: int = 128, lr: float = 3e-3, seed: int = 0,
                     data_dir: str | Path | None = None, threads: int | None = None,
                     progress: bool = False) -> tuple[FashionClassifier, float]:
    """Train the judge on the Fashion-MNIST train split; return it (eval mode) and its t10k accuracy.

    AdamW with a one-cycle schedule; flips and 2-pixel shifts as augmentation. All randomness
    (init, order, augmentation) derives from `seed`; the global RNG is left untouched.
    """
    from .data import load_fashion_mnist

    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need epochs >= 1, batch_size >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        x, y = load_fashion_mnist("train", data_dir)  # (60000, 1, 28, 28), (60000,)
        x_test, y_test = load_fashion_mnist("test", data_dir)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = FashionClassifier()
        gen = torch.Generator().manual_seed(seed)
        steps_per_epoch = max(1, len(x) // batch_size)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=epochs * steps_per_epoch, desc="classifier", dynamic_ncols=True)
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=gen)
            for i in range(steps_per_epoch):
                idx = perm[i * batch_size: (i + 1) * batch_size]
                loss = F.cross_entropy(model(_augment(x[idx], gen)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.3f}")
        if bar is not None:
            bar.close()
        model.eval()
        return model, class_accuracy(model, x_test, y_test)
    finally:
        torch.set_num_threads(old_threads)


# ----------------------------------------------------------------------------- persistence
def save_classifier(model: FashionClassifier, path: str | Path, meta: dict | None = None) -> None:
    """Weights (float32) to safetensors with JSON metadata (architecture + `meta`), atomically."""
    meta = {**(meta or {}), "format": CLASSIFIER_FORMAT, "widths": list(model.widths), "num_classes": model.num_classes}
    atomic_save(dict(model.state_dict()), path, {METADATA_KEY: json.dumps(meta)})


def classifier_meta(path: str | Path = CLASSIFIER_PATH) -> dict:
    """The JSON metadata of a saved classifier; CheckpointError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"classifier {path} does not exist; train one with "
                              f"`python -m fpdm_core.metrics train-classifier --out {path}`")
    try:
        with safe_open(path, "pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file (corrupt or truncated?): {e}") from e
    try:
        meta = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} has unreadable classifier metadata: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != CLASSIFIER_FORMAT:
        raise CheckpointError(f"{path} is not an FPDM-kit classifier (no '{METADATA_KEY}' metadata of "
                              f"format {CLASSIFIER_FORMAT!r})")
    return meta


def load_classifier(path: str | Path = CLASSIFIER_PATH, device: str | torch.device = "cpu") -> FashionClassifier:
    """The judge in float32 eval mode; a missing, corrupt or foreign file raises CheckpointError."""
    meta = classifier_meta(path)
    try:
        state = load_file(path)
        model = FashionClassifier(tuple(meta["widths"]), int(meta["num_classes"]))
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except (SafetensorError, OSError, KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot load classifier weights: {e}") from e
    return model.to(device).eval()


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
    from .data import load_fashion_mnist

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
    from .sampling import balanced_labels, per_image_costs, sample_many

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
    from . import scores  # scores builds on this module; imported here so the dependency stays one-way
    from .checkpoints import load_pipeline
    from .devices import pick_device
    from .sampling import SamplerConfig, balanced_labels, per_image_costs, sample_many

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
    from .sampling import SamplerConfig

    p = cli.ArgumentParser(prog="python -m fpdm_core.metrics", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter
    t = sub.add_parser("train-classifier", help="train the Fashion-MNIST judge", formatter_class=fmt)
    t.add_argument("--out", default=str(assets.CHECKOUT_DIR / assets.NAMES["classifier"]), help="safetensors file to write")
    t.add_argument("--epochs", type=int, default=2, help="passes over the 60000 training images")
    t.add_argument("--batch-size", type=int, default=128, help="images per step")
    t.add_argument("--lr", type=float, default=3e-3, help="peak AdamW learning rate (one-cycle)")
    t.add_argument("--seed", type=int, default=0, help="seeds init, data order and augmentation")
    t.add_argument("--data-dir", default=None, help="Fashion-MNIST IDX folder (None: $FPDM_FASHION_MNIST_DIR or the Debian path)")
    t.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    e = sub.add_parser("evaluate", help="score samples (a checkpoint's, or a samples.npz) in both feature spaces, "
                       "with 95%% bootstrap intervals", formatter_class=fmt)
    source = e.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="FPDM or DiT checkpoint (.safetensors) to sample from")
    source.add_argument("--npz", help="score an existing samples.npz (from `python -m fpdm_core.sample`) instead")
    e.add_argument("--n-boot", type=int, default=500, help="bootstrap resamples behind each interval")
    e.add_argument("--weights", default="ema", choices=("ema", "model"), help="which weights of the checkpoint")
    e.add_argument("--classifier", default=str(CLASSIFIER_PATH), help="judge weights")
    e.add_argument("--n", type=int, default=1000, help="images to sample (labels cycle over the classes)")
    e.add_argument("--batch-size", type=int, default=500, help="images per sampling batch (part of the noise seeding)")
    e.add_argument("--real-n", type=int, default=10000, help="real test images in the FCD reference")
    options.add_arguments(e, SamplerConfig, title="sampler (fpdm_core.sampling.SamplerConfig)")
    e.add_argument("--seed", type=int, default=0, help="batch b uses seed + b")
    e.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, cuda:N or mps")
    e.add_argument("--threads", type=int, default=None, help="torch CPU threads (None = torch's default)")
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
