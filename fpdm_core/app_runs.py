"""The app's runs: FPDM, then DiT at the same budget (`explore`), or two FPDM runs differing in one setting
(`compare`), as generators of `Update`s (live grids, progress with an estimate of the time left, x0-prediction
frames per step, records). Per-request state lives in the generator; `check_work` caps one request at
`app_settings.MAX_WORK`. No Gradio in here.
"""
from __future__ import annotations

import ctypes
import gc
import math
import time
from dataclasses import dataclass, field, replace
from typing import Iterator

import numpy as np
import torch

from .app_figures import compare_markdown, grid_columns, summary_markdown
from .app_settings import MAX_WORK, ExploreError, Settings, plural, short_repr
from .budget import ALLOCATIONS, NUM_TIMESTEPS, CostModel
from .diffusion import DiffusionConfig, GaussianDiffusion
from .models import PRESETS, DiT, FPDM, ModelConfig
from .plots import image_grid
from .sampling import SampleRecord, SamplerConfig, new_record, sample_progressive
from .solvers import NonFiniteError

COMPARE_REUSE = "solution reuse on vs off"
COMPARE_ALLOCATIONS = "two allocations"
COMPARISONS = (COMPARE_REUSE, COMPARE_ALLOCATIONS)
GRID_SCALE = 4  # nearest-neighbour upscaling of 28 px images for the page
STRIP_IMAGES = 4  # images per frame of the denoising strip, 2 x 2 (a square frame)
STRIP_SCALE = 2
NOMINAL_DIT = "DiT-FM-M"  # its depth prices "DiT steps" when no DiT checkpoint is loaded


RELEASE_AFTER_WORK = 2_000  # block evaluations x images: below this a request leaves little to give back


def release_memory(work: int) -> None:
    """After a request of `work` block evaluations x images, give freed memory back to the operating system
    (glibc keeps it otherwise). Small requests skip it: a full garbage collection costs more than they hold."""
    if work < RELEASE_AFTER_WORK:
        return
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


# ----------------------------------------------------------------------------- running
@dataclass
class Update:
    """One refresh of the page: progress with an estimate, live grids, and at the end records, frames, text."""

    stage: str  # "fpdm" | "dit" | "done" (compare: "a" | "b" | "done")
    progress: float  # 0..1 of the request's FLOPs
    message: str  # one status line
    elapsed_s: float = 0.0
    left_s: float | None = None  # None until one step has been timed
    refreshed: bool = True  # grids changed since the last update
    fpdm_grid: np.ndarray | None = None  # uint8 (H, W) or (H, W, 3)
    dit_grid: np.ndarray | None = None
    fpdm_record: SampleRecord | None = None
    dit_record: SampleRecord | None = None
    fpdm_frames: list = field(default_factory=list)  # [(uint8 frame, caption)] one per step
    dit_frames: list = field(default_factory=list)
    summary: str = ""
    dit_note: str = ""  # why the DiT panel is empty, if it is
    notes: list[str] = field(default_factory=list)


def to_grid(images: torch.Tensor, scale: int = GRID_SCALE, columns: int | None = None) -> np.ndarray:
    """Images in [-1, 1] (B, C, H, W) -> one uint8 grid, upscaled `scale` x (nearest neighbour)."""
    g = image_grid(images, nrow=columns or grid_columns(images.shape[0]))
    return np.ascontiguousarray(g.repeat(scale, axis=0).repeat(scale, axis=1))


def strip_frame(x0_pred: torch.Tensor) -> np.ndarray:
    """The first `STRIP_IMAGES` x0 predictions (B, C, H, W) of one step as one square frame."""
    return to_grid(x0_pred[:STRIP_IMAGES].float(), STRIP_SCALE, columns=math.isqrt(STRIP_IMAGES))


def dit_baseline_steps(dit_config: ModelConfig, budget: int) -> int:
    """How many DiT steps fit `budget` block evaluations (0 if not even one)."""
    return budget // CostModel.of(dit_config).explicit_blocks


def _compatible(a: ModelConfig, b: ModelConfig) -> str | None:
    for key in ("input_size", "in_channels", "num_classes"):
        if getattr(a, key) != getattr(b, key):
            return f"{key} differs (FPDM {getattr(a, key)}, DiT {getattr(b, key)})"
    return None


def _plan_flops(model, record: SampleRecord) -> float:
    cost = CostModel.of(model.config)
    return sum(cost.step_flops(k) for k in record.plan["iterations"])


def check_work(per_image: int, num_images: int, what: str) -> None:
    """Refuse a request whose block evaluations x images exceed `MAX_WORK`, saying how to stay under it."""
    work = per_image * num_images
    if work > MAX_WORK:
        fit = max(1, MAX_WORK // max(1, per_image))
        raise ExploreError(
            f"this request needs {work:,} block evaluations x images ({what}: {per_image} per image x "
            f"{plural(num_images, 'image')}); the app's cap is {MAX_WORK:,}. Use at most {plural(fit, 'image')} "
            f"at this budget, or fewer sampling steps / iterations per step / a smaller budget")


class _Clock:
    """Elapsed time and a time-left estimate from the FLOPs done so far (the rate measured in this request)."""

    def __init__(self, total_flops: float):
        self.start, self.total, self.done = time.perf_counter(), total_flops, 0.0

    def tick(self, flops: float) -> tuple[float, float, float | None]:
        self.done += flops
        elapsed = time.perf_counter() - self.start
        left = elapsed / self.done * (self.total - self.done) if self.done > 0 else None
        return min(1.0, self.done / self.total), elapsed, left


def _sample(model, diffusion, labels, config: SamplerConfig, record: SampleRecord, seed: int, device, who: str,
            clock: _Clock, max_updates: int) -> Iterator[tuple]:
    """Run one model; yield (progress, elapsed, left, step, refreshed, grid or None, frames) after every step."""
    steps = record.plan["steps"]
    every = max(1, math.ceil(steps / max_updates))
    gen = torch.Generator().manual_seed(seed)
    frames = []
    try:
        for step in sample_progressive(model, diffusion, labels, config, generator=gen, device=device, record=record):
            n = step.index + 1
            frames.append((strip_frame(step.x0_pred.cpu()), f"t={step.record.t}"  # K: fixed-point iterations
                           + (f", K={step.record.iterations}" if who != "DiT" else "")))
            refreshed = n % every == 0 or n == steps
            grid = to_grid((step.x_t if n == steps else step.x0_pred).cpu()) if refreshed else None
            yield (*clock.tick(step.record.flops), step, refreshed, grid, frames)
    except NonFiniteError as e:
        raise ExploreError(f"{who} diverged: {e}") from None
    except ValueError as e:
        raise ExploreError(f"{who} sampling failed: {e}") from None


def _progress_message(who: str, step, total_steps: int) -> str:
    its = "" if who == "DiT" else f", {plural(step.record.iterations, 'iteration')}"
    return f"{who} step {step.index + 1} of {total_steps} (t = {step.record.t}{its})"


def explore(fpdm: FPDM, dit: DiT | None, settings: Settings, *, device: str | torch.device = "cpu",
            max_updates: int = 20, dit_note: str | None = None,
            diffusion_config: DiffusionConfig = DiffusionConfig(),
            dit_diffusion_config: DiffusionConfig | None = None) -> Iterator[Update]:
    """Sample FPDM with `settings`, then DiT with the steps that fit the same budget; yield an update per step.

    Each model samples with its own diffusion process (`Loaded.diffusion`; DiT's defaults to FPDM's).
    The same seed gives both models the same initial noise and labels. `dit` may be None
    (then `dit_note` says why). Grids refresh at most `max_updates` times per model. Raises
    ExploreError for an impossible plan, too much work, or a diverging solver.
    """
    config = settings.config
    labels = settings.labels(fpdm.config)
    diffusion = GaussianDiffusion.from_config(diffusion_config).to(device)  # FPDM's (`Loaded.diffusion`)
    dit_diffusion = GaussianDiffusion.from_config(dit_diffusion_config or diffusion_config).to(device)
    try:
        record = new_record(fpdm, diffusion, config)
    except ValueError as e:
        raise ExploreError(f"cannot plan this run: {e}") from None
    budget = record.plan["budget"]
    notes, panel_note = [], dit_note or ""
    dit_loaded = dit is not None
    dit_config, dit_depth = None, CostModel.of(dit.config if dit is not None else _nominal_dit()).explicit_blocks
    if dit is not None:
        why = _compatible(fpdm.config, dit.config)
        if why:
            panel_note = f"The DiT checkpoint does not match the FPDM one ({why}): no baseline."
            dit = None
        elif dit_baseline_steps(dit.config, budget) == 0:
            panel_note = (f"No DiT sample at this budget: one DiT step costs {dit_depth} block evaluations per image "
                          f"(its depth), and this budget is {budget}. Raise the budget to at least {dit_depth} to "
                          f"see DiT.")
            dit = None
        else:
            steps = min(dit_baseline_steps(dit.config, budget), dit_diffusion.num_timesteps, NUM_TIMESTEPS)
            dit_config = replace(config, steps=steps, iterations=None, budget=budget)
    if panel_note:
        notes.append(panel_note)
    dit_record = new_record(dit, dit_diffusion, dit_config) if dit is not None else None
    check_work(budget + (dit_record.plan["steps"] * dit_depth if dit_record else 0), settings.num_images,
               "FPDM + DiT" if dit_record else "FPDM")
    clock = _Clock(_plan_flops(fpdm, record) + (_plan_flops(dit, dit_record) if dit_record else 0.0))

    fpdm_grid = dit_grid = None
    fpdm_frames: list = []
    dit_frames: list = []
    for progress, elapsed, left, step, refreshed, grid, fpdm_frames in _sample(
            fpdm, diffusion, labels, config, record, settings.seed, device, "FPDM", clock, max_updates):
        fpdm_grid = grid if grid is not None else fpdm_grid
        yield Update("fpdm", progress, _progress_message("FPDM", step, record.plan["steps"]), elapsed, left, refreshed,
                     fpdm_grid, None, record, None, dit_note=panel_note, notes=notes)
    if dit_record is not None:
        for progress, elapsed, left, step, refreshed, grid, dit_frames in _sample(
                dit, dit_diffusion, labels, dit_config, dit_record, settings.seed, device, "DiT", clock, max_updates):
            dit_grid = grid if grid is not None else dit_grid
            yield Update("dit", progress, _progress_message("DiT", step, dit_record.plan["steps"]), elapsed, left,
                         refreshed, fpdm_grid, dit_grid, record, dit_record, notes=notes)
    summary = summary_markdown(record, dit_record, settings, dit_depth=dit_depth, dit_loaded=dit_loaded, notes=notes)
    yield Update("done", 1.0, "done", time.perf_counter() - clock.start, 0.0, True, fpdm_grid, dit_grid, record,
                 dit_record, fpdm_frames, dit_frames, summary, panel_note, notes)


def comparison_variants(settings: Settings, comparison: str, allocation_b: str = "increasing") -> list[tuple[str, Settings]]:
    """The two runs of a one-click comparison: same budget, seed and everything else."""
    if not isinstance(comparison, str) or comparison not in COMPARISONS:
        raise ExploreError(f"unknown comparison {short_repr(comparison)}; choose one of: {', '.join(COMPARISONS)}")
    if comparison == COMPARE_REUSE:
        return [("reuse on", settings.with_sampler(reuse=True)), ("reuse off", settings.with_sampler(reuse=False))]
    if not isinstance(allocation_b, str) or allocation_b not in ALLOCATIONS:
        raise ExploreError(f"unknown second allocation {short_repr(allocation_b)}; choose one of: {', '.join(ALLOCATIONS)}")
    first = settings.config.allocation
    if allocation_b == first:
        raise ExploreError(f"second allocation is the same as the first ({allocation_b}): choose another one")
    b = settings.with_sampler(allocation=allocation_b)  # re-checked: adaptive needs a tolerance
    return [(f"{first} allocation", settings), (f"{allocation_b} allocation", b)]


def compare(fpdm: FPDM, variants: list[tuple[str, Settings]], *, device: str | torch.device = "cpu",
            max_updates: int = 10, diffusion_config: DiffusionConfig = DiffusionConfig()) -> Iterator[Update]:
    """Sample FPDM once per variant (same seed, same budget); yield updates, then both records and grids.

    In the updates, `fpdm_*` holds the first variant and `dit_*` the second (the page's two panels).
    """
    diffusion = GaussianDiffusion.from_config(diffusion_config).to(device)  # FPDM's (`Loaded.diffusion`)
    runs = []
    for label, s in variants:
        config = s.config
        try:
            runs.append((label, s, config, new_record(fpdm, diffusion, config)))
        except ValueError as e:
            raise ExploreError(f"cannot plan the {label} run: {e}") from None
    check_work(sum(r[3].plan["budget"] for r in runs), variants[0][1].num_images, "both compared runs")
    clock = _Clock(sum(_plan_flops(fpdm, r[3]) for r in runs))
    grids, frames = [None, None], [[], []]
    for i, (label, s, config, record) in enumerate(runs):
        for progress, elapsed, left, step, refreshed, grid, frames[i] in _sample(
                fpdm, diffusion, s.labels(fpdm.config), config, record, s.seed, device, f"FPDM ({label})", clock,
                max_updates):
            grids[i] = grid if grid is not None else grids[i]
            yield Update("ab"[i], progress, _progress_message(f"FPDM ({label})", step, record.plan["steps"]), elapsed,
                         left, refreshed, grids[0], grids[1], runs[0][3], runs[1][3] if i else None)
    summary = compare_markdown([(label, record) for label, _, _, record in runs])
    yield Update("done", 1.0, "done", time.perf_counter() - clock.start, 0.0, True, grids[0], grids[1], runs[0][3],
                 runs[1][3], frames[0], frames[1], summary)


def _nominal_dit() -> ModelConfig:
    return PRESETS[NOMINAL_DIT]


def progress_text(u: Update) -> str:
    """'FPDM step 3 of 10 (...) · 0.4 s elapsed, about 0.9 s left' from an update."""
    if u.stage == "done":
        return f"done in {_seconds(u.elapsed_s)}"
    left = "estimating the time left" if u.left_s is None else f"about {_seconds(u.left_s)} left"
    return f"{u.message} · {_seconds(u.elapsed_s)} elapsed, {left}"


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} min {int(s % 60)} s"

