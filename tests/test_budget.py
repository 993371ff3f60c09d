"""Budgets: cost model (FLOPs counted by torch), allocation properties, splits, timestep smoothing, adaptive sampling."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from fpdm_core.budget import ALLOCATIONS, CostModel, Split, allocate, make_plan, splits_for_budget, timestep_smoothing
from fpdm_core.diffusion import GaussianDiffusion
from fpdm_core.models import PRESETS, ModelConfig, build_model
from fpdm_core.sampling import SamplerConfig, sample

FAST = settings(max_examples=60, deadline=None)



def fpdm_cost(pre: int, post: int) -> CostModel:
    return CostModel.of(ModelConfig(kind="fpdm", input_size=8, hidden_size=32, num_heads=2, pre_depth=pre, post_depth=post))


# ----------------------------------------------------------------------------- cost model
def test_one_fixed_point_iteration_costs_about_1_48_blocks_at_xl():
    cost = CostModel.of(PRESETS["FPDM-XL/2"])
    ratio = cost.iteration_flops / cost.block_flops
    assert 1.3 < ratio < 1.6
    assert round(ratio, 2) == 1.48  # the notes' computed value


@pytest.mark.parametrize("name, overrides, iterations", [
    ("FPDM-tiny", {}, 3),
    ("FPDM-tiny", {"learn_sigma": True, "pre_depth": 2, "post_depth": 0}, 1),
    ("DiT-tiny", {"learn_sigma": True}, 0),
])
def test_step_flops_equal_what_torch_counts_for_one_forward(name, overrides, iterations):
    """Every matmul and convolution of one batch-1 forward, counted by torch's FlopCounterMode (math attention)."""
    model = build_model(name, **overrides).eval()
    cost = CostModel.of(model.config)
    x, t, y = torch.randn(1, 1, 28, 28), torch.tensor([500]), torch.tensor([3])
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t, y) if cost.kind == "dit" else model(x, t, y, max_iter=iterations)
    assert counter.get_total_flops() == cost.step_flops(iterations)


def test_block_and_iteration_flops_equal_what_torch_counts():
    model = build_model("FPDM-tiny").eval()
    cost = CostModel.of(model.config)
    z, inj, c = torch.randn(1, 49, 32), torch.randn(1, 49, 32), torch.randn(1, 32)
    with sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        with FlopCounterMode(display=False) as block:
            model.block_fixed_point(z, c)
        with FlopCounterMode(display=False) as iteration:
            model.fixed_point_map(z, inj, c)
    assert block.get_total_flops() == cost.block_flops
    assert iteration.get_total_flops() == cost.iteration_flops


def test_block_evaluations_per_step():
    fpdm, dit = CostModel.of(PRESETS["FPDM-XL/2"]), CostModel.of(PRESETS["DiT-XL/2"])
    assert [fpdm.step_block_evals(k) for k in (1, 12, 26)] == [3, 14, 28]
    assert dit.step_block_evals() == dit.step_block_evals(7) == 28
    assert fpdm.step_flops(5) - fpdm.step_flops(4) == fpdm.iteration_flops


# ----------------------------------------------------------------------------- allocation: golden values
def test_allocation_golden_values():
    assert allocate(23, 3, "increasing") == [11, 8, 4]
    assert allocate(23, 3, "decreasing") == [4, 8, 11]
    assert allocate(10, 4, "uniform") == [3, 3, 2, 2]
    assert allocate(10, 4, "adaptive") == [3, 3, 2, 2]  # adaptive starts from the even share
    assert allocate(1005, 5, "increasing") == [302, 251, 201, 151, 100]  # 201 x ramp 1.5 -> 0.5
    # two iterations a step on average: the ramp still shows (it used to round back to uniform)
    assert allocate(20, 10, "increasing") == [3, 3, 3, 2, 2, 2, 2, 1, 1, 1]
    assert allocate(20, 10, "decreasing") == [1, 1, 1, 2, 2, 2, 2, 3, 3, 3]
    assert allocate(7, 1, "increasing") == [7]
    assert allocate(5, 5, "decreasing") == [1] * 5


# ----------------------------------------------------------------------------- allocation: properties
@FAST
@given(pre=st.integers(0, 3), post=st.integers(0, 3), steps=st.integers(1, 60), budget=st.integers(1, 1500),
       allocation=st.sampled_from(ALLOCATIONS))
def test_plan_spends_exactly_the_budget_left_after_explicit_blocks(pre, post, steps, budget, allocation):
    cost = fpdm_cost(pre, post)
    if budget < steps * (pre + post + 1):
        with pytest.raises(ValueError, match="budget"):
            make_plan(cost, budget=budget, steps=steps, allocation=allocation)
        return
    plan = make_plan(cost, budget=budget, steps=steps, allocation=allocation)
    it = plan.iterations
    assert plan.steps == len(it) == steps and plan.budget == budget
    assert sum(it) == budget - steps * (pre + post)
    assert sum(cost.step_block_evals(k) for k in it) <= budget
    assert min(it) >= 1
    if allocation == "increasing":  # most iterations at the noisiest (first) steps
        assert all(a >= b for a, b in zip(it, it[1:]))
    elif allocation == "decreasing":
        assert all(a <= b for a, b in zip(it, it[1:]))
    else:
        assert max(it) - min(it) <= 1


@FAST
@given(steps=st.integers(2, 40), extra=st.integers(0, 2000))
def test_increasing_and_decreasing_are_mirror_ramps(steps, extra):
    inc = allocate(steps + extra, steps, "increasing")
    dec = allocate(steps + extra, steps, "decreasing")
    assert sum(inc) == sum(dec) == steps + extra
    # largest-remainder rounding may break ties differently; each step differs by at most one
    assert all(abs(a - b) <= 1 for a, b in zip(inc, dec[::-1]))
    if extra >= steps:  # two iterations a step or more: the ramp is visible
        assert inc[0] > inc[-1] and dec[-1] > dec[0]


@FAST
@given(pre=st.integers(0, 3), post=st.integers(0, 3), steps=st.integers(1, 50), iterations=st.integers(1, 30),
       allocation=st.sampled_from(ALLOCATIONS))
def test_plan_from_steps_and_iterations_costs_that_uniform_split(pre, post, steps, iterations, allocation):
    cost = fpdm_cost(pre, post)
    plan = make_plan(cost, steps=steps, iterations=iterations, allocation=allocation)
    assert plan.budget == steps * (pre + post + iterations)
    assert sum(plan.iterations) == steps * iterations and min(plan.iterations) >= 1


# ----------------------------------------------------------------------------- splits and timestep smoothing
def test_splits_for_budget_golden_values_at_560_block_evaluations():
    fpdm = splits_for_budget(CostModel.of(PRESETS["FPDM-XL/2"]), 560)
    assert Split(20, 26, 560) in fpdm  # the paper's DiT-compute comparison: 20 steps x 26 iterations
    assert Split(40, 12, 560) in fpdm  # ... or 40 steps x 12 iterations
    assert fpdm[0] == Split(186, 1, 558) and fpdm[1] == Split(140, 2, 560)
    assert splits_for_budget(CostModel.of(PRESETS["DiT-XL/2"]), 560) == [Split(20, 0, 560)]
    assert splits_for_budget(CostModel.of(PRESETS["DiT-XL/2"]), 27) == []


@FAST
@given(pre=st.integers(0, 3), post=st.integers(0, 3), budget=st.integers(1, 800))
def test_every_split_uses_its_step_count_as_fully_as_possible(pre, post, budget):
    e = pre + post
    splits = splits_for_budget(fpdm_cost(pre, post), budget)
    assert [s.steps for s in splits] == sorted({s.steps for s in splits}, reverse=True)
    for s in splits:
        assert s.steps >= 1 and s.iterations >= 1
        assert s.block_evals == s.steps * (e + s.iterations) <= budget
        assert s.steps * (e + s.iterations + 1) > budget  # one more iteration per step would not fit
    # every step count reachable with >= 1 iteration is listed
    assert {s.steps for s in splits} == {budget // (e + k) for k in range(1, budget + 1) if budget // (e + k) >= 1}


@pytest.mark.parametrize("min_iterations, expected", [(2, Split(140, 2, 560)), (12, Split(40, 12, 560)),
                                                      (26, Split(20, 26, 560)), (27, Split(19, 27, 551))])
def test_timestep_smoothing_golden_values(min_iterations, expected):
    assert timestep_smoothing(CostModel.of(PRESETS["FPDM-XL/2"]), 560, min_iterations) == expected


@FAST
@given(pre=st.integers(0, 3), post=st.integers(0, 3), budget=st.integers(1, 800), min_iterations=st.integers(1, 6))
def test_timestep_smoothing_picks_the_most_steps_with_at_least_min_iterations(pre, post, budget, min_iterations):
    e = pre + post
    cost = fpdm_cost(pre, post)
    if budget < e + min_iterations:
        with pytest.raises(ValueError, match="below one step's cost"):
            timestep_smoothing(cost, budget, min_iterations)
        return
    s = timestep_smoothing(cost, budget, min_iterations)
    assert s.iterations >= min_iterations and s.steps * (e + s.iterations) <= budget
    assert (s.steps + 1) * (e + min_iterations) > budget  # one more step would drop below min_iterations
    assert s.steps * (e + s.iterations + 1) > budget  # and the leftover went into iterations
    plan = make_plan(cost, budget=budget, min_iterations=min_iterations)
    assert plan.steps == s.steps and sum(plan.iterations) == budget - s.steps * e


def test_dit_budget_gives_budget_over_depth_steps():
    cost = CostModel.of(PRESETS["DiT-XL/2"])
    plan = make_plan(cost, budget=570)
    assert plan.steps == 20 and plan.iterations == [0] * 20
    with pytest.raises(ValueError, match="below"):
        make_plan(cost, budget=27)
    with pytest.raises(ValueError, match="below the cost of 21 DiT steps"):
        make_plan(cost, budget=570, steps=21)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0, iterations=3), "steps must be >= 1"),
    (dict(steps=-2, iterations=3), "steps must be >= 1"),
    (dict(steps=5, iterations=0), "iterations must be >= 1"),
    (dict(steps=5, iterations=-1), "iterations must be >= 1"),
    (dict(budget=0), "budget must be >= 1"),
    (dict(budget=2), "below one step's cost"),  # 1 pre + 1 post + 2 iterations = 4
    (dict(budget=20, steps=7), "below 7 steps of one iteration"),
    (dict(steps=5), "give either a budget"),
    (dict(steps=5, iterations=2, allocation="cosine"), "unknown allocation 'cosine'"),
])
def test_plan_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_plan(fpdm_cost(1, 1), **kwargs)


@pytest.mark.parametrize("args, message", [((5, 0), "steps must be >= 1"), ((3, 4), "at least one"),
                                           ((10, 2, "ramp"), "unknown allocation")])
def test_allocate_errors(args, message):
    with pytest.raises(ValueError, match=message):
        allocate(*args)


# ----------------------------------------------------------------------------- adaptive allocation in the sampler
def contractive_fpdm(seed: int = 0):
    """Tiny FPDM (4 tokens) with perturbed weights and a weak dependence of f on z: a contraction."""
    model = build_model("FPDM-tiny", input_size=8)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
        model.block_fixed_point_projection_fc1.weight[:, :32] *= 0.2
    return model.eval()


def test_adaptive_allocation_never_exceeds_the_budget_and_moves_leftover_later():
    model, diffusion = contractive_fpdm(), GaussianDiffusion()
    budget, steps = 64, 8  # 8 x (2 + 6): an even share of 6 iterations per step
    cfg = SamplerConfig(budget=budget, steps=steps, allocation="adaptive", tol=1e-3)
    _, record = sample(model, diffusion, [0, 1, 2], cfg, generator=torch.Generator().manual_seed(0))
    used = [s.iterations for s in record.steps]
    allowed = [s.max_iterations for s in record.steps]
    assert record.spent_block_evals == sum(2 + k for k in used) <= budget
    assert all(1 <= u <= a for u, a in zip(used, allowed))
    assert allowed[0] == 6 and any(s.converged and s.iterations < s.max_iterations for s in record.steps[:-1])
    assert max(allowed[1:]) > 6  # what early steps saved went to later steps
    # the allowance is the even share of what is left: never more than the budget can pay for
    left = budget - steps * 2
    for i, (u, a) in enumerate(zip(used, allowed)):
        assert a == left // (steps - i)
        left -= u
    assert record.steps[-1].spent_block_evals == record.spent_block_evals


def test_non_adaptive_with_tolerance_stops_early_but_keeps_its_plan():
    model, diffusion = contractive_fpdm(), GaussianDiffusion()
    cfg = SamplerConfig(steps=4, iterations=10, tol=1e-3, allocation="uniform")
    _, record = sample(model, diffusion, [0, 1], cfg, generator=torch.Generator().manual_seed(0))
    assert [s.max_iterations for s in record.steps] == [10] * 4
    assert all(s.converged and s.iterations < 10 for s in record.steps)
    assert record.spent_block_evals < record.plan["budget"] == 4 * 12


def test_adaptive_needs_a_tolerance():
    with pytest.raises(ValueError, match="tol"):
        SamplerConfig(budget=40, allocation="adaptive")


def test_plan_says_when_rounding_leaves_a_ramp_uniform():
    cost = fpdm_cost(1, 1)
    flat = make_plan(cost, budget=30, steps=10, allocation="increasing")  # one iteration a step
    assert flat.iterations == [1] * 10 and "no room for an increasing ramp" in flat.rule
    ramp = make_plan(cost, budget=40, steps=10, allocation="decreasing")  # two a step: a real ramp
    assert ramp.iterations[0] < ramp.iterations[-1] and "no room" not in ramp.rule
