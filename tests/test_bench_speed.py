"""Speed rows of `bench speed`: fp32 vs bf16 sampling side by side, torch.compile of the sampling blocks."""
from __future__ import annotations

import pytest
import torch

from fpdm_core.bench import harness, speed
from fpdm_core.models import build_model


@pytest.fixture(scope="module")
def tiny():
    """A tiny-mode Context and small trained-looking models (random weights, so no block is the identity)."""
    ctx = harness.Context(out=None, scale=harness.SCALES["tiny"], seed=0, device=torch.device("cpu"), precision="fp32",
                          fpdm_path=None, dit_path=None, classifier_path=None, minutes=None, command="test")
    torch.manual_seed(0)
    models = {kind: build_model(name, hidden_size=32, num_heads=2).eval() for kind, name in
              (("fpdm", "FPDM-tiny"), ("dit", "DiT-tiny"))}
    with torch.no_grad():
        for model in models.values():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return ctx, models


def test_sampling_rows_measure_both_precisions_side_by_side(tiny):
    ctx, models = tiny
    rows, comparisons = speed.measure_sampling(ctx, models, models["dit"].config.depth, {"fp32": 10.0, "bf16": 20.0})
    budgets = ctx.scale.speed_budgets
    assert [(r["kind"], r["budget_dit_steps"], r["precision"]) for r in rows] == \
        [(k, b, p) for k in ("fpdm", "dit") for b in budgets for p in ("fp32", "bf16")]
    for r in rows:
        assert r["images_per_s"]["median"] > 0 and r["block_evals_per_image"] <= r["budget"]
        assert r["fraction_of_peak"] == pytest.approx(r["gflops_per_s"]["median"] / (10.0 if r["precision"] == "fp32"
                                                                                     else 20.0))
    for c in comparisons:
        assert c["bf16_speedup"]["median"] > 0 and len(c["bf16_speedup"]["values"]) == ctx.repeats
        assert 0 < c["image_mean_abs_diff"] <= c["image_max_abs_diff"]  # bf16 rounds differently
    fpdm = next(c for c in comparisons if c["kind"] == "fpdm")
    assert len(fpdm["residual_fp32"]) == len(fpdm["residual_bf16"]) == budgets[0]  # one value per step
    diffs = [abs(a - b) for a, b in zip(fpdm["residual_fp32"], fpdm["residual_bf16"])]
    assert fpdm["residual_max_abs_diff"] == max(diffs)
    assert next(c for c in comparisons if c["kind"] == "dit")["residual_max_abs_diff"] is None


def test_explicit_blocks_are_every_transformer_block(tiny):
    _, models = tiny
    fpdm, dit = models["fpdm"], models["dit"]
    assert speed.explicit_blocks(dit) == list(dit.blocks)
    assert speed.explicit_blocks(fpdm) == [*fpdm.blocks_pre, fpdm.block_fixed_point, *fpdm.blocks_post]


def test_compile_rows_time_compiled_blocks_against_eager(tiny):
    ctx, models = tiny
    (row,) = speed.measure_compile(ctx, {"fpdm": models["fpdm"]}, models["dit"].config.depth)
    assert "error" not in row, row.get("error")
    assert row["backend"] == "aot_eager" and row["compile_s"] > 0 and row["speedup"]["median"] > 0
    assert row["image_max_abs_diff"] < 1e-4  # the compiled blocks compute the same images
    assert all(getattr(b, "_compiled_call_impl", None) is None for b in speed.explicit_blocks(models["fpdm"]))


def test_a_failing_backend_is_reported_not_raised(tiny, monkeypatch):
    ctx, models = tiny

    def broken(self, *args, **kwargs):
        raise RuntimeError("no C++ compiler\nmore detail")

    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: setattr(self, "forward", broken.__get__(self)))
    rows = speed.measure_compile(ctx, {"dit": models["dit"]}, models["dit"].config.depth)
    assert rows == [{"kind": "dit", "backend": "aot_eager", "compiled": "every transformer block",
                     "budget_dit_steps": 2, "batch": ctx.scale.sample_batch, "precision": "fp32",
                     "error": "RuntimeError: no C++ compiler"}]
