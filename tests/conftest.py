"""Shared fixtures: tiny trained checkpoints (seconds on a CPU), Fashion-MNIST availability."""
from __future__ import annotations

import os

import pytest
import torch

from fpdm_core.data import fashion_mnist_dir

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
torch.set_num_threads(1)  # tiny models: one thread is fastest, and the suite stays polite on shared cores



@pytest.fixture(autouse=True)
def _one_thread():
    """Every test on one thread (tests that change it get it back): two OpenMP threads spin-wait on busy cores."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


HAVE_FMNIST = (fashion_mnist_dir() / "train-images-idx3-ubyte.gz").exists()
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed: `apt-get install dataset-fashion-mnist`")


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, "os.PathLike"]:
    """{"fpdm": path, "dit": path}: FPDM-tiny and DiT-tiny trained 30 steps on 512 Fashion-MNIST images."""
    if not HAVE_FMNIST:
        pytest.skip("Fashion-MNIST not installed: `apt-get install dataset-fashion-mnist`")
    from fpdm_core.train import TrainConfig, train

    root = tmp_path_factory.mktemp("tiny_ckpts")
    out = {}
    for kind, preset in (("fpdm", "FPDM-tiny"), ("dit", "DiT-tiny")):
        cfg = TrainConfig(model=preset, subset=512, batch_size=32, max_steps=30, sample_every=0, save_every=30,
                          log_every=10, lr=2e-3, warmup_steps=5, no_grad_iters=(0, 3), grad_iters=(1, 3), precision="fp32")
        train(cfg, root / kind, progress=False)
        out[kind] = root / kind / "checkpoint.safetensors"
    return out
