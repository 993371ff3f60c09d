"""Datasets as in-memory tensors in [-1, 1]: Fashion-MNIST (IDX gzip), sklearn 8x8 digits, an image folder."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from .latent_shards import load_latents

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "FPDM_FASHION_MNIST_DIR"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DATASETS = ("fashion-mnist", "digits", "folder", "latents")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a uint8 array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path} is truncated: the header of a {ndim}-d IDX file needs {4 + 4 * ndim} bytes, found {len(raw)}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {data.size} values")
    return data.reshape(shape)


def fashion_mnist_dir(root: str | Path | None = None) -> Path:
    return Path(root or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR)


def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) float in [-1, 1] and labels (N,) long.

    Looks in `root`, else $FPDM_FASHION_MNIST_DIR, else Debian's dataset-fashion-mnist folder.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = fashion_mnist_dir(root)
    prefix = "train" if split == "train" else "t10k"
    paths = []
    for kind in ("images-idx3", "labels-idx1"):
        candidates = [folder / f"{prefix}-{kind}-ubyte.gz", folder / f"{prefix}-{kind}-ubyte"]
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            raise FileNotFoundError(
                f"missing {candidates[0]}. Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
                f"or download the four Fashion-MNIST IDX files and point --data-dir or ${FASHION_MNIST_ENV} at their folder "
                f"(torchvision's FashionMNIST/raw folder works)")
        paths.append(found)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if len(images) != len(labels):
        raise ValueError(f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)} labels")
    x = torch.from_numpy(images.copy()).float().div(127.5).sub(1).unsqueeze(1)  # (N, 1, 28, 28)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_digits(size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 8x8 digits (values 0..16), scaled to [-1, 1]; resized when size != 8."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.from_numpy(d.images).float().div(8).sub(1).unsqueeze(1)  # (N, 1, 8, 8)
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x, torch.from_numpy(d.target.astype(np.int64))


def load_image_folder(root: str | Path, size: int, channels: int = 3) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images resized (shorter side) and centre-cropped to size x size, in [-1, 1].

    One class per subfolder (sorted names -> ids); images directly in `root` form one
    unconditional class. Returns images (N, C, size, size), labels (N,), class names.
    """
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))  # no .ipynb_checkpoints
    groups = [(d.name, d) for d in subdirs] or [("all", root)]
    xs, ys = [], []
    for label, (_, folder) in enumerate(groups):
        for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")):
            img = Image.open(path).convert("L" if channels == 1 else "RGB")
            scale = size / min(img.size)
            img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))), Image.BICUBIC)
            left, top = (img.width - size) // 2, (img.height - size) // 2
            arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
            xs.append(arr.reshape(size, size, channels))
            ys.append(label)
    if not xs:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {root}")
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().div(127.5).sub(1)  # (N, C, size, size)
    return x, torch.tensor(ys), [name for name, _ in groups]


def load_dataset(name: str, *, split: str = "train", data_dir: str | Path | None = None, size: int = 28,
                 channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """One entry point for the command line: images in [-1, 1] and labels."""
    if name == "fashion-mnist":
        return load_fashion_mnist(split, data_dir)
    if name == "digits":
        return load_digits(size)
    if name == "folder":
        if data_dir is None:
            raise ValueError("dataset 'folder' needs --data-dir pointing at your images")
        x, y, _ = load_image_folder(data_dir, size, channels)
        return x, y
    if name == "latents":  # VAE latents written by `python -m fpdm_core.latents encode`
        if data_dir is None:
            raise ValueError("dataset 'latents' needs --data-dir pointing at the folder `fpdm_core.latents encode` wrote")
        return load_latents(data_dir)
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1] (B, C, H, W) -> uint8 (B, H, W) for one channel, else (B, H, W, C)."""
    u = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    return u[:, 0] if u.shape[1] == 1 else u.transpose(0, 2, 3, 1)
