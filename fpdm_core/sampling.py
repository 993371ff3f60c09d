"""Budgeted sampling for DiT and FPDM, with a record of what each step spent.

`sample_progressive` yields after every denoising step (for live apps and notebooks);
`sample` runs it to the end. Solution reuse state lives in the loop, never on the model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterator, NamedTuple

import torch

from .budget import ALLOCATIONS, NUM_TIMESTEPS, SMOOTHING_MIN_ITERATIONS, CostModel, Plan, make_plan
from .devices import PRECISIONS, autocast
from .diffusion import SPACINGS, STEP_METHODS, GaussianDiffusion, spaced_timesteps
from .models import LIMITS as MODEL_LIMITS, DiT, FPDM
from .options import check_fields, option, options_of
from .solvers import SOLVERS, STOP_MODES, NonFiniteError

# Fixed-point iterations per step, however they are asked for (directly, or planned from a budget): a map that
# halves the residual per iteration (the shipped FPDM's) reaches float32 precision in about 25.
MAX_ITERATIONS = 100
UNBUDGETED_STEPS, UNBUDGETED_ITERATIONS = 20, 6  # (steps, iterations) when neither a budget nor they are given
MAX_CFG_SCALE = 10.0  # guidance beyond this saturates the images


@dataclass(frozen=True)
class SamplerConfig:
    """How to sample. Give (steps, iterations), (budget, steps) or a budget alone.

    Every field is declared once (`fpdm_core.options`): the checks below, the sample CLI's flags and
    the app's controls all come from these declarations.
    """

    steps: int | None = option(
        None, f"denoising steps ({UNBUDGETED_STEPS} without a budget; a budget alone picks them by timestep "
              "smoothing)", lo=1, hi=NUM_TIMESTEPS, label="sampling steps", app="main")
    iterations: int | None = option(
        None, f"FPDM fixed-point iterations per step ({UNBUDGETED_ITERATIONS} without a budget; not with a budget)",
        lo=1, hi=MAX_ITERATIONS, when=("budget", None), label="iterations per step", app="main")
    budget: int | None = option(
        None, "block evaluations per image (with it, the budget decides the iterations)", lo=1,
        label="budget (block evaluations per image)", app="main")
    allocation: str = option(
        "uniform", "how a budget's iterations spread over the steps: increasing = more at high noise; adaptive "
                   "stops each step at the tolerance and needs one", choices=ALLOCATIONS,
        label="allocation across timesteps", app="main")
    min_iterations: int = option(
        SMOOTHING_MIN_ITERATIONS, "timestep smoothing (a budget alone): fixed-point iterations each step keeps",
        lo=1, hi=MAX_ITERATIONS, label="smoothing: iterations per step")
    reuse: bool = option(True, "start each step's solve at the previous step's fixed point", label="solution reuse",
                         app="main")
    solver: str = option("picard", "fixed-point solver", choices=SOLVERS, label="solver", app="main")
    tol: float | None = option(
        None, "stop a step early at this residual (unset: run every planned iteration)", lo=0.0, lo_open=True,
        label="tolerance", app="main")
    stop_mode: str = option("rel", "residual the tolerance applies to: rel = |f(z) - z| / |f(z)|, abs = |f(z) - z|",
                            choices=STOP_MODES, label="stop mode")
    damping: float = option(1.0, "Picard damping (1 = plain iteration)", lo=0.0, hi=1.0, lo_open=True,
                            when=("solver", "picard"), ui_step=0.05, label="damping")
    anderson_m: int = option(5, "Anderson: iterates kept in the history", lo=1, hi=MAX_ITERATIONS,
                             when=("solver", "anderson"), label="Anderson history")
    step: str = option("ddim", "reverse step: ddim (deterministic at eta 0) or ddpm (ancestral)",
                       choices=STEP_METHODS, label="reverse step")
    eta: float = option(0.0, "DDIM noise (0 = deterministic)", lo=0.0, hi=1.0, when=("step", "ddim"), ui_step=0.1,
                        label="DDIM eta")
    spacing: str = option("trailing", "timestep spacing (trailing: the first step at t = T-1, Lin et al. 2024)",
                          choices=SPACINGS, label="timestep spacing")
    cfg_scale: float = option(3.0, "classifier-free guidance scale (1 = none; 3 is the kit's headline setting)",
                              lo=0.0, hi=MAX_CFG_SCALE, ui_step=0.5, label="guidance scale", app="main")
    cfg_channels: int | None = option(
        None, "guide only the first K channels (DiT's quirk: 3; unset: all)", lo=1, hi=MODEL_LIMITS["in_channels"],
        label="guided channels")
    clip_x0: bool = option(True, "clip the predicted clean image to [-1, 1]", label="clip x0")
    precision: str = option("fp32", "autocast precision (auto: bf16 where the hardware runs it fast)",
                            choices=PRECISIONS, label="precision")

    def __post_init__(self):
        if self.budget is None:
            object.__setattr__(self, "steps", UNBUDGETED_STEPS if self.steps is None else self.steps)
            object.__setattr__(self, "iterations", UNBUDGETED_ITERATIONS if self.iterations is None else self.iterations)
        else:
            object.__setattr__(self, "iterations", None)
        check_fields(self)
        if self.allocation == "adaptive" and self.tol is None:
            raise ValueError("allocation 'adaptive' needs a residual tolerance `tol` (e.g. 1e-3)")

    @classmethod
    def from_dict(cls, d: dict) -> "SamplerConfig":
        """A config from `to_dict()`'s output, also as older records wrote it ("method" for `step`)."""
        d = dict(d)
        if "method" in d and "step" not in d:
            d["step"] = d.pop("method")
        unknown = sorted(set(d) - set(options_of(cls)))
        if unknown:
            raise ValueError(f"unknown sampler settings {unknown}; known: {', '.join(options_of(cls))}")
        return cls(**d)

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


def plan_for(model: DiT | FPDM, config: SamplerConfig, num_timesteps: int) -> Plan:
    """The plan `config` asks of `model` under a diffusion of `num_timesteps` (at most that many steps); ValueError
    for a budget that gives a step more than MAX_ITERATIONS."""
    plan = make_plan(CostModel.of(model.config), steps=config.steps, iterations=config.iterations,
                     budget=config.budget, allocation=config.allocation, min_iterations=config.min_iterations,
                     num_timesteps=num_timesteps)
    most = max(plan.iterations, default=0)
    if most > MAX_ITERATIONS:
        fits = plan.budget - sum(plan.iterations) + plan.steps * MAX_ITERATIONS  # the explicit blocks, then the cap
        raise ValueError(f"budget {plan.budget} plans {most} fixed-point iterations for a step, more than the limit "
                         f"{MAX_ITERATIONS}: lower the budget to at most {fits} for {plan.steps} steps")
    return plan


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
    solver_kw = dict(solver=config.solver, stop_mode=config.stop_mode, damping=config.damping, anderson_m=config.anderson_m)
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
        if config.step == "ddim":
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
    plan = plan_for(model, config, diffusion.num_timesteps)
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
