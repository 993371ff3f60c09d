"""`bench precision`: bf16 vs fp32 sampling paired image by image, and its verdict rule."""
from __future__ import annotations

import copy

import pytest
import torch

from fpdm_core.bench import harness, precision
from fpdm_core.bench.points import Evaluator
from fpdm_core.models import build_model
from fpdm_core.scores import METRICS

from conftest import needs_fmnist


@pytest.fixture(scope="module")
def evaluator():
    ctx = harness.Context(out=None, scale=harness.SCALES["tiny"], seed=0, device=torch.device("cpu"), precision="fp32",
                          fpdm_path=None, dit_path=None, classifier_path=None, minutes=None, command="test")
    return Evaluator(ctx, n_boot=20)


def random_model(name: str):
    """A tiny model with random weights (no block is the identity, so bf16 rounding shows)."""
    torch.manual_seed(0)
    model = build_model(name, hidden_size=32, num_heads=2).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@needs_fmnist
@pytest.mark.parametrize("kind, name", [("fpdm", "FPDM-tiny"), ("dit", "DiT-tiny")])
def test_both_precisions_sample_the_same_labels_and_noise(evaluator, kind, name):
    model = random_model(name)
    cfgs = {p: precision.sampler_config(kind, 2, 4, p) for p in precision.PRECISIONS}
    assert cfgs["bf16"].to_dict() == {**cfgs["fp32"].to_dict(), "precision": "bf16"}
    c = precision.compare_model(evaluator, kind, model, cfgs, n=12, seed=0)
    assert set(c["diff"]) == set(METRICS) and set(c["rows"]) == {"fp32", "bf16"}
    assert 0 < c["image_mean_abs_diff"] < 0.05 and c["image_mean_abs_diff"] <= c["image_max_abs_diff"]  # paired
    fp32, bf16 = c["rows"]["fp32"], c["rows"]["bf16"]
    assert fp32["block_evals"] == bf16["block_evals"] <= 2 * 4
    if kind == "dit":
        assert c["residual_max_abs_diff"] is None and fp32["residual_curve"] == []
    else:  # one value per fixed-point iteration of every step
        assert len(fp32["residual_curve"]) == len(bf16["residual_curve"]) == sum(fp32["iterations"])
        assert 0 < c["residual_max_abs_diff"] < 0.05


def comparison(**diffs) -> dict:
    """A comparison whose bf16 - fp32 intervals are [lo, hi] = diffs[metric] (default [-0.01, 0.01])."""
    diff = {m: {"value": sum(diffs.get(m, (-0.01, 0.01))) / 2, "lo": diffs.get(m, (-0.01, 0.01))[0],
                "hi": diffs.get(m, (-0.01, 0.01))[1]} for m in METRICS}
    fp32 = {m: {"value": 1.0, "lo": 0.9, "hi": 1.1} for m in METRICS}
    return {"kind": "fpdm", "n": 1000, "diff": diff, "rows": {"fp32": {"metrics": fp32}},
            "image_mean_abs_diff": 0.01, "image_max_abs_diff": 0.2, "residual_max_abs_diff": 0.001,
            "residual_max_rel_diff": 0.02}


def data(mode: str, *comparisons) -> dict:
    return {"mode": mode, "settings": {"budget_dit_steps": 5, "auto_precision_here": "fp32"},
            "results": {"comparisons": list(comparisons)}}


def test_same_within_ci_only_when_every_interval_contains_zero():
    same, moved = comparison(), comparison(fcd=(0.02, 0.05))
    assert precision.moved(same) == [] and precision.moved(moved) == ["fcd"]
    assert precision.relative_shift(moved, "fcd") == pytest.approx(0.035 / 0.1)
    found = precision.verdicts(data("full", same, copy.deepcopy(same)))
    assert [f["status"] for f in found] == ["same within CI", "same within CI", "measured"]
    assert "can be 'auto'" in found[-1]["sentence"]
    found = precision.verdicts(data("full", same, moved))
    assert [f["status"] for f in found] == ["same within CI", "moved", "measured"]
    assert "excludes 0 for fcd" in found[1]["sentence"] and "stays 'fp32'" in found[-1]["sentence"]


def test_a_smoke_run_recommends_no_default():
    found = precision.verdicts(data("quick", comparison()))
    assert [f["claim"] for f in found] == ["bf16 sampling keeps FPDM's quality"]


def test_a_metric_without_interval_width_is_reported_not_fatal(tmp_path):
    c = comparison()
    c["rows"]["fp32"]["metrics"]["accuracy"] = {"value": 0.0, "lo": 0.0, "hi": 0.0}
    c["rows"]["fp32"]["residual_curve"], c["rows"]["bf16"] = [1.0, 0.5], {"residual_curve": [1.0, 0.5]}
    c["rows"]["fp32"]["steps"] = 1
    ctx = harness.Context(out=tmp_path, scale=harness.SCALES["tiny"], seed=0, device=torch.device("cpu"),
                          precision="fp32", fpdm_path=None, dit_path=None, classifier_path=None, minutes=None,
                          command="test")
    precision.plot(ctx, {"metrics": dict(METRICS), "comparisons": [c]})
    assert (tmp_path / "precision.png").stat().st_size > 1000
    assert precision.relative_shift(c, "accuracy") == 0.0  # no shift, no width
    c["diff"]["accuracy"]["value"] = 0.001
    assert precision.relative_shift(c, "accuracy") == float("inf")
