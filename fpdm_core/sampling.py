"""Budgeted sampling for DiT and FPDM, with a record of what each step spent.

`sample_progressive` yields after every denoising step (for live apps and notebooks);
`sample` runs it to the end. Solution reuse state lives in the loop, never on the model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterator, NamedTuple

import torch

from .budget import SMOOTHING_MIN_ITERATIONS, CostModel, Plan, make_plan
from .devices import autocast
from .diffusion import GaussianDiffusion, spaced_timesteps
from .models import DiT, FPDM
from .solvers import SOLVERS, NonFiniteError

METHODS = ("ddim", "ddpm")


@dataclass(frozen=True)
class SamplerConfig:
    """How to sample. Give (steps, iterations), (budget, steps) or a budget alone."""

    steps: int | None = None  # default 20 when no budget is given
    iterations: int | None = None  # fixed-point iterations per step (FPDM); default 6 without a budget
    budget: int | None = None  # block evaluations per image; with it, `iterations` is not used
    allocation: str = "uniform"  # uniform | increasing | decreasing | adaptive
    min_iterations: int = SMOOTHING_MIN_ITERATIONS  # timestep-smoothing rule when only a budget is given
    reuse: bool = True  # start each step's solve at the previous step's fixed point
    solver: str = "picard"  # picard | anderson
    tol: float | None = None  # stop a step early at this residual (always used by `adaptive`)
    stop_mode: str = "rel"
    damping: float = 1.0
    anderson_m: int = 5
    method: str = "ddim"  # ddim | ddpm
    eta: float = 0.0
    spacing: str = "trailing"  # first step at t = T-1 (Lin et al. 2024)
    cfg_scale: float = 3.0  # classifier-free guidance; 1 = none. 3 is the kit's headline setting
    cfg_channels: int | None = None  # guide only the first k channels (DiT's quirk: 3); None = all
    clip_x0: bool = True
    precision: str = "fp32"

    def __post_init__(self):
        if self.budget is None:
            object.__setattr__(self, "steps", 20 if self.steps is None else self.steps)
            object.__setattr__(self, "iterations", 6 if self.iterations is None else self.iterations)
        else:
            object.__setattr__(self, "iterations", None)
        if self.solver not in SOLVERS:
            raise ValueError(f"unknown solver {self.solver!r}; choose one of {SOLVERS}")
        if self.method not in METHODS:
            raise ValueError(f"unknown sampling method {self.method!r}; choose one of {METHODS}")
        if self.allocation == "adaptive" and self.tol is None:
            raise ValueError("allocation 'adaptive' needs a residual tolerance `tol` (e.g. 1e-3)")
        if self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be >= 0, got {self.cfg_scale}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StepRecord:
    index: int
    t: int
    iterations: int  # fixed-point iterations used (0 for DiT)
    max_iterations: int  # iterations this step was allowed
    rel_trace: list[float]  # batch-mean relative residual per iteration
    abs_trace: list[float]
    converged: bool  # every sample met `tol` (False without a tolerance)
    block_evals: int  # spent by this step, per image
    flops: float
    spent_block_evals: int  # cumulative


@dataclass
class SampleRecord:
    kind: str
    plan: dict
    config: dict
    timesteps: list[int]
    steps: list[StepRecord] = field(default_factory=list)

    @property
    def spent_block_evals(self) -> int:
        return sum(s.block_evals for s in self.steps)

    @property
    def spent_flops(self) -> float:
        return sum(s.flops for s in self.steps)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(spent_block_evals=self.spent_block_evals, spent_flops=self.spent_flops)
        return d


class SamplerStep(NamedTuple):
    index: int
    x_t: torch.Tensor  # (B, C, H, W) sample after this step
    x0_pred: torch.Tensor  # (B, C, H, W) the model's clean-image prediction at this step
    record: StepRecord


def plan_for(model: DiT | FPDM, config: SamplerConfig) -> Plan:
    return make_plan(CostModel.of(model.config), steps=config.steps, iterations=config.iterations,
                     budget=config.budget, allocation=config.allocation, min_iterations=config.min_iterations)


@torch.no_grad()
def sample_progressive(model: DiT | FPDM, diffusion: GaussianDiffusion, labels, config: SamplerConfig = SamplerConfig(),
                       *, generator: torch.Generator | None = None, device: str | torch.device | None = None,
                       record: SampleRecord | None = None) -> Iterator[SamplerStep]:
    """Denoise `len(labels)` images from pure noise, yielding after every step.

    labels: class ids (B,); the null class id (num_classes) samples unconditionally.
    Noise is drawn on the CPU from `generator`, so a seed gives the same images on any device.
    Pass a `SampleRecord` (see `new_record`) to have it filled in as the loop runs.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    mc, fpdm = model.config, isinstance(model, FPDM)
    record = record if record is not None else new_record(model, diffusion, config)
    iterations, timesteps = record.plan["iterations"], record.timesteps
    cost = CostModel.of(mc)
    y = torch.as_tensor(labels, dtype=torch.long).reshape(-1)  # (B,)
    if y.numel() == 0:
        raise ValueError("ask for at least one image")
    if int(y.min()) < 0 or int(y.max()) > mc.num_classes:
        raise ValueError(f"class ids must be in 0..{mc.num_classes - 1} (or {mc.num_classes} = unconditional), got {y.tolist()}")
    guided = config.cfg_scale != 1.0
    B = y.numel()
    x = torch.randn(B, mc.in_channels, mc.input_size, mc.input_size, generator=generator).to(device)  # (B, C, H, W)
    y = y.to(device)
    if guided:
        y = torch.cat([y, torch.full_like(y, mc.num_classes)])  # (2B,) [cond; null]
    solver_kw = dict(method=config.solver, stop_mode=config.stop_mode, damping=config.damping, anderson_m=config.anderson_m)
    z = None  # previous fixed point (B or 2B, N, D)
    remaining = sum(iterations)
    for i, t in enumerate(timesteps):
        xin = torch.cat([x, x]) if guided else x
        tt = torch.full((xin.shape[0],), t, device=device, dtype=torch.long)
        with autocast(device, config.precision):
            if fpdm:
                if config.allocation == "adaptive":
                    max_iter = remaining // (len(timesteps) - i)
                else:
                    max_iter = iterations[i]
                out, z_new, stats = model(xin, tt, y, z0=z if config.reuse else None, max_iter=max_iter,
                                          tol=config.tol, label=f"timestep {t} (step {i + 1})", **solver_kw)
                z = z_new
                remaining -= stats.iterations
            else:
                out, stats, max_iter = model(xin, tt, y), None, 0
        out = out.float()
        if not torch.isfinite(out).all():
            raise NonFiniteError(f"model output is not finite at timestep {t} (step {i + 1}); "
                                 "the checkpoint may be corrupt or the solver diverged: try fewer iterations or damping")
        if guided:
            out = diffusion.guided_output(out, config.cfg_scale, config.cfg_channels)[:B]
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        if config.method == "ddim":
            x, x0 = diffusion.ddim_step(out, t, t_prev, x, eta=config.eta, generator=generator, clip_x0=config.clip_x0)
        else:
            x, x0 = diffusion.ddpm_step(out, t, t_prev, x, generator=generator, clip_x0=config.clip_x0)
        used = stats.iterations if stats is not None else 0
        step = StepRecord(
            index=i, t=t, iterations=used, max_iterations=max_iter,
            rel_trace=stats.rel_trace.mean(0).tolist() if stats else [],
            abs_trace=stats.abs_trace.mean(0).tolist() if stats else [],
            converged=bool(stats.converged.all()) if stats else False,
            block_evals=cost.step_block_evals(used), flops=cost.step_flops(used),
            spent_block_evals=record.spent_block_evals + cost.step_block_evals(used),
        )
        record.steps.append(step)
        yield SamplerStep(i, x, x0, step)


def new_record(model: DiT | FPDM, diffusion: GaussianDiffusion, config: SamplerConfig) -> SampleRecord:
    """An empty record holding the plan and timesteps that sampling with `config` will follow."""
    plan = plan_for(model, config)
    timesteps = spaced_timesteps(plan.steps, diffusion.num_timesteps, config.spacing)
    return SampleRecord(model.config.kind, plan.to_dict(), config.to_dict(), timesteps)


def sample(model, diffusion, labels, config: SamplerConfig = SamplerConfig(), *, generator=None, device=None):
    """Run `sample_progressive` to the end: images in [-1, 1] (B, C, H, W) and the `SampleRecord`."""
    record = new_record(model, diffusion, config)
    for step in sample_progressive(model, diffusion, labels, config, generator=generator, device=device, record=record):
        x = step.x_t
    return x, record


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """(n,) class ids 0, 1, ..., C-1, 0, 1, ... (the null class id 0 for an unconditional model)."""
    return torch.arange(n) % num_classes if num_classes else torch.zeros(n, dtype=torch.long)


def sample_many(model, diffusion, labels, config: SamplerConfig = SamplerConfig(), *, seed: int = 0,
                batch_size: int = 500, device=None) -> tuple[torch.Tensor, list[SampleRecord]]:
    """Sample one image per label in batches; images (N, C, H, W) on the CPU and one record per batch.

    Batch b draws from `torch.Generator().manual_seed(seed + b)`: two models given the same labels,
    seed and batch size start from the same noise, so their images pair up one to one.
    """
    labels = torch.as_tensor(labels).reshape(-1)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images, records = [], []
    for b, y in enumerate(labels.split(batch_size)):
        x, record = sample(model, diffusion, y, config, generator=torch.Generator().manual_seed(seed + b), device=device)
        images.append(x.float().cpu())  # (b, C, H, W)
        records.append(record)
    return torch.cat(images), records


def per_image_costs(records: list[SampleRecord], n: int, batch_size: int) -> tuple[float, float]:
    """(block evaluations, FLOPs) per image over `sample_many`'s batches (they differ under `adaptive`)."""
    sizes = [min(batch_size, n - i) for i in range(0, n, batch_size)]
    return (sum(r.spent_block_evals * k for r, k in zip(records, sizes)) / n,
            sum(r.spent_flops * k for r, k in zip(records, sizes)) / n)
