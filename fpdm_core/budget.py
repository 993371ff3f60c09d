"""Sampling compute: cost of a step, budgets, allocation across timesteps, timestep smoothing.

A budget is counted in transformer-block evaluations per image: a DiT step costs `depth`,
an FPDM step costs `pre_depth + iterations + post_depth`. FLOPs are reported alongside,
because one fixed-point iteration (projection MLP + block) costs more than one block.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .models import ModelConfig

ALLOCATIONS = ("uniform", "increasing", "decreasing", "adaptive")
# Timestep smoothing's default: the `min_iterations` with the lowest mean relative FCD regret over 1-40 DiT-step
# budgets in the full quality landscape of the shipped FPDM (figures/RESULTS.md, `landscape`; a test keeps the two
# in step). 3 and 4 rank better on average but fall to one step x 6 iterations at the smallest budget.
SMOOTHING_MIN_ITERATIONS = 2


@dataclass(frozen=True)
class CostModel:
    """Per-image cost of one denoising step of a model (forward pass, multiply-add = 2 FLOPs)."""

    kind: str
    explicit_blocks: int  # DiT depth, or FPDM pre + post
    block_flops: float  # one adaLN-Zero block
    iteration_flops: float  # one fixed-point iteration: projection MLP + block (0 for DiT)
    overhead_flops: float  # embeddings, input injection, final layer

    @classmethod
    def of(cls, config: ModelConfig) -> "CostModel":
        N, D, P = config.num_tokens, config.hidden_size, config.patch_size**2
        hidden = int(D * config.mlp_ratio)
        block = 2 * (N * (4 * D * D + 2 * D * hidden + 2 * N * D) + 6 * D * D)  # qkv+proj, MLP, attention; adaLN
        # patch embedding, final linear; t-embedding MLP (256D + D^2) and final adaLN (2D^2) per image
        overhead = 2 * (N * P * config.in_channels * D + N * D * P * config.out_channels + 3 * D * D + 256 * D)
        if config.kind == "dit":
            return cls("dit", config.depth, block, 0.0, overhead)
        projection = 2 * N * (4 * D * D + 2 * D * D)  # fc1 (2D->2D), fc2 (2D->D)
        injection = 2 * N * D * D
        return cls("fpdm", config.pre_depth + config.post_depth, block, block + projection, overhead + injection)

    def step_block_evals(self, iterations: int = 0) -> int:
        return self.explicit_blocks + (iterations if self.kind == "fpdm" else 0)

    def step_flops(self, iterations: int = 0) -> float:
        return self.overhead_flops + self.explicit_blocks * self.block_flops + iterations * self.iteration_flops


def allocate(total_iterations: int, steps: int, schedule: str = "uniform") -> list[int]:
    """Split `total_iterations` over `steps` denoising steps (sampling order, noisiest first).

    Iterations are proportional to a weight per step, as in the authors' code: `uniform` equal,
    `increasing` a ramp 1.5 -> 0.5 in sampling order (more iterations at high noise, i.e.
    increasing with t), `decreasing` the reverse ramp. Every step keeps at least one iteration
    (steps the ramp would give less are held at one and the rest re-shared); largest remainders
    round, so the result sums to exactly `total_iterations`. (`adaptive` starts from uniform.)
    """
    if schedule not in ALLOCATIONS:
        raise ValueError(f"unknown allocation {schedule!r}; choose one of {ALLOCATIONS}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if total_iterations < steps:
        raise ValueError(f"{total_iterations} iterations cannot give each of {steps} steps at least one")
    ramp = np.linspace(1.5, 0.5, steps) if steps > 1 else np.ones(1)
    weights = {"increasing": ramp, "decreasing": ramp[::-1]}.get(schedule, np.ones(steps))
    held = np.zeros(steps, dtype=bool)  # steps held at one iteration
    while True:
        free = total_iterations - int(held.sum())
        share = np.where(held, 1.0, weights * free / weights[~held].sum())  # (S,)
        low = (share < 1) & ~held
        if not low.any():
            break
        held |= low
    base = np.floor(share).astype(int)
    leftover = total_iterations - int(base.sum())
    base[np.argsort(-(share - base), kind="stable")[:leftover]] += 1
    return [int(b) for b in base]


@dataclass(frozen=True)
class Split:
    steps: int
    iterations: int  # per step (0 for DiT)
    block_evals: int  # total per image


NUM_TIMESTEPS = 1000  # the diffusion's training timesteps (DDPM/DiT): no plan has more sampling steps


def splits_for_budget(cost: CostModel, budget: int, num_timesteps: int = NUM_TIMESTEPS) -> list[Split]:
    """Every (steps, iterations per step) split that fits `budget`, using it as fully as possible.

    One split per step count S <= num_timesteps, with the most iterations that fit, k = budget // S - explicit;
    S is kept unless the same k also fits more steps (S + 1 is then listed with that k). Ordered by
    iterations (fewest first). O(min(budget, num_timesteps)) work.
    """
    if budget < 1 or num_timesteps < 1:
        raise ValueError(f"budget and num_timesteps must be >= 1, got {budget} and {num_timesteps}")
    if cost.kind == "dit":
        steps = min(budget // cost.explicit_blocks, num_timesteps)
        return [Split(steps, 0, steps * cost.explicit_blocks)] if steps else []
    out = []
    for steps in range(min(num_timesteps, budget // cost.step_block_evals(1)), 0, -1):
        k = budget // steps - cost.explicit_blocks
        if min(num_timesteps, budget // cost.step_block_evals(k)) == steps:
            out.append(Split(steps, k, steps * cost.step_block_evals(k)))
    return out


def timestep_smoothing(cost: CostModel, budget: int, min_iterations: int = SMOOTHING_MIN_ITERATIONS,
                       num_timesteps: int = NUM_TIMESTEPS) -> Split:
    """Rule: the most timesteps (at most num_timesteps) such that each still gets `min_iterations` iterations.

    Of the splits with that many steps, the one with the most iterations: O(1) work for any budget.
    """
    if budget < 1 or num_timesteps < 1:
        raise ValueError(f"budget and num_timesteps must be >= 1, got {budget} and {num_timesteps}")
    if cost.kind == "dit":
        per_step = cost.explicit_blocks
    else:
        per_step = cost.step_block_evals(min_iterations)
    steps = min(budget // per_step, num_timesteps)
    if steps < 1:
        raise ValueError(f"budget {budget} is below one step's cost with {min_iterations} iterations "
                         f"({per_step} block evaluations)")
    k = budget // steps - cost.explicit_blocks if cost.kind == "fpdm" else 0
    return Split(steps, k, steps * cost.step_block_evals(k))


@dataclass(frozen=True)
class Plan:
    """Timestep count and fixed-point iterations per step (sampling order) under a budget."""

    steps: int
    iterations: list[int]  # planned per step; for `adaptive`, the even share at the start
    budget: int  # block evaluations per image, never exceeded
    allocation: str
    rule: str  # how the split was chosen, in words

    def to_dict(self) -> dict:
        return asdict(self)


def make_plan(cost: CostModel, *, steps: int | None = None, iterations: int | None = None,
              budget: int | None = None, allocation: str = "uniform",
              min_iterations: int = SMOOTHING_MIN_ITERATIONS, num_timesteps: int = NUM_TIMESTEPS) -> Plan:
    """Plan from (steps, iterations), (budget, steps) or a budget alone (timestep smoothing, at most
    `num_timesteps` steps: the diffusion's).

    With (steps, iterations) the budget is what that uniform split costs, and a non-uniform
    allocation redistributes the same total.
    """
    if allocation not in ALLOCATIONS:
        raise ValueError(f"unknown allocation {allocation!r}; choose one of {ALLOCATIONS}")
    for name, v in (("steps", steps), ("iterations", iterations), ("budget", budget)):
        if v is not None and v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    fpdm = cost.kind == "fpdm"
    if budget is None:
        if steps is None or (fpdm and iterations is None):
            raise ValueError("give either a budget, or steps (and iterations for FPDM)")
        budget = steps * cost.step_block_evals(iterations or 0)
        rule = f"{steps} steps x {iterations} iterations" if fpdm else f"{steps} steps"
    elif steps is None:
        split = timestep_smoothing(cost, budget, min_iterations, num_timesteps)
        steps = split.steps
        rule = (f"timestep smoothing: most steps with >= {min_iterations} iterations each "
                f"within {budget} block evaluations" if fpdm else f"{budget} // depth {cost.explicit_blocks}")
    else:
        rule = f"{steps} steps within {budget} block evaluations"
    if not fpdm:
        if steps * cost.explicit_blocks > budget:
            raise ValueError(f"budget {budget} is below the cost of {steps} DiT steps ({steps * cost.explicit_blocks})")
        return Plan(steps, [0] * steps, budget, "uniform", rule)
    total = budget - steps * cost.explicit_blocks
    if total < steps:
        raise ValueError(f"budget {budget} is below {steps} steps of one iteration each "
                         f"({steps * cost.step_block_evals(1)} block evaluations)")
    iterations = allocate(total, steps, allocation)
    if allocation in ("increasing", "decreasing") and max(iterations) - min(iterations) <= 1 and steps > 1:
        rule += (f"; note: {total} iterations over {steps} steps leave no room for an {allocation} ramp, "
                 "so this plan is uniform (more budget or fewer steps gives the ramp room)")
    return Plan(steps, iterations, budget, allocation, rule)
