"""The trained checkpoints shipped in checkpoints/: found by one lookup, they load, sample, and match the model card."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from fpdm_core import assets
from fpdm_core.checkpoints import SHIPPED, load_checkpoint, load_model
from fpdm_core.diffusion import GaussianDiffusion
from fpdm_core.classifier import load_classifier
from fpdm_core.metrics import evaluate
from fpdm_core.models import DiT, FPDM
from fpdm_core.sampling import SamplerConfig, sample

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_lookup_takes_an_explicit_folder_then_the_environment_then_the_checkout(monkeypatch, tmp_path):
    monkeypatch.delenv(assets.ENV_VAR, raising=False)
    assert assets.in_checkout() and assets.checkpoint_dir() == assets.CHECKOUT_DIR
    assert all(assets.shipped(kind).is_file() for kind in assets.NAMES)
    monkeypatch.setenv(assets.ENV_VAR, str(tmp_path))
    assert assets.shipped("classifier") == tmp_path / assets.NAMES["classifier"]
    assert assets.checkpoint_dir(tmp_path / "mine") == tmp_path / "mine"
    with pytest.raises(ValueError, match="kind must be one of"):
        assets.shipped("fpdm-fm-m")


def test_outside_a_checkout_the_lookup_finds_the_installed_copy(monkeypatch, tmp_path):
    """(tests/test_install.py checks the copy inside a real wheel.)"""
    monkeypatch.delenv(assets.ENV_VAR, raising=False)
    monkeypatch.setattr(assets, "CHECKOUT_DIR", tmp_path / "site-packages" / "checkpoints")
    assert not assets.in_checkout()
    installed = assets.installed_dir()
    assert installed is not None, "fpdm_core.shipped not importable: install the kit (bash scripts/setup.sh)"
    assert assets.checkpoint_dir() == installed  # an editable install maps it to checkpoints/
    assert all((installed / name).is_file() for name in assets.NAMES.values())
    monkeypatch.setattr(assets, "PACKAGE", "fpdm_core.no_such_package")
    assert assets.installed_dir() is None and assets.checkpoint_dir() == assets.CHECKOUT_DIR  # then messages name it


def test_readme_python_example_runs():
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert code, "README has a python example"
    exec(compile(code[0], "README.md", "exec"), {})


@pytest.mark.parametrize("kind, cls", [("fpdm", FPDM), ("dit", DiT)])
def test_shipped_checkpoint_loads_small_and_samples(kind, cls):
    path = SHIPPED[kind]
    assert path.stat().st_size < 12e6
    model = load_model(path)
    assert isinstance(model, cls) and model.config.hidden_size == 192 and model.config.num_classes == 10
    meta = load_checkpoint(path).meta
    assert meta["weights"] == "ema" and meta["step"] > 0
    config = SamplerConfig(steps=4, iterations=3, cfg_scale=2.0)
    images, record = sample(model, GaussianDiffusion(), [0, 5, 9], config, generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 1, 28, 28) and torch.isfinite(images).all()
    assert record.spent_block_evals <= record.plan["budget"]


def test_shipped_fpdm_is_a_contraction_and_reuse_helps():
    model = load_model(SHIPPED["fpdm"])
    on = sample(model, GaussianDiffusion(), list(range(10)), SamplerConfig(steps=10, iterations=8, reuse=True),
                generator=torch.Generator().manual_seed(0))[1]
    off = sample(model, GaussianDiffusion(), list(range(10)), SamplerConfig(steps=10, iterations=8, reuse=False),
                 generator=torch.Generator().manual_seed(0))[1]
    for step in off.steps:
        assert step.rel_trace[-1] < step.rel_trace[0]  # iterating shrinks the residual at every timestep
    first_on = [s.rel_trace[0] for s in on.steps[1:]]
    first_off = [s.rel_trace[0] for s in off.steps[1:]]
    assert sum(first_on) < 0.5 * sum(first_off)


def test_headline_accuracy_reproduces_on_a_subsample():
    """The committed headline accuracy (n = 1000, FPDM by the smoothing rule at 5 DiT steps), re-measured here on
    200 samples of the same seed set, agrees within sampling noise (the file may come from another machine)."""
    bench = json.loads((Path(__file__).parents[1] / "figures" / "bench" / "headline.json").read_text())
    row = next(r for r in bench["results"]["rows"] if r["variant"] == "FPDM, smoothing rule"
               and r["budget_dit_steps"] == 5 and (r["method"], r["cfg_scale"]) == ("ddim", 3.0))
    fields = {k: v for k, v in bench["settings"]["sampler"].items() if k not in ("steps", "iterations", "budget")}
    config = SamplerConfig.from_dict({**fields, "budget": row["budget"]})  # from_dict: the file may say "method"
    result = evaluate(load_model(SHIPPED["fpdm"]), GaussianDiffusion(), config, n=200, classifier=load_classifier(),
                      seed=bench["settings"]["seed"], batch_size=500, real_n=1000)
    expected = row["metrics"]["accuracy"]["value"]
    assert abs(result["accuracy"] - expected) < 0.1, (result["accuracy"], expected)
