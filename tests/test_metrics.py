"""The Fashion-MNIST judge, FCD and `python -m fpdm_core.metrics`."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from conftest import needs_fmnist
from fpdm_core import metrics
from fpdm_core.checkpoints import CheckpointError
from fpdm_core.classifier import (CLASSIFIER_PATH, FashionClassifier, class_accuracy, classifier_meta, load_classifier,
                                  save_classifier)
from fpdm_core.metrics import evaluate, feature_stats, frechet_distance, real_stats


@pytest.fixture(scope="module")
def clf():
    return load_classifier()


@pytest.fixture(scope="module")
def test_images():
    from fpdm_core.data import load_fashion_mnist

    x, y = load_fashion_mnist("test")
    return x[:1000], y[:1000]


# ---- the Fréchet distance ----------------------------------------------------------------------
def random_cov(d, seed):
    a = np.random.default_rng(seed).normal(size=(d, 2 * d))
    return a @ a.T / (2 * d)


def test_frechet_distance_closed_forms():
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 4 + 9 - 2 * 6)
    s = random_cov(6, 0)
    mu = np.arange(6.0)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0, abs=1e-8)
    assert frechet_distance(mu, s, mu + 1, s) == pytest.approx(6, abs=1e-6)  # mean shift only
    d1, d2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    assert frechet_distance([0, 0], d1, [0, 0], d2) == pytest.approx((1 - 3) ** 2 + (2 - 1) ** 2)


def test_sqrtm_and_eigh_paths_agree():
    s1, s2 = random_cov(20, 1), random_cov(20, 2)
    assert metrics._trace_sqrt_product(s1, s2) == pytest.approx(metrics._trace_sqrt_product_eigh(s1, s2), rel=1e-8)
    low_rank = np.outer(np.arange(20.0), np.arange(20.0))  # singular: sqrtm needs the diagonal nudge
    assert np.isfinite(frechet_distance(np.zeros(20), low_rank, np.zeros(20), s1))


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# ---- the classifier ----------------------------------------------------------------------------
def test_classifier_shapes_and_input_check():
    m = FashionClassifier().eval()
    x = torch.zeros(3, 1, 28, 28)
    assert m.features(x).shape == (3, 128) and m(x).shape == (3, 10)
    with pytest.raises(ValueError, match=r"\(B, 1, 28, 28\)"):
        m(torch.zeros(3, 28, 28))


def test_save_load_roundtrip_and_bad_files(tmp_path):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        m = FashionClassifier().eval()
    path = tmp_path / "c.safetensors"
    save_classifier(m, path, {"epochs": 0, "seed": 0})
    back = load_classifier(path)
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert torch.equal(back(x), m(x)) and classifier_meta(path)["epochs"] == 0
    with pytest.raises(CheckpointError, match="does not exist"):
        load_classifier(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_classifier(bad)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError, match="not an FPDM-kit classifier"):
        load_classifier(tmp_path / "foreign.safetensors")


def test_shipped_classifier_metadata():
    meta = classifier_meta(CLASSIFIER_PATH)
    assert CLASSIFIER_PATH.stat().st_size < 2 * 2**20
    assert meta["test_accuracy"] >= 0.90 and meta["seed"] == 0 and meta["command"].startswith("python -m fpdm_core.metrics")


@needs_fmnist
def test_shipped_classifier_accuracy(clf, test_images):
    x, y = test_images
    assert class_accuracy(clf, x, y) >= 0.88


@needs_fmnist
def test_fcd_ranks_noise_levels(clf, test_images):
    """FCD(real test vs real train) << FCD(real + strong noise); FCD grows and accuracy falls with noise."""
    x, y = test_images
    ref = real_stats(clf, 2000, "train")
    assert real_stats(clf, 2000, "train") is ref  # cached in memory
    gen = torch.Generator().manual_seed(0)
    fcd, acc = {}, {}
    for sigma in (0.0, 0.3, 1.0):
        noisy = (x + sigma * torch.randn(x.shape, generator=gen)).clamp(-1, 1)  # (1000, 1, 28, 28)
        fcd[sigma] = frechet_distance(*feature_stats(clf, noisy), *ref)
        acc[sigma] = class_accuracy(clf, noisy, y)
    print(f"FCD {fcd}, accuracy {acc}")
    assert fcd[0.0] < fcd[0.3] < fcd[1.0] and 10 * fcd[0.0] < fcd[1.0]
    assert acc[0.0] > acc[0.3] > acc[1.0]


# ---- evaluate and the command line ------------------------------------------------------------
def test_evaluate_is_reproducible(tiny_checkpoints, clf):
    from fpdm_core.checkpoints import load_model
    from fpdm_core.diffusion import GaussianDiffusion
    from fpdm_core.sampling import SamplerConfig

    model = load_model(tiny_checkpoints["fpdm"])
    config = SamplerConfig(steps=3, iterations=2)
    kw = dict(n=12, classifier=clf, batch_size=5, seed=3, real_n=500)
    r1 = evaluate(model, GaussianDiffusion(), config, **kw)
    r2 = evaluate(model, GaussianDiffusion(), config, **kw)
    assert set(r1) >= {"n", "accuracy", "fcd", "block_evals_per_image", "flops_per_image", "seconds", "sampler"}
    assert r1["n"] == 12 and r1["block_evals_per_image"] == 3 * (1 + 2 + 1) and r1["sampler"] == config.to_dict()
    assert 0 <= r1["accuracy"] <= 1 and r1["fcd"] > 0 and r1["flops_per_image"] > 0
    assert (r1["accuracy"], r1["fcd"]) == (r2["accuracy"], r2["fcd"])


def test_evaluate_cli(tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = metrics.main(["evaluate", "--checkpoint", str(tiny_checkpoints["dit"]), "--n", "10", "--budget", "8",
                       "--real-n", "500", "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert result["block_evals_per_image"] == 8 and result["checkpoint"] == str(tiny_checkpoints["dit"])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    assert metrics.main(["evaluate", "--checkpoint", str(bad), "--n", "10"]) == 2
    assert "not a readable" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        metrics.main(["evaluate", "--checkpoint", str(bad), "--solver", "newton"])
    assert e.value.code == 2


def write_idx(path, array: np.ndarray):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@needs_fmnist
def test_train_classifier_cli_on_a_small_copy(tmp_path, test_images):
    """Two steps on 256 images: the loop, the metadata and the file format (not the accuracy)."""
    from fpdm_core.data import to_uint8

    x, y = test_images
    data = tmp_path / "data"
    data.mkdir()
    for prefix, sl in (("train", slice(0, 256)), ("t10k", slice(256, 320))):
        write_idx(data / f"{prefix}-images-idx3-ubyte.gz", to_uint8(x[sl]))
        write_idx(data / f"{prefix}-labels-idx1-ubyte.gz", y[sl].numpy())
    out = tmp_path / "c.safetensors"
    argv = ["train-classifier", "--out", str(out), "--epochs", "1", "--batch-size", "128", "--data-dir", str(data),
            "--no-progress"]
    assert metrics.main(argv) == 0
    meta = classifier_meta(out)
    assert meta["epochs"] == 1 and meta["command"] == "python -m fpdm_core.metrics " + " ".join(argv)
    assert 0 <= meta["test_accuracy"] <= 1 and load_classifier(out).feature_dim == 128


@needs_fmnist
def test_evaluate_scores_an_existing_samples_file(tmp_path, capsys):
    from fpdm_core.data import load_fashion_mnist, to_uint8

    x, y = load_fashion_mnist("test")
    npz = tmp_path / "samples.npz"
    np.savez(npz, images=to_uint8(x[-40:]), labels=y[-40:].numpy())
    assert metrics.main(["evaluate", "--npz", str(npz), "--real-n", "300", "--n-boot", "20"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 40 and result["npz"] == str(npz) and result["accuracy"] > 0.7
    m = result["metrics"]
    assert {"accuracy", "fcd", "fd_pixel", "precision", "recall", "density", "coverage"} <= set(m)
    assert m["accuracy"]["lo"] <= result["accuracy"] <= m["accuracy"]["hi"]
    assert len(result["diagnostics"]["per_class_accuracy"]) == 10
    (tmp_path / "junk.npz").write_bytes(b"junk")
    assert metrics.main(["evaluate", "--npz", str(tmp_path / "junk.npz")]) == 2
    assert "not a samples file" in capsys.readouterr().err
