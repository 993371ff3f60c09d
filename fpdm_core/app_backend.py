"""App-facing exploration: UI settings -> a validated `SamplerConfig`, FPDM and DiT at one budget, figures, text.

Everything a front end (the Gradio app, a notebook) needs, without the front end:

- `Settings` / `settings_from_ui`: raw control values -> checked settings; every invalid
  combination raises `ExploreError` with a message meant for a person.
- `list_checkpoints`, `resolve_checkpoint`, `load_cached`, `checkpoint_status`: which
  checkpoints may be chosen (only files listed in one folder, or an uploaded file) and
  read-only loaded models shared between requests (cached by path, mtime and size).
- `explore`: a generator that samples FPDM, then the DiT baseline at the same budget in
  block evaluations, yielding `Update`s with live x0-prediction grids and, at the end,
  both `SampleRecord`s and a summary. All per-request state (noise generator, solution
  reuse) lives in the generator; nothing mutable is kept on the module.
"""
from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .budget import ALLOCATIONS, CostModel
from .checkpoints import CHECKPOINT_DIR, SHIPPED, CheckpointError, load_model
from .data import FASHION_MNIST_CLASSES
from .diffusion import GaussianDiffusion
from .models import DiT, FPDM, ModelConfig
from .plots import image_grid, iterations_bar_plotly, residual_heatmap_plotly
from .sampling import METHODS, SampleRecord, SamplerConfig, new_record, sample_progressive
from .solvers import SOLVERS, NonFiniteError

CHECKPOINT_DIR_ENV = "FPDM_APP_CHECKPOINT_DIR"
CLASSIFIER_FILE = "fmnist-classifier.safetensors"  # a judge, not a generator: never offered
DEFAULT_NAMES = {kind: path.name for kind, path in SHIPPED.items()}
KIND_NAMES = {"fpdm": "FPDM", "dit": "DiT"}
WEIGHTS = ("ema", "model")  # EMA weights (what a finished run should be sampled with) or the raw training weights
TRAIN_PRESETS = {"fpdm": "FPDM-FM-M", "dit": "DiT-FM-M"}

MODE_STEPS = "steps x iterations"
MODE_BUDGET_STEPS = "budget + steps"
MODE_BUDGET = "budget (timestep smoothing)"
BUDGET_MODES = (MODE_STEPS, MODE_BUDGET_STEPS, MODE_BUDGET)
ALL_CLASSES = "all classes (cycling)"
UNCONDITIONAL = "unconditional"

MAX_IMAGES = 64
MAX_STEPS = 200
MAX_ITERATIONS = 40
MAX_BUDGET = 2000  # block evaluations per image
MAX_GUIDANCE = 20.0
MAX_SEED = 2**63 - 1
GRID_SCALE = 4  # nearest-neighbour upscaling of 28 px images for the page


class ExploreError(ValueError):
    """An invalid request, with a message for the person who made it."""


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    """What the controls ask for. `sampler_config()` turns it into a checked `SamplerConfig`."""

    budget_mode: str = MODE_STEPS
    steps: int = 10
    iterations: int = 3  # per step, used in MODE_STEPS
    budget: int = 50  # block evaluations per image, used in the budget modes
    allocation: str = "uniform"
    reuse: bool = True
    solver: str = "picard"
    tol: float = 0.0  # 0 = run the planned iterations; > 0 stops a step early
    damping: float = 1.0
    class_choice: str = ALL_CLASSES
    cfg_scale: float = 3.0  # the model card's scale: class-faithful samples from the shipped checkpoints
    seed: int = 0
    num_images: int = 10
    method: str = "ddim"

    def __post_init__(self):
        _choice("budget mode", self.budget_mode, BUDGET_MODES)
        _choice("allocation", self.allocation, ALLOCATIONS)
        _choice("solver", self.solver, SOLVERS)
        _choice("sampler", self.method, METHODS)
        if self.budget_mode != MODE_BUDGET:
            _in_range("sampling steps", self.steps, 1, MAX_STEPS)
        if self.budget_mode == MODE_STEPS:
            _in_range("iterations per step", self.iterations, 1, MAX_ITERATIONS)
        else:
            _in_range("budget (block evaluations per image)", self.budget, 1, MAX_BUDGET)
        _in_range("number of images", self.num_images, 1, MAX_IMAGES)
        _in_range("seed", self.seed, 0, MAX_SEED)
        _in_range("guidance scale", self.cfg_scale, 0.0, MAX_GUIDANCE)
        _in_range("tolerance", self.tol, 0.0, 1.0)
        if not 0.0 < self.damping <= 1.0:
            raise ExploreError(f"damping must be in (0, 1], got {self.damping}")
        if self.allocation == "adaptive" and self.tol <= 0:
            raise ExploreError("the adaptive allocation stops each step at a residual tolerance: set a tolerance > 0 "
                               "(e.g. 0.01), or choose another allocation")

    def sampler_config(self) -> SamplerConfig:
        kw = dict(allocation=self.allocation, reuse=self.reuse, solver=self.solver, tol=self.tol or None,
                  damping=self.damping, method=self.method, cfg_scale=self.cfg_scale)
        try:
            if self.budget_mode == MODE_STEPS:
                return SamplerConfig(steps=self.steps, iterations=self.iterations, **kw)
            if self.budget_mode == MODE_BUDGET_STEPS:
                return SamplerConfig(steps=self.steps, budget=self.budget, **kw)
            return SamplerConfig(budget=self.budget, **kw)
        except ValueError as e:
            raise ExploreError(str(e)) from e

    def labels(self, config: ModelConfig) -> torch.Tensor:
        """Class ids (num_images,): one class, every class in turn, or the null class."""
        names = class_names(config)
        n, k = self.num_images, config.num_classes
        if self.class_choice == UNCONDITIONAL or (self.class_choice == ALL_CLASSES and k == 0):
            return torch.full((n,), k, dtype=torch.long)
        if self.class_choice == ALL_CLASSES:
            return torch.arange(n) % k
        if self.class_choice not in names:
            raise ExploreError(f"unknown class {self.class_choice!r}; this model knows: {', '.join(names) or 'none'} "
                               f"(or '{ALL_CLASSES}', '{UNCONDITIONAL}')")
        return torch.full((n,), names.index(self.class_choice), dtype=torch.long)


def _choice(name, value, options):
    if value not in options:
        raise ExploreError(f"unknown {name} {value!r}; choose one of: {', '.join(map(str, options))}")


def _in_range(name, value, lo, hi):
    if not lo <= value <= hi:
        raise ExploreError(f"{name} must be between {lo} and {hi}, got {value}")


def _as_int(name, value) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ExploreError(f"{name} must be a whole number, got {value!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise ExploreError(f"{name} must be a whole number, got {value!r}")
    return int(f)


def _as_float(name, value) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ExploreError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(f):
        raise ExploreError(f"{name} must be a finite number, got {value!r}")
    return f


def settings_from_ui(*, budget_mode, steps, iterations, budget, allocation, reuse, solver, tol, damping=1.0,
                     class_choice=ALL_CLASSES, cfg_scale=3.0, seed=0, num_images=10, method="ddim") -> Settings:
    """Raw control values (sliders send floats, cleared boxes None) -> `Settings`, or `ExploreError`.

    A control the chosen budget mode does not use may be empty.
    """
    d = Settings()
    if budget_mode == MODE_STEPS and budget in (None, ""):
        budget = d.budget
    if budget_mode != MODE_STEPS and iterations in (None, ""):
        iterations = d.iterations
    if budget_mode == MODE_BUDGET and steps in (None, ""):
        steps = d.steps
    return Settings(
        budget_mode=budget_mode, steps=_as_int("sampling steps", steps),
        iterations=_as_int("iterations per step", iterations),
        budget=_as_int("budget", budget), allocation=allocation, reuse=bool(reuse), solver=str(solver).lower(),
        tol=_as_float("tolerance", 0.0 if tol is None else tol), damping=_as_float("damping", damping),
        class_choice=class_choice, cfg_scale=_as_float("guidance scale", cfg_scale), seed=_as_int("seed", seed),
        num_images=_as_int("number of images", num_images), method=method)


def class_names(config: ModelConfig) -> tuple[str, ...]:
    """Fashion-MNIST names for a 10-class 28x28 grey model, else 'class i'."""
    if config.num_classes == 10 and config.input_size == 28 and config.in_channels == 1:
        return FASHION_MNIST_CLASSES
    return tuple(f"class {i}" for i in range(config.num_classes))


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_dir(explicit: str | Path | None = None) -> Path:
    """`explicit`, else $FPDM_APP_CHECKPOINT_DIR, else the kit's checkpoints folder."""
    import os

    return Path(explicit or os.environ.get(CHECKPOINT_DIR_ENV) or CHECKPOINT_DIR)


def list_checkpoints(folder: str | Path) -> list[str]:
    """File names of `*.safetensors` in `folder` (not the classifier); the only names a user may pick."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.glob("*.safetensors") if p.is_file() and p.name != CLASSIFIER_FILE)


def missing_help(kind: str, folder: Path) -> str:
    name, preset = DEFAULT_NAMES[kind], TRAIN_PRESETS[kind]
    return (f"No {KIND_NAMES[kind]} checkpoint `{name}` in `{folder}`. Train one with "
            f"`python -m fpdm_core.train --run-dir runs/{preset} --model {preset} --max-minutes 90`, then copy "
            f"`runs/{preset}/checkpoint.safetensors` to `{folder / name}` (or start the app with "
            f"`--checkpoint-dir` / ${CHECKPOINT_DIR_ENV} pointing at your checkpoints), or pick or upload another "
            f"checkpoint under *Checkpoints*.")


def resolve_checkpoint(kind: str, folder: str | Path, choice: str | None = None, upload: str | None = None) -> Path:
    """The file to load for slot `kind` ("fpdm" or "dit"): an uploaded file, else a name listed in `folder`.

    A name is accepted only if `list_checkpoints(folder)` lists it, so no other server path can be reached.
    """
    folder = Path(folder)
    if upload:
        path = Path(upload)
        if path.suffix != ".safetensors" or not path.is_file():
            raise ExploreError(f"the uploaded file {path.name!r} is not a .safetensors checkpoint")
        return path
    name = choice or DEFAULT_NAMES[kind]
    if name not in list_checkpoints(folder):
        if name == DEFAULT_NAMES[kind]:
            raise ExploreError(missing_help(kind, folder))
        raise ExploreError(f"{name!r} is not one of the checkpoints in `{folder}`: "
                           f"{', '.join(list_checkpoints(folder)) or 'there are none'}")
    return folder / name


@dataclass(frozen=True)
class Loaded:
    """A read-only model shared between requests, with its checkpoint's metadata."""

    model: DiT | FPDM
    meta: dict
    path: Path

    def describe(self) -> str:
        c = self.model.config
        shape = f"{c.pre_depth} pre + fixed-point + {c.post_depth} post blocks" if c.kind == "fpdm" else f"depth {c.depth}"
        step = self.meta.get("step")
        trained = f", trained {step} steps" if step is not None else ""
        return (f"`{self.path.name}`: {KIND_NAMES[c.kind]}, hidden {c.hidden_size}, {shape}, "
                f"{c.num_tokens} tokens, {c.num_classes} classes{trained}")


_LOAD_LOCK = threading.Lock()


@functools.lru_cache(maxsize=6)
def _load(path: str, mtime_ns: int, size: int, device: str, weights: str) -> Loaded:
    import json

    from safetensors import safe_open

    model = load_model(path, weights=weights, device=device).requires_grad_(False)
    with safe_open(path, "pt") as f:
        meta = json.loads((f.metadata() or {}).get("fpdm", "{}"))
    return Loaded(model, meta, Path(path))


def load_cached(path: str | Path, device: str = "cpu", weights: str = "ema") -> Loaded:
    """Load (once per path, mtime, size, device and weights) a checkpoint's model; CheckpointError -> ExploreError.

    weights: "ema" (falls back to the raw weights if the file has no EMA) or "model".
    """
    _choice("weights", weights, WEIGHTS)
    path = Path(path)
    try:
        st = path.stat()
        with _LOAD_LOCK:
            return _load(str(path.resolve()), st.st_mtime_ns, st.st_size, str(device), weights)
    except FileNotFoundError as e:
        raise ExploreError(f"checkpoint {path.name} does not exist") from e
    except (CheckpointError, OSError, ValueError) as e:
        raise ExploreError(f"could not load checkpoint {path.name}: {e}") from e


def load_slot(kind: str, folder: str | Path, choice: str | None = None, upload: str | None = None,
              device: str = "cpu", weights: str = "ema") -> Loaded:
    """Resolve and load the model for slot `kind`, checking that it is of that kind."""
    loaded = load_cached(resolve_checkpoint(kind, folder, choice, upload), device, weights)
    if loaded.model.config.kind != kind:
        raise ExploreError(f"{loaded.path.name} holds a {KIND_NAMES[loaded.model.config.kind]} model, "
                           f"but the {KIND_NAMES[kind]} slot needs a {KIND_NAMES[kind]} checkpoint")
    return loaded


def checkpoint_status(folder: str | Path, fpdm_choice: str | None = None, dit_choice: str | None = None,
                      device: str = "cpu", weights: str = "ema") -> str:
    """Markdown: what each slot would load, or why it cannot (missing checkpoint: how to train one)."""
    lines = []
    for kind, choice in (("fpdm", fpdm_choice), ("dit", dit_choice)):
        label = "FPDM" if kind == "fpdm" else "DiT baseline"
        try:
            lines.append(f"- **{label}**: {load_slot(kind, folder, choice, device=device, weights=weights).describe()}")
        except ExploreError as e:
            lines.append(f"- **{label}**: **missing or unusable.** {e}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- running
@dataclass
class Update:
    """One refresh of the page: live grids while sampling, records and a summary at the end."""

    stage: str  # "fpdm" | "dit" | "done"
    progress: float  # 0..1 over both runs
    message: str  # one status line
    fpdm_grid: np.ndarray | None = None  # uint8 (H, W) or (H, W, 3)
    dit_grid: np.ndarray | None = None
    fpdm_record: SampleRecord | None = None
    dit_record: SampleRecord | None = None
    summary: str = ""
    notes: list[str] = field(default_factory=list)


def grid_columns(n: int) -> int:
    return n if n <= 5 else 5 if n <= 20 else math.ceil(math.sqrt(n))


def to_grid(images: torch.Tensor, scale: int = GRID_SCALE) -> np.ndarray:
    """Images in [-1, 1] (B, C, H, W) -> one uint8 grid, upscaled `scale` x (nearest)."""
    g = image_grid(images, nrow=grid_columns(images.shape[0]))
    return np.ascontiguousarray(g.repeat(scale, axis=0).repeat(scale, axis=1))


def dit_baseline_steps(dit_config: ModelConfig, budget: int) -> int:
    """How many DiT steps fit `budget` block evaluations (0 if not even one)."""
    return budget // CostModel.of(dit_config).explicit_blocks


def _compatible(a: ModelConfig, b: ModelConfig) -> str | None:
    for key in ("input_size", "in_channels", "num_classes"):
        if getattr(a, key) != getattr(b, key):
            return f"{key} differs (FPDM {getattr(a, key)}, DiT {getattr(b, key)})"
    return None


def explore(fpdm: FPDM, dit: DiT | None, settings: Settings, *, device: str | torch.device = "cpu",
            max_updates: int = 20, dit_note: str | None = None) -> Iterator[Update]:
    """Sample FPDM with `settings`, then DiT with the steps that fit the same budget; yield page updates.

    The same seed gives both models the same initial noise and labels. `dit` may be None
    (then `dit_note` says why). Raises ExploreError for an impossible plan or a diverging solver.
    """
    config = settings.sampler_config()
    labels = settings.labels(fpdm.config)
    diffusion = GaussianDiffusion().to(device)
    try:
        record = new_record(fpdm, diffusion, config)
    except ValueError as e:
        raise ExploreError(f"cannot plan this run: {e}") from e
    budget = record.plan["budget"]
    notes = [dit_note] if dit_note else []
    dit_config = dit_steps = None
    if dit is not None:
        why = _compatible(fpdm.config, dit.config)
        if why:
            notes.append(f"The DiT checkpoint does not match the FPDM one ({why}): no baseline.")
            dit = None
        else:
            dit_steps = dit_baseline_steps(dit.config, budget)
            if dit_steps == 0:
                notes.append(f"The budget ({budget} block evaluations per image) is below one DiT step "
                             f"(depth {dit.config.depth}): no DiT baseline at this budget.")
                dit = None
            else:
                dit_config = replace(config, steps=min(dit_steps, diffusion.num_timesteps), budget=budget)
    total = record.plan["steps"] + (dit_config.steps if dit is not None else 0)

    fpdm_grid = dit_grid = None
    every = max(1, math.ceil(record.plan["steps"] / max_updates))
    gen = torch.Generator().manual_seed(settings.seed)
    try:
        for step in sample_progressive(fpdm, diffusion, labels, config, generator=gen, device=device, record=record):
            n = step.index + 1
            if n % every == 0 or n == record.plan["steps"]:
                fpdm_grid = to_grid(step.x0_pred if n < record.plan["steps"] else step.x_t)
                yield Update("fpdm", n / total, f"FPDM step {n}/{record.plan['steps']} (t={step.record.t}, "
                             f"{step.record.iterations} iterations)", fpdm_grid, None, record, None, notes=notes)
    except NonFiniteError as e:
        raise ExploreError(f"FPDM diverged: {e}") from e
    except ValueError as e:
        raise ExploreError(f"FPDM sampling failed: {e}") from e

    dit_record = None
    if dit is not None:
        dit_record = new_record(dit, diffusion, dit_config)
        every = max(1, math.ceil(dit_config.steps / max_updates))
        gen = torch.Generator().manual_seed(settings.seed)
        try:
            for step in sample_progressive(dit, diffusion, labels, dit_config, generator=gen, device=device,
                                           record=dit_record):
                n = step.index + 1
                if n % every == 0 or n == dit_config.steps:
                    dit_grid = to_grid(step.x0_pred if n < dit_config.steps else step.x_t)
                    yield Update("dit", (record.plan["steps"] + n) / total, f"DiT step {n}/{dit_config.steps}",
                                 fpdm_grid, dit_grid, record, dit_record, notes=notes)
        except NonFiniteError as e:
            raise ExploreError(f"DiT diverged: {e}") from e
        except ValueError as e:
            raise ExploreError(f"DiT sampling failed: {e}") from e
    default_depth = CostModel.of(dit.config if dit is not None else _nominal_dit()).explicit_blocks
    yield Update("done", 1.0, "done", fpdm_grid, dit_grid, record, dit_record,
                 summary_markdown(record, dit_record, settings, dit_depth=default_depth, dit_loaded=dit is not None,
                                  notes=notes), notes)


def _nominal_dit() -> ModelConfig:
    from .models import PRESETS

    return PRESETS[TRAIN_PRESETS["dit"]]


# ----------------------------------------------------------------------------- figures and text
def residual_figure(record: SampleRecord):
    fig = residual_heatmap_plotly(record, title="FPDM relative residual ||f(z)-z|| / ||f(z)|| (log10)")
    fig.update_layout(height=380)
    return fig


def iterations_figure(record: SampleRecord):
    fig = iterations_bar_plotly(record, title="FPDM fixed-point iterations per timestep")
    fig.update_layout(height=380)
    return fig


def _gflops(x: float) -> str:
    return f"{x / 1e9:.3g}"


def summary_markdown(fpdm: SampleRecord, dit: SampleRecord | None, settings: Settings, *, dit_depth: int,
                     dit_loaded: bool = True, notes: list[str] | None = None) -> str:
    """Budget table (block evaluations, FLOPs, DiT-step equivalent) and solver facts, as Markdown."""
    plan = fpdm.plan
    spent = fpdm.spent_block_evals
    its = [s.iterations for s in fpdm.steps]
    depth_note = "" if dit_loaded else f" (nominal DiT depth {dit_depth}: no DiT loaded)"
    rows = [
        "| per image | steps | iterations / step | block evaluations | GFLOPs | DiT-step equivalent |",
        "|---|---|---|---|---|---|",
        f"| **FPDM** | {len(fpdm.steps)} | {min(its)}-{max(its)} ({plan['allocation']}) | {spent} of {plan['budget']} "
        f"| {_gflops(fpdm.spent_flops)} | {spent / dit_depth:.2f}{depth_note} |",
    ]
    if dit is not None:
        rows.append(f"| **DiT** | {len(dit.steps)} | - (depth {dit_depth}) | {dit.spent_block_evals} of {plan['budget']} "
                    f"| {_gflops(dit.spent_flops)} | {dit.spent_block_evals / dit_depth:.2f} |")
    finals = [s.rel_trace[-1] for s in fpdm.steps if s.rel_trace]
    firsts = [s.rel_trace[0] for s in fpdm.steps if s.rel_trace]
    converged = sum(s.converged for s in fpdm.steps)
    lines = ["\n".join(rows)]
    lines.append(f"**Plan**: {plan['rule']}; {settings.solver} solver, reuse {'on' if settings.reuse else 'off'}"
                 + (f", tolerance {settings.tol:g} ({converged}/{len(fpdm.steps)} steps converged)" if settings.tol else "")
                 + ".")
    if finals:
        lines.append(f"**Relative residual**: first iteration median {np.median(firsts):.3g}, "
                     f"last iteration median {np.median(finals):.3g} (max {max(finals):.3g}).")
    n = settings.num_images * (2 if settings.cfg_scale != 1.0 else 1)
    lines.append(f"Costs are per image; this batch ran {n} model rows"
                 + (" (guidance doubles the batch)" if settings.cfg_scale != 1.0 else "")
                 + f", {_gflops(fpdm.spent_flops * n)} GFLOPs for FPDM in all. One fixed-point iteration costs "
                 "more FLOPs than one DiT block (projection MLP + block).")
    lines += [f"**Note:** {note}" for note in notes or []]
    return "\n\n".join(lines)


def label_caption(settings: Settings, config: ModelConfig) -> str:
    names = class_names(config)
    ids = settings.labels(config).tolist()
    shown = [names[i] if i < len(names) else UNCONDITIONAL for i in ids]
    cols = grid_columns(len(ids))
    rows = [", ".join(shown[r:r + cols]) for r in range(0, len(shown), cols)]
    return "Classes, row by row: " + " | ".join(rows)
