"""Speed rows of `bench speed`: fp32 vs bf16 sampling side by side, torch.compile of the sampling blocks."""
from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fpdm_core.app_settings import Settings
from fpdm_core.bench import app_latency, harness, speed
from fpdm_core.budget import CostModel
from fpdm_core.models import PRESETS, build_model

ROOT = Path(__file__).resolve().parents[1]


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


def test_sampling_rows_repeat_at_most_three_times(tiny):
    ctx, _ = tiny
    assert speed.sampling_repeats(ctx) == 1
    assert speed.sampling_repeats(replace(ctx, scale=harness.SCALES["full"])) == speed.MAX_SAMPLING_REPEATS == 3


def test_app_rows_time_the_default_request_and_the_memory_of_a_large_one(tiny, tiny_checkpoints):
    ctx, _ = tiny
    ctx = replace(ctx, fpdm_path=tiny_checkpoints["fpdm"], dit_path=tiny_checkpoints["dit"])
    a = app_latency.measure_app(ctx)
    default = Settings()
    assert a["settings"] == default.to_dict() and a["large_images"] == 2 * default.num_images
    assert len(a["warm"]) == 3 and a["cold"]["disk_loads"] == 2  # both files read once, then cached
    assert [r["disk_loads"] for r in (*a["warm"], a["large"])] == [0, 0, 0, 0]
    for r in (a["cold"], *a["warm"], a["large"]):
        assert 0 < r["first_image_s"] < r["complete_s"] and r["fpdm_steps"] == default.config.steps
        assert r["dit_steps"] > 0 and r["rss_after_release"] > 0
        assert [s for s, _ in r["updates"]][-1] == "done"
    assert a["large"]["work"] == 2 * a["warm"][0]["work"]
    stages = a["stages_s"]
    assert set(stages) == {"load", "fpdm", "dit", "finish"}
    assert sum(stages[k]["values"][0] for k in stages) == pytest.approx(a["warm"][0]["complete_s"])
    assert a["steps_within_target"] is None or 1 <= a["steps_within_target"] <= default.config.steps
    text = "\n".join(speed.app_table(a))
    assert f"{default.num_images} images" in text and "after `release_memory`" in text


def test_the_before_after_table_reads_the_script_output():
    stat = harness.spread([1.0, 1.2, 1.1])
    row = {"steps_per_s": stat, "fraction_of_fp32_peak": 0.25}
    ba = {"command": "python scripts/train_speed.py --before abc", "before": "abc", "repeats": 3, "steps": 3,
          "precision": "fp32", "fp32_peak_gflops": 200.0,
          "machine": {"git_commit": "def", "torch_threads": 2, "load_average": [1.0]},
          "rows": [{"preset": "FPDM-FM-M", "batch": 128, "before": row, "after": {**row, "fraction_of_fp32_peak": 0.3},
                    "speedup": stat}]}
    lines = speed.before_after_table(ba)
    assert "`abc` vs `def`" in lines[1] and lines[-1].startswith("| FPDM-FM-M | 128 |") and "25% / 30%" in lines[-1]
    assert speed.before_after_table(None) == []


def test_steps_within_a_time_follow_the_measured_rates():
    stage = {"values": [0.05]}
    a = {"warm": [{"fpdm_steps": 10, "fpdm_block_evals": 50, "dit_depth": 8}], "per_step_s": {"fpdm": 0.1, "dit": 0.1},
         "stages_s": {"load": stage, "finish": stage}}
    assert app_latency.steps_within(a, 1.0) == 5  # 0.1 outside + 5 x 0.1 FPDM + (25 // 8 = 3) x 0.1 DiT = 0.9 s
    assert app_latency.steps_within(a, 0.2) is None


def test_train_speed_script_pairs_each_step_with_the_same_step_of_the_old_code():
    spec = importlib.util.spec_from_file_location("train_speed", ROOT / "scripts" / "train_speed.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    runs = {"before": [[[2.0, 0, 0], [4.0, 0, 0]]], "after": [[[1.0, 0, 0], [4.0, 0, 0]]]}
    row = script.summarize("DiT-FM-M", runs, 8, peak=100.0)
    assert row["speedup"]["values"] == [2.0, 1.0]
    assert row["before"]["steps_per_s"]["median"] == pytest.approx(2 / 6)
    assert row["after"]["steps_per_s"]["median"] == pytest.approx(2 / 5)
    flops = 2 * speed.train_step_flops(CostModel.of(PRESETS["DiT-FM-M"]), 8)
    assert row["after"]["fraction_of_fp32_peak"] == pytest.approx(flops / 5 / 1e9 / 100.0)
