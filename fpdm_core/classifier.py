"""The kit's Fashion-MNIST judge: a small CNN whose accuracy and 128-d features score samples.

It stands in for Inception (whose weights cannot be downloaded here): `fpdm_core.metrics` and
`fpdm_core.scores` read its logits and penultimate features. Trained and saved by
`python -m fpdm_core.metrics train-classifier`; the shipped copy is found by `fpdm_core.assets`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from . import assets
from .checkpoints import CheckpointError, atomic_save
from .data import load_fashion_mnist

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
