"""Budgeted sampling: solution reuse, records, seeds, the progressive generator, guidance, DiT, non-finite errors."""
from __future__ import annotations

import re

import pytest
import torch

from fpdm_core.diffusion import GaussianDiffusion, spaced_timesteps
from fpdm_core.models import build_model
from fpdm_core.sampling import SamplerConfig, SamplerStep, new_record, sample, sample_progressive
from fpdm_core.solvers import NonFiniteError


def perturbed(name: str, seed: int = 0, std: float = 0.05, contract: float | None = 0.2, **overrides):
    """Tiny model (8x8 images, 4 tokens) with perturbed weights; for FPDM, f's dependence on z is scaled
    down by `contract`, which makes the fixed-point map a contraction."""
    model = build_model(name, input_size=8, **overrides)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
        if contract is not None and hasattr(model, "block_fixed_point_projection_fc1"):
            model.block_fixed_point_projection_fc1.weight[:, : model.config.hidden_size] *= contract
    return model.eval()


@pytest.fixture(scope="module")
def fpdm():
    return perturbed("FPDM-tiny")


@pytest.fixture(scope="module")
def dit():
    return perturbed("DiT-tiny")


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion()


def run(model, diffusion, labels=(0, 1, 2), seed=0, **cfg):
    return sample(model, diffusion, list(labels), SamplerConfig(**cfg), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- solution reuse
def test_reusing_the_previous_solution_lowers_the_first_residual_at_the_next_timestep(fpdm):
    """Model level: solve at t, then start t' (the next sampling timestep) from that solution vs cold."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 8, 8, generator=g)
    y = torch.tensor([0, 4, 7])
    t1, t2 = torch.full((3,), 999), torch.full((3,), 949)
    with torch.no_grad():
        first = fpdm(x, t1, y, max_iter=30, tol=1e-5)
        assert bool(first.stats.converged.all())
        x2 = x + 0.05 * torch.randn(x.shape, generator=g)  # x_t moves a little between consecutive steps
        warm = fpdm(x2, t2, y, z0=first.z, max_iter=1)
        cold = fpdm(x2, t2, y, max_iter=1)
    assert (warm.stats.abs_trace[:, 0] < 0.5 * cold.stats.abs_trace[:, 0]).all()


def test_sampler_with_reuse_starts_every_later_step_closer(fpdm, diffusion):
    _, on = run(fpdm, diffusion, steps=6, iterations=4, reuse=True)
    _, off = run(fpdm, diffusion, steps=6, iterations=4, reuse=False)
    for a, b in zip(on.steps[1:], off.steps[1:]):
        assert a.abs_trace[0] < 0.5 * b.abs_trace[0]


def test_reuse_on_the_first_step_is_a_cold_start(fpdm, diffusion):
    cfg = SamplerConfig(steps=5, iterations=3)
    on = list(sample_progressive(fpdm, diffusion, [1, 2], cfg, generator=torch.Generator().manual_seed(0)))
    off = list(sample_progressive(fpdm, diffusion, [1, 2], SamplerConfig(steps=5, iterations=3, reuse=False),
                                  generator=torch.Generator().manual_seed(0)))
    assert on[0].record == off[0].record  # residual traces, iterations, cost: all identical
    assert torch.equal(on[0].x_t, off[0].x_t) and torch.equal(on[0].x0_pred, off[0].x0_pred)
    assert on[1].record.abs_trace != off[1].record.abs_trace  # ... and from step 2 on reuse matters


def test_reuse_state_lives_in_the_loop_not_on_the_model(fpdm, diffusion):
    before = set(vars(fpdm))
    a, _ = run(fpdm, diffusion, seed=0, steps=3, iterations=2)
    run(fpdm, diffusion, labels=(5,), seed=1, steps=4, iterations=2)  # another batch size in between
    again, _ = run(fpdm, diffusion, seed=0, steps=3, iterations=2)
    assert set(vars(fpdm)) == before
    assert torch.equal(a, again)


# ----------------------------------------------------------------------------- record and budget
@pytest.mark.parametrize("cfg", [
    dict(steps=5, iterations=3),
    dict(budget=40),
    dict(budget=40, allocation="increasing"),
    dict(budget=41, steps=6, allocation="decreasing"),
    dict(budget=30, steps=5, allocation="adaptive", tol=1e-2),
    dict(budget=30, steps=5, tol=1e-2, solver="anderson"),
    dict(steps=4, iterations=3, step="ddpm"),
])
def test_spent_budget_never_exceeds_the_plan(fpdm, diffusion, cfg):
    images, record = run(fpdm, diffusion, **cfg)
    plan = record.plan
    assert images.shape == (3, 1, 8, 8) and torch.isfinite(images).all()
    assert len(record.steps) == plan["steps"] == len(record.timesteps)
    assert record.spent_block_evals <= plan["budget"]
    assert record.spent_block_evals == sum(2 + s.iterations for s in record.steps)
    assert record.steps[-1].spent_block_evals == record.spent_block_evals
    assert all(1 <= s.iterations <= s.max_iterations for s in record.steps)
    assert all(len(s.rel_trace) == len(s.abs_trace) == s.iterations for s in record.steps)
    assert record.timesteps == spaced_timesteps(plan["steps"], 1000, "trailing")
    if cfg.get("allocation") not in (None, "adaptive", "uniform"):
        assert [s.max_iterations for s in record.steps] == plan["iterations"]
    d = record.to_dict()
    assert d["spent_block_evals"] == record.spent_block_evals and d["spent_flops"] == pytest.approx(record.spent_flops)


def test_same_seed_gives_identical_images_and_different_seeds_differ(fpdm, diffusion):
    cfg = dict(steps=4, iterations=2, step="ddpm")  # ancestral: noise drawn every step
    a, rec_a = run(fpdm, diffusion, seed=7, **cfg)
    b, rec_b = run(fpdm, diffusion, seed=7, **cfg)
    c, _ = run(fpdm, diffusion, seed=8, **cfg)
    assert torch.equal(a, b) and rec_a.to_dict() == rec_b.to_dict()
    assert not torch.allclose(a, c)


def test_progressive_yields_one_step_per_timestep_with_x0_pred(fpdm, diffusion):
    cfg = SamplerConfig(steps=4, iterations=2)
    record = new_record(fpdm, diffusion, cfg)
    steps = list(sample_progressive(fpdm, diffusion, [3, 3], cfg, generator=torch.Generator().manual_seed(0),
                                    record=record))
    assert len(steps) == 4 and all(isinstance(s, SamplerStep) for s in steps)
    assert [s.index for s in steps] == [0, 1, 2, 3]
    assert [s.record.t for s in steps] == record.timesteps
    assert record.steps == [s.record for s in steps]  # the passed record is filled in as the loop runs
    for s in steps:
        assert s.x_t.shape == s.x0_pred.shape == (2, 1, 8, 8)
        assert s.x0_pred.abs().max() <= 1  # clip_x0
    assert torch.equal(steps[-1].x_t, steps[-1].x0_pred)  # the last DDIM step lands on x0
    final, _ = sample(fpdm, diffusion, [3, 3], cfg, generator=torch.Generator().manual_seed(0))
    assert torch.equal(final, steps[-1].x_t)


def test_progressive_can_be_stopped_early(fpdm, diffusion):
    gen = sample_progressive(fpdm, diffusion, [0], SamplerConfig(steps=50, iterations=2))
    first = next(gen)
    gen.close()
    assert first.index == 0 and first.record.iterations == 2


# ----------------------------------------------------------------------------- guidance, DiT
@pytest.mark.parametrize("channels", [None, 1])
def test_guidance_returns_one_image_per_label(fpdm, diffusion, channels):
    guided, record = run(fpdm, diffusion, labels=(0, 1, 2), steps=3, iterations=2, cfg_scale=4.0,
                         cfg_channels=channels)
    plain, _ = run(fpdm, diffusion, labels=(0, 1, 2), steps=3, iterations=2, cfg_scale=1.0)
    assert guided.shape == plain.shape == (3, 1, 8, 8)
    assert not torch.allclose(guided, plain)
    assert record.spent_block_evals <= record.plan["budget"]  # cost is per image, the doubled batch is hidden


def test_guidance_scale_one_equals_no_guidance(fpdm, diffusion):
    """Scale 1 skips the doubled batch; the doubled batch at scale 1 gives the same images."""
    a, _ = run(fpdm, diffusion, steps=3, iterations=2, cfg_scale=1.0)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = fpdm(torch.cat([x, x]), torch.full((6,), 999), torch.tensor([0, 1, 2, 10, 10, 10]), max_iter=2).out
    cond = fpdm(x, torch.full((3,), 999), torch.tensor([0, 1, 2]), max_iter=2).out
    torch.testing.assert_close(GaussianDiffusion.guided_output(out, 1.0)[:3], cond, rtol=1e-5, atol=1e-5)
    assert SamplerConfig().cfg_scale == 3.0  # the headline default guides
    b, _ = run(fpdm, diffusion, steps=3, iterations=2)
    assert not torch.allclose(a, b)


def test_dit_samples_through_the_same_api(dit, diffusion):
    images, record = run(dit, diffusion, labels=(0, 9), steps=3, cfg_scale=2.0)
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()
    assert record.kind == "dit" and record.plan["iterations"] == [0, 0, 0]
    assert [s.block_evals for s in record.steps] == [4, 4, 4] and record.spent_block_evals == 12
    assert all(s.iterations == 0 and s.rel_trace == [] for s in record.steps)
    _, by_budget = run(dit, diffusion, labels=(0,), budget=18)
    assert len(by_budget.steps) == 4 and by_budget.spent_block_evals == 16  # 18 // depth 4


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name, message", [("FPDM-tiny", r"timestep 999 \(step 1\)"),
                                           ("DiT-tiny", r"not finite at timestep 999 \(step 1\)")])
def test_nan_weights_raise_non_finite_error_naming_the_timestep(diffusion, name, message):
    model = perturbed(name)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match=message):
        run(model, diffusion, steps=3, iterations=2)


def test_nan_in_the_final_layer_only_is_caught_after_the_solver(diffusion):
    model = perturbed("FPDM-tiny")
    with torch.no_grad():
        model.final_layer.linear.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="model output is not finite at timestep 999"):
        run(model, diffusion, steps=3, iterations=2)


@pytest.mark.parametrize("labels, message", [([], "at least one image"), ([0, 11], "class ids must be in 0..9"),
                                             ([-1], "class ids")])
def test_bad_labels_are_refused(fpdm, diffusion, labels, message):
    with pytest.raises(ValueError, match=message):
        sample(fpdm, diffusion, labels, SamplerConfig(steps=2, iterations=1))


def test_null_class_samples_unconditionally(fpdm, diffusion):
    images, _ = run(fpdm, diffusion, labels=(10, 10), steps=2, iterations=1)
    assert images.shape == (2, 1, 8, 8)


@pytest.mark.parametrize("kwargs, message", [
    (dict(solver="newton"), "SamplerConfig.solver must be one of picard, anderson; got 'newton'"),
    (dict(step="euler"), "SamplerConfig.step must be one of ddim, ddpm"),
    (dict(cfg_scale=-1.0), "SamplerConfig.cfg_scale must be a finite number >= 0.0"),
    (dict(steps=0), "SamplerConfig.steps must be an integer in 1..1000, got 0"),
    (dict(iterations=2.5), "SamplerConfig.iterations must be an integer in 1..100, got 2.5"),
    (dict(reuse="yes"), "SamplerConfig.reuse must be true or false"),
    (dict(allocation="adaptive", budget=40), "needs a residual tolerance"),
])
def test_sampler_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SamplerConfig(**kwargs)


def test_old_records_that_say_method_still_load():
    old = {("method" if k == "step" else k): v for k, v in SamplerConfig(step="ddpm").to_dict().items()}
    assert SamplerConfig.from_dict(old) == SamplerConfig(step="ddpm")
    assert SamplerConfig.from_dict(SamplerConfig(budget=40).to_dict()) == SamplerConfig(budget=40)
    with pytest.raises(ValueError, match="unknown sampler settings"):
        SamplerConfig.from_dict({"sampler": "ddim"})


def test_a_budget_that_plans_too_many_iterations_per_step_is_refused(fpdm):
    from fpdm_core.sampling import MAX_ITERATIONS, plan_for

    explicit = fpdm.config.pre_depth + fpdm.config.post_depth
    assert max(plan_for(fpdm, SamplerConfig(budget=explicit + MAX_ITERATIONS, steps=1), 1000).iterations) == MAX_ITERATIONS
    with pytest.raises(ValueError, match=f"more than the limit {MAX_ITERATIONS}: lower the budget to at most "
                                         f"{explicit + MAX_ITERATIONS} for 1 steps"):
        plan_for(fpdm, SamplerConfig(budget=explicit + MAX_ITERATIONS + 1, steps=1), 1000)


def test_sample_many_pairs_noise_by_seed_and_batch(fpdm, dit, diffusion):
    from fpdm_core.sampling import balanced_labels, sample_many

    labels = balanced_labels(5, 10)
    assert labels.tolist() == [0, 1, 2, 3, 4] and balanced_labels(3, 0).tolist() == [0, 0, 0]
    cfg = SamplerConfig(steps=2, iterations=2)
    images, records = sample_many(fpdm, diffusion, labels, cfg, seed=3, batch_size=2)
    assert images.shape == (5, 1, 8, 8) and len(records) == 3
    first, _ = sample(fpdm, diffusion, labels[:2], cfg, generator=torch.Generator().manual_seed(3))
    last, _ = sample(fpdm, diffusion, labels[4:], cfg, generator=torch.Generator().manual_seed(5))
    assert torch.equal(images[:2], first) and torch.equal(images[4:], last)
    with pytest.raises(ValueError, match="batch_size"):
        sample_many(dit, diffusion, labels, SamplerConfig(steps=1), batch_size=0)
