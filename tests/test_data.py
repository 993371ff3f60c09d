"""Data: IDX reader (golden bytes), Fashion-MNIST lookup and errors, digits, image folders, to_uint8."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from fpdm_core.data import (FASHION_MNIST_ENV, fashion_mnist_dir, load_dataset, load_digits, load_fashion_mnist,
                            load_image_folder, read_idx, to_uint8)


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding written out by hand: 0x0000, type 0x08 (ubyte), ndim, big-endian dims, data."""
    return b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()


def write_idx(path, array, compress=True):
    raw = idx_bytes(np.asarray(array, dtype=np.uint8))
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def fake_fashion_mnist(folder, n=6, prefix="train", seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[0] = 0
    images[1] = 255
    labels = (np.arange(n) % 10).astype(np.uint8)
    write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return images, labels


# ----------------------------------------------------------------------------- IDX
def test_idx_header_golden_bytes():
    assert idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3)) == bytes.fromhex("00000802" "00000002" "00000003"
                                                                                    "000102030405")


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_on_a_hand_built_file(tmp_path, compress):
    raw = bytes.fromhex("00000803" "00000002" "00000002" "00000003") + bytes(range(7, 19))
    path = tmp_path / ("x.idx.gz" if compress else "x.idx")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out.tolist() == [[[7, 8, 9], [10, 11, 12]], [[13, 14, 15], [16, 17, 18]]]


def test_read_idx_labels_file(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(bytes.fromhex("00000801" "00000004" "09000305")))
    assert read_idx(path).tolist() == [9, 0, 3, 5]


@pytest.mark.parametrize("raw, message", [
    (bytes.fromhex("00000803" "00000002" "00000002" "00000003") + bytes(11), "truncated"),  # one value short
    (bytes.fromhex("00000801" "00000004") + bytes(5), "header says"),  # one value too many
    (bytes.fromhex("00000803" "0000"), "truncated"),  # header cut inside the dimensions
    (bytes.fromhex("00000d01" "00000001") + bytes(4), "not an unsigned-byte IDX file"),  # float32 IDX
    (b"\x1f\x8b junk", "not an unsigned-byte IDX file"),
    (b"", "not an unsigned-byte IDX file"),
])
def test_damaged_idx_is_refused(tmp_path, raw, message):
    path = tmp_path / "bad.gz"
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(ValueError, match=message) as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_truncated_gzip_stream_is_refused(tmp_path):
    good = gzip.compress(idx_bytes(np.zeros((50, 28, 28), dtype=np.uint8)))
    path = tmp_path / "cut.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="cannot read IDX file"):
        read_idx(path)


# ----------------------------------------------------------------------------- Fashion-MNIST lookup
def test_missing_fashion_mnist_names_the_file_and_the_apt_package(tmp_path, monkeypatch):
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    with pytest.raises(FileNotFoundError) as e:
        load_fashion_mnist("train", root=tmp_path / "nowhere")
    message = str(e.value)
    assert str(tmp_path / "nowhere" / "train-images-idx3-ubyte.gz") in message
    assert "apt-get install dataset-fashion-mnist" in message and FASHION_MNIST_ENV in message


def test_env_var_is_respected_and_values_are_scaled_to_minus_one_one(tmp_path, monkeypatch):
    images, labels = fake_fashion_mnist(tmp_path / "fm")
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "fm"))
    assert fashion_mnist_dir() == tmp_path / "fm"
    x, y = load_fashion_mnist("train")
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
    assert (x[0] == -1).all() and (x[1] == 1).all()
    assert torch.allclose(x[2, 0], torch.from_numpy(images[2]).float() / 127.5 - 1)
    assert np.array_equal(to_uint8(x), images)  # exact inverse on 8-bit data


def test_explicit_root_beats_the_env_var(tmp_path, monkeypatch):
    fake_fashion_mnist(tmp_path / "a", n=3)
    fake_fashion_mnist(tmp_path / "b", n=5)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path / "a"))
    assert len(load_fashion_mnist(root=tmp_path / "b")[0]) == 5
    assert len(load_dataset("fashion-mnist", data_dir=tmp_path / "b")[0]) == 5
    assert len(load_dataset("fashion-mnist")[0]) == 3


def test_test_split_and_uncompressed_files(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    write_idx(folder / "t10k-images-idx3-ubyte", np.full((2, 28, 28), 128), compress=False)
    write_idx(folder / "t10k-labels-idx1-ubyte", [4, 2], compress=False)
    x, y = load_fashion_mnist("test", root=folder)
    assert x.shape == (2, 1, 28, 28) and y.tolist() == [4, 2]
    with pytest.raises(ValueError, match="split must be"):
        load_fashion_mnist("val", root=folder)


def test_image_and_label_counts_must_agree(tmp_path):
    folder = tmp_path / "fm"
    fake_fashion_mnist(folder, n=4)
    write_idx(folder / "train-labels-idx1-ubyte.gz", [1, 2, 3])
    with pytest.raises(ValueError, match="4 images but .* 3 labels"):
        load_fashion_mnist(root=folder)


# ----------------------------------------------------------------------------- digits
@pytest.mark.parametrize("size", [8, 12])
def test_digits_shape_and_range(size):
    x, y = load_digits(size)
    assert x.shape == (1797, 1, size, size) and y.shape == (1797,)
    assert x.min() == -1 and x.max() == 1 and x.dtype == torch.float32
    assert sorted(y.unique().tolist()) == list(range(10))


def test_digits_golden_values():
    x, y = load_digits()
    assert y[:3].tolist() == [0, 1, 2]
    # scikit-learn's first digit, row 0: 0 0 5 13 9 1 0 0 (values 0..16 -> v / 8 - 1)
    assert x[0, 0, 0].tolist() == [-1.0, -1.0, -0.375, 0.625, 0.125, -0.875, -1.0, -1.0]


# ----------------------------------------------------------------------------- image folder
def _png(path, size, color=None, stripes=None):
    w, h = size
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    if color is not None:
        arr[:] = color
    if stripes is not None:  # three vertical stripes: red | green | blue
        arr[:, : w // 3] = (255, 0, 0)
        arr[:, w // 3: 2 * w // 3] = (0, 255, 0)
        arr[:, 2 * w // 3:] = (0, 0, 255)
    Image.fromarray(arr).save(path)


def test_image_folder_centre_crops_odd_sizes_and_labels_by_sorted_folder_name(tmp_path):
    root = tmp_path / "imgs"
    (root / "zebra").mkdir(parents=True)
    (root / "apple").mkdir()
    _png(root / "zebra" / "b.png", (13, 7), color=(255, 255, 255))
    _png(root / "zebra" / "a.png", (9, 21), color=(0, 0, 0))
    _png(root / "apple" / "x.png", (24, 8), stripes=True)  # 3 x 8 px stripes: the 8 px centre crop is green
    _png(root / "apple" / "y.PNG", (5, 5), color=(255, 0, 0))
    (root / "apple" / "notes.txt").write_text("not an image")
    x, y, names = load_image_folder(root, size=8)
    assert names == ["apple", "zebra"]
    assert x.shape == (4, 3, 8, 8) and y.tolist() == [0, 0, 1, 1]
    green = torch.tensor([-1.0, 1.0, -1.0])[:, None, None].expand(3, 8, 8)
    assert torch.equal(x[0], green)
    assert torch.allclose(x[1], torch.tensor([1.0, -1.0, -1.0])[:, None, None].expand(3, 8, 8))  # upscaled 5x5
    assert torch.equal(x[2], -torch.ones(3, 8, 8)) and torch.equal(x[3], torch.ones(3, 8, 8))  # a.png before b.png


def test_image_folder_grayscale_and_flat_folder(tmp_path):
    for i, size in enumerate([(11, 17), (30, 10)]):
        _png(tmp_path / f"{i}.png", size, color=(200, 200, 200))
    x, y, names = load_image_folder(tmp_path, size=6, channels=1)
    assert x.shape == (2, 1, 6, 6) and y.tolist() == [0, 0] and names == ["all"]
    assert torch.allclose(x, torch.full_like(x, 200 / 127.5 - 1))


def test_image_folder_ignores_hidden_folders_and_files(tmp_path):
    """Jupyter's .ipynb_checkpoints and macOS '._x.png' resource forks are not classes or images."""
    (tmp_path / "cats").mkdir()
    _png(tmp_path / "cats" / "1.png", (8, 8))
    (tmp_path / "cats" / "._1.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    _png(tmp_path / ".ipynb_checkpoints" / "1.png", (8, 8))
    x, y, names = load_image_folder(tmp_path, size=8)
    assert names == ["cats"] and y.tolist() == [0]


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nope", size=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_image_folder(tmp_path / "empty", size=8)


def test_load_dataset_dispatch_and_errors(tmp_path):
    _png(tmp_path / "a.png", (10, 10))
    x, y = load_dataset("folder", data_dir=tmp_path, size=4, channels=3)
    assert x.shape == (1, 3, 4, 4)
    with pytest.raises(ValueError, match="needs --data-dir"):
        load_dataset("folder")
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


# ----------------------------------------------------------------------------- to_uint8
def test_to_uint8_golden_values():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0, 2.0, -3.0, 1 / 127.5 - 1]).reshape(1, 1, 1, 8)
    assert to_uint8(x).tolist() == [[[0, 64, 128, 191, 255, 255, 0, 1]]]


def test_to_uint8_layouts():
    x = torch.zeros(2, 3, 4, 5)
    x[:, 0] = 1.0  # red channel
    rgb = to_uint8(x)
    assert rgb.shape == (2, 4, 5, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, 0].tolist() == [255, 128, 128]
    assert to_uint8(torch.zeros(2, 1, 4, 5)).shape == (2, 4, 5)
