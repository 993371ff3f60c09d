"""The app's back end: UI values -> checked settings, sampling FPDM and DiT at one budget, comparisons,
and the page's figures and text. No Gradio in here (the landscape panel: `app_landscape`).

- Limits: `LIMITS` declares every numeric control once (label, range); the page builds its sliders
  from it and `settings_from_ui` enforces it, with `MAX_WORK` capping the work of one request.
- `settings_from_ui`: raw control values -> `Settings`, or `ExploreError` naming the field. Controls
  the chosen mode does not use are ignored, whatever they hold.
- Checkpoints: `list_checkpoints`, `resolve_checkpoint`, `load_cached`, `load_upload`: only files
  listed in one folder, or an upload loaded once into memory; messages never show server paths.
- `explore` / `compare`: generators yielding `Update`s (live grids, progress with an estimate of the
  time left, x0-prediction frames per step, records). Per-request state lives in the generator.
"""
from __future__ import annotations

import ctypes
import functools
import gc
import json
import math
import numbers
import re
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import assets
from .budget import ALLOCATIONS, CostModel
from .checkpoints import SHIPPED, CheckpointError, load_model, stored_diffusion
from .data import FASHION_MNIST_CLASSES
from .diffusion import DiffusionConfig, GaussianDiffusion
from .models import DiT, FPDM, ModelConfig
from .plots import image_grid, residual_matrix
from .sampling import METHODS, SampleRecord, SamplerConfig, new_record, sample_progressive
from .solvers import SOLVERS, NonFiniteError

CHECKPOINT_DIR_ENV = assets.ENV_VAR
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
COMPARE_REUSE = "solution reuse on vs off"
COMPARE_ALLOCATIONS = "two allocations"
COMPARISONS = (COMPARE_REUSE, COMPARE_ALLOCATIONS)

GRID_SCALE = 4  # nearest-neighbour upscaling of 28 px images for the page
STRIP_IMAGES = 4  # images per frame of the denoising strip, 2 x 2 (a square frame)
STRIP_SCALE = 2
MAX_UPLOAD_MB = 64  # a checkpoint upload; the shipped files are 5 and 11 MB
SAMPLER_DEFAULTS = SamplerConfig()  # the kit's headline sampling settings


@dataclass(frozen=True)
class Limit:
    """A numeric control: its name in messages and on the page, and its inclusive range."""

    label: str
    lo: float
    hi: float
    integer: bool = True


LIMITS = {
    "steps": Limit("sampling steps", 1, 100),
    "iterations": Limit("iterations per step", 1, 30),
    "budget": Limit("budget (block evaluations per image)", 1, 2000),
    "num_images": Limit("number of images", 1, 64),
    "seed": Limit("seed", 0, 2**32 - 1),  # torch's CPU generator keeps the low 32 bits: larger seeds would repeat
    "cfg_scale": Limit("guidance scale", 0.0, 10.0, integer=False),
    "tol": Limit("tolerance", 0.0, 1.0, integer=False),
    "damping": Limit("damping", 0.05, 1.0, integer=False),
}
MAX_WORK = 20_000  # block evaluations x images per request, FPDM and DiT (or both compared runs) together
FIELD_LABELS = {  # every control's name in messages
    **{k: v.label for k, v in LIMITS.items()}, "budget_mode": "budget mode", "allocation": "allocation",
    "reuse": "solution reuse", "solver": "solver", "class_choice": "class", "method": "sampler",
    "weights": "weights", "fpdm_choice": "FPDM checkpoint", "dit_choice": "DiT checkpoint",
    "comparison": "comparison", "allocation_b": "second allocation", "metric": "metric",
}


class ExploreError(ValueError):
    """An invalid request, with a one-line message for the person who made it."""


def _show(value) -> str:
    """A user's value for a message: short, whatever it is."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Settings:
    """What the controls ask for. `sampler_config()` turns it into a checked `SamplerConfig`."""

    budget_mode: str = MODE_STEPS
    steps: int = 10
    iterations: int = 3  # per step, used in MODE_STEPS
    budget: int = 50  # block evaluations per image, used in the budget modes
    allocation: str = SAMPLER_DEFAULTS.allocation
    reuse: bool = SAMPLER_DEFAULTS.reuse
    solver: str = SAMPLER_DEFAULTS.solver
    tol: float = 0.0  # 0 = run the planned iterations; > 0 stops a step early
    damping: float = SAMPLER_DEFAULTS.damping
    class_choice: str = ALL_CLASSES
    cfg_scale: float = SAMPLER_DEFAULTS.cfg_scale
    seed: int = 0
    num_images: int = 10
    method: str = SAMPLER_DEFAULTS.method
    precision: str = "auto"  # bf16 on CUDA GPUs with bf16 and on CPUs with AMX, else fp32 (fpdm_core.devices)

    def __post_init__(self):
        _choice("budget_mode", self.budget_mode, BUDGET_MODES)
        _choice("allocation", self.allocation, ALLOCATIONS)
        _choice("solver", self.solver, SOLVERS)
        _choice("method", self.method, METHODS)
        for key in self.used_fields():
            if key in LIMITS:
                _number(key, getattr(self, key))
        if not isinstance(self.class_choice, str):
            raise ExploreError(f"class must be a class name, got {_show(self.class_choice)}")
        if self.allocation == "adaptive" and self.tol <= 0:
            raise ExploreError("the adaptive allocation stops each step at a residual tolerance: set a tolerance > 0 "
                               "(e.g. 0.01), or choose another allocation")

    def used_fields(self) -> tuple[str, ...]:
        """The numeric controls this mode and solver read; the others are ignored."""
        used = {MODE_STEPS: ("steps", "iterations"), MODE_BUDGET_STEPS: ("steps", "budget"),
                MODE_BUDGET: ("budget",)}[self.budget_mode]
        return used + ("num_images", "seed", "cfg_scale", "tol") + (("damping",) if self.solver == "picard" else ())

    def sampler_config(self) -> SamplerConfig:
        kw = dict(allocation=self.allocation, reuse=self.reuse, solver=self.solver, tol=self.tol or None,
                  damping=self.damping, method=self.method, cfg_scale=self.cfg_scale, precision=self.precision)
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
            raise ExploreError(f"unknown class {_show(self.class_choice)}; this model knows: {', '.join(names) or 'none'} "
                               f"(or '{ALL_CLASSES}', '{UNCONDITIONAL}')")
        return torch.full((n,), names.index(self.class_choice), dtype=torch.long)


def _choice(key, value, options):
    if not isinstance(value, str) or value not in options:
        raise ExploreError(f"unknown {FIELD_LABELS[key]} {_show(value)}; choose one of: {', '.join(map(str, options))}")


def _num(v) -> str:
    """A number for a message: whole numbers in full (a seed), others short."""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


def _number(key: str, value) -> int | float:
    """A numeric control's value, checked against `LIMITS[key]`; anything else -> ExploreError naming the field."""
    lim = LIMITS[key]
    kind = "a whole number" if lim.integer else "a number"
    if value is None or value == "":
        raise ExploreError(f"{lim.label} is empty: enter {kind} from {_num(lim.lo)} to {_num(lim.hi)}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ExploreError(f"{lim.label} must be {kind} from {_num(lim.lo)} to {_num(lim.hi)}, got {_show(value)}")
    if not math.isfinite(value):
        raise ExploreError(f"{lim.label} must be a finite number, got {value}")
    if lim.integer and value != int(value):
        raise ExploreError(f"{lim.label} must be a whole number, got {_num(value)}")
    if not lim.lo <= value <= lim.hi:
        raise ExploreError(f"{lim.label} must be between {_num(lim.lo)} and {_num(lim.hi)}, got {_num(value)}")
    return int(value) if lim.integer else float(value)


def settings_from_ui(*, budget_mode, steps, iterations, budget, allocation, reuse, solver, tol, damping=1.0,
                     class_choice=ALL_CLASSES, cfg_scale=3.0, seed=0, num_images=10, method="ddim") -> Settings:
    """Raw control values (numbers, None from a cleared box, or anything an API client sends) -> `Settings`.

    Every bad value raises `ExploreError` naming its field. A control the chosen budget mode
    (or solver) does not use is ignored, whatever it holds. A cleared tolerance means 0.
    """
    _choice("budget_mode", budget_mode, BUDGET_MODES)
    if isinstance(solver, str):
        solver = solver.lower()
    _choice("solver", solver, SOLVERS)
    if not (isinstance(reuse, bool) or (isinstance(reuse, int) and reuse in (0, 1))):
        raise ExploreError(f"solution reuse must be true or false, got {_show(reuse)}")
    d = Settings()
    raw = dict(steps=steps, iterations=iterations, budget=budget, num_images=num_images, seed=seed,
               cfg_scale=cfg_scale, tol=0.0 if tol is None else tol, damping=damping)
    probe = replace(d, budget_mode=budget_mode, solver=solver)
    values = {k: _number(k, raw[k]) if k in probe.used_fields() else getattr(d, k) for k in raw}
    return Settings(budget_mode=budget_mode, allocation=allocation, reuse=bool(reuse), solver=solver,
                    class_choice=class_choice, method=method, **values)


def class_names(config: ModelConfig) -> tuple[str, ...]:
    """Fashion-MNIST names for a 10-class 28x28 grey model, else 'class i'."""
    if config.num_classes == 10 and config.input_size == 28 and config.in_channels == 1:
        return FASHION_MNIST_CLASSES
    return tuple(f"class {i}" for i in range(config.num_classes))


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_dir(explicit: str | Path | None = None) -> Path:
    """`explicit`, else $FPDM_CHECKPOINT_DIR, else the kit's shipped checkpoints (`assets.checkpoint_dir`)."""
    return assets.checkpoint_dir(explicit)


def list_checkpoints(folder: str | Path) -> list[str]:
    """File names of `*.safetensors` in `folder` (not the classifier); the only names a user may pick."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.glob("*.safetensors") if p.is_file() and p.name != CLASSIFIER_FILE)


def missing_help(kind: str) -> str:
    name, preset = DEFAULT_NAMES[kind], TRAIN_PRESETS[kind]
    return (f"No {KIND_NAMES[kind]} checkpoint `{name}` in the app's checkpoint folder. Train one with "
            f"`python -m fpdm_core.train --run-dir runs/{preset} --model {preset} --max-minutes 90`, then copy "
            f"`runs/{preset}/checkpoint.safetensors` there as `{name}` (or start the app with "
            f"`--checkpoint-dir` / ${CHECKPOINT_DIR_ENV} pointing at your checkpoints), or pick or upload another "
            f"checkpoint under *Checkpoints*.")


def resolve_checkpoint(kind: str, folder: str | Path, choice: str | None = None) -> Path:
    """The file to load for slot `kind` ("fpdm" or "dit"): a name that `list_checkpoints(folder)` lists.

    No other server path can be reached, and messages name files, never folders.
    """
    key = f"{kind}_choice"
    if choice is not None and not isinstance(choice, str):
        raise ExploreError(f"{FIELD_LABELS[key]} must be a file name from the list, got {_show(choice)}")
    folder = Path(folder)
    name = choice or DEFAULT_NAMES[kind]
    listed = list_checkpoints(folder)
    if name not in listed:
        if name == DEFAULT_NAMES[kind]:
            raise ExploreError(missing_help(kind))
        raise ExploreError(f"{FIELD_LABELS[key]} {_show(Path(name).name)} is not one of the checkpoints offered: "
                           f"{', '.join(listed) or 'there are none'}")
    return folder / name


@dataclass(frozen=True)
class Loaded:
    """A read-only model shared between requests (or held by one session), with its checkpoint's metadata."""

    model: DiT | FPDM
    meta: dict
    name: str  # the file's name, never its folder

    @property
    def diffusion(self) -> DiffusionConfig:
        """The process the model was trained with (`checkpoints.stored_diffusion`)."""
        return stored_diffusion(self.meta)

    def describe(self) -> str:
        c = self.model.config
        shape = f"{c.pre_depth} pre + fixed-point + {c.post_depth} post blocks" if c.kind == "fpdm" else f"depth {c.depth}"
        step = self.meta.get("step")
        trained = f", trained {step} steps" if step is not None else ""
        return (f"`{self.name}`: {KIND_NAMES[c.kind]}, hidden {c.hidden_size}, {shape}, "
                f"{c.num_tokens} tokens, {c.num_classes} classes{trained}")


_NAME_LIST = re.compile(r"\[(?:'[\w.]+'(?:, )?)+\]")  # ['blocks.0.attn.qkv.weight', ...]
_ABS_PATH = re.compile(r"(?:/[^\s'\"`:,()]+)+/([^\s'\"`:,()/]+)")


def public_message(error: Exception, name: str) -> str:
    """An error about checkpoint `name` without server paths or dumps of weight names, one line."""
    text = _ABS_PATH.sub(r"\1", str(error)).replace("\n", " ").removeprefix(f"{name}: ")
    dump = re.search(r"\s*[(:]?\s*(Error\(s\) in loading|Missing key|Unexpected key|size mismatch|missing \[|"
                     r"unexpected \[)", text)
    if dump:  # load_state_dict's lists of weight names
        text = text[:dump.start()] + " (its tensors do not fit the model its metadata describes)"
    text = _NAME_LIST.sub("[...]", text)
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"could not load checkpoint {name}: {text}"


def _load_file(path: Path, device: str, weights: str, name: str) -> Loaded:
    from safetensors import safe_open

    try:
        model = load_model(path, weights=weights, device=device).requires_grad_(False)
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("fpdm", "{}"))
    except FileNotFoundError:
        raise ExploreError(f"checkpoint {name} does not exist") from None
    except (CheckpointError, OSError, ValueError, RuntimeError, TypeError, KeyError) as e:
        raise ExploreError(public_message(e, name)) from None
    return Loaded(model, meta if isinstance(meta, dict) else {}, name)


_LOAD_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _load_listed(path: str, mtime_ns: int, size: int, device: str, weights: str) -> Loaded:
    return _load_file(Path(path), device, weights, Path(path).name)


def load_cached(path: str | Path, device: str = "cpu", weights: str = "ema") -> Loaded:
    """Load (once per path, mtime, size, device and weights) a listed checkpoint's model.

    weights: "ema" (falls back to the raw weights if the file has no EMA) or "model".
    """
    _choice("weights", weights, WEIGHTS)
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        raise ExploreError(f"checkpoint {path.name} does not exist") from None
    with _LOAD_LOCK:
        return _load_listed(str(path.resolve()), st.st_mtime_ns, st.st_size, str(device), weights)


def load_upload(kind: str, path: str | Path, name: str, device: str = "cpu") -> dict[str, Loaded]:
    """An uploaded checkpoint loaded into memory, both weight sets: {"ema": Loaded, "model": Loaded}.

    The caller deletes the file afterwards: the session keeps the models, not the upload.
    """
    path = Path(path)
    if not str(name).endswith(".safetensors"):
        raise ExploreError(f"the uploaded {KIND_NAMES[kind]} file {_show(name)} is not a .safetensors checkpoint")
    size = path.stat().st_size if path.is_file() else 0
    if size > MAX_UPLOAD_MB * 2**20:
        raise ExploreError(f"the uploaded {KIND_NAMES[kind]} file {name} is {size / 2**20:.0f} MB; "
                           f"the app takes checkpoints up to {MAX_UPLOAD_MB} MB")
    out = {w: _load_file(path, device, w, name) for w in WEIGHTS}
    found = out["ema"].model.config.kind
    if found != kind:
        raise ExploreError(f"{name} holds a {KIND_NAMES[found]} model, but the {KIND_NAMES[kind]} slot needs a "
                           f"{KIND_NAMES[kind]} checkpoint")
    return out


def load_slot(kind: str, folder: str | Path, choice: str | None = None, upload: dict | None = None,
              device: str = "cpu", weights: str = "ema") -> Loaded:
    """The model for slot `kind`: an upload held by the session (`load_upload`), else a listed checkpoint."""
    _choice("weights", weights, WEIGHTS)
    loaded = upload[weights] if upload else load_cached(resolve_checkpoint(kind, folder, choice), device, weights)
    if loaded.model.config.kind != kind:
        raise ExploreError(f"{FIELD_LABELS[f'{kind}_choice']} {loaded.name} holds a "
                           f"{KIND_NAMES[loaded.model.config.kind]} model, but the {KIND_NAMES[kind]} slot needs a "
                           f"{KIND_NAMES[kind]} checkpoint")
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


def grid_columns(n: int) -> int:
    return n if n <= 5 else 5 if n <= 20 else math.ceil(math.sqrt(n))


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
            diffusion_config: DiffusionConfig = DiffusionConfig()) -> Iterator[Update]:
    """Sample FPDM with `settings`, then DiT with the steps that fit the same budget; yield an update per step.

    The same seed gives both models the same initial noise and labels. `dit` may be None
    (then `dit_note` says why). Grids refresh at most `max_updates` times per model. Raises
    ExploreError for an impossible plan, too much work, or a diverging solver.
    """
    config = settings.sampler_config()
    labels = settings.labels(fpdm.config)
    diffusion = GaussianDiffusion.from_config(diffusion_config).to(device)  # FPDM's (`Loaded.diffusion`)
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
            steps = min(dit_baseline_steps(dit.config, budget), diffusion.num_timesteps)
            dit_config = replace(config, steps=steps, iterations=None, budget=budget)
    if panel_note:
        notes.append(panel_note)
    dit_record = new_record(dit, diffusion, dit_config) if dit is not None else None
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
                dit, diffusion, labels, dit_config, dit_record, settings.seed, device, "DiT", clock, max_updates):
            dit_grid = grid if grid is not None else dit_grid
            yield Update("dit", progress, _progress_message("DiT", step, dit_record.plan["steps"]), elapsed, left,
                         refreshed, fpdm_grid, dit_grid, record, dit_record, notes=notes)
    summary = summary_markdown(record, dit_record, settings, dit_depth=dit_depth, dit_loaded=dit_loaded, notes=notes)
    yield Update("done", 1.0, "done", time.perf_counter() - clock.start, 0.0, True, fpdm_grid, dit_grid, record,
                 dit_record, fpdm_frames, dit_frames, summary, panel_note, notes)


def comparison_variants(settings: Settings, comparison: str, allocation_b: str = "increasing") -> list[tuple[str, Settings]]:
    """The two runs of a one-click comparison: same budget, seed and everything else."""
    _choice("comparison", comparison, COMPARISONS)
    if comparison == COMPARE_REUSE:
        return [("reuse on", replace(settings, reuse=True)), ("reuse off", replace(settings, reuse=False))]
    _choice("allocation_b", allocation_b, ALLOCATIONS)
    if allocation_b == settings.allocation:
        raise ExploreError(f"second allocation is the same as the first ({allocation_b}): choose another one")
    b = replace(settings, allocation=allocation_b)  # Settings re-checks: adaptive needs a tolerance
    return [(f"{settings.allocation} allocation", settings), (f"{allocation_b} allocation", b)]


def compare(fpdm: FPDM, variants: list[tuple[str, Settings]], *, device: str | torch.device = "cpu",
            max_updates: int = 10, diffusion_config: DiffusionConfig = DiffusionConfig()) -> Iterator[Update]:
    """Sample FPDM once per variant (same seed, same budget); yield updates, then both records and grids.

    In the updates, `fpdm_*` holds the first variant and `dit_*` the second (the page's two panels).
    """
    diffusion = GaussianDiffusion.from_config(diffusion_config).to(device)  # FPDM's (`Loaded.diffusion`)
    runs = []
    for label, s in variants:
        config = s.sampler_config()
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
    from .models import PRESETS

    return PRESETS[TRAIN_PRESETS["dit"]]


def progress_text(u: Update) -> str:
    """'FPDM step 3 of 10 (...) · 0.4 s elapsed, about 0.9 s left' from an update."""
    if u.stage == "done":
        return f"done in {_seconds(u.elapsed_s)}"
    left = "estimating the time left" if u.left_s is None else f"about {_seconds(u.left_s)} left"
    return f"{u.message} · {_seconds(u.elapsed_s)} elapsed, {left}"


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 60 else f"{int(s // 60)} min {int(s % 60)} s"


# ----------------------------------------------------------------------------- figures and text
_PLOT_MARGIN = dict(l=60, r=20, t=48, b=44)


def residual_range(*records: SampleRecord) -> tuple[int, int]:
    """(lo, hi) decades of log10 relative residual covering every record: one colour scale for side-by-side plots."""
    z = np.concatenate([np.log10(m[m > 0]) for m in map(residual_matrix, records)])
    z = z[np.isfinite(z)]
    return (math.floor(z.min()), max(math.ceil(z.max()), math.floor(z.min()) + 1)) if z.size else (-3, 0)


def residual_figure(record: SampleRecord, title: str = "FPDM relative residual ||f(z) - z|| / ||f(z)||",
                    zrange: tuple[int, int] | None = None):
    """Heatmap of the relative residual, timestep (rows, sampling order) x iteration; colour on a log scale over
    `zrange` decades (default: this record's), hover and colour bar in real units."""
    import plotly.graph_objects as go

    m = residual_matrix(record)  # (steps, max iterations)
    ts = [s.t for s in record.steps]
    z = np.log10(np.where(m > 0, m, np.nan))
    lo, hi = zrange or residual_range(record)
    ticks = list(range(lo, hi + 1))
    custom = np.stack([m, np.repeat(np.array(ts, dtype=float)[:, None], m.shape[1], axis=1)], axis=-1)
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(1, m.shape[1] + 1)), y=list(range(len(ts))), customdata=custom, colorscale="Viridis",
        zmin=lo, zmax=hi, colorbar=dict(title="residual", tickvals=ticks, ticktext=[f"1e{t}" for t in ticks]),
        hovertemplate="residual %{customdata[0]:.2e} at t = %{customdata[1]}, iteration %{x}<extra></extra>"))
    fig.update_layout(title=dict(text=title, font_size=14), xaxis=dict(title="fixed-point iteration", dtick=1),
                      yaxis=dict(title="timestep t (sampling order)", autorange="reversed", tickmode="array",
                                 tickvals=list(range(len(ts))), ticktext=[f"t={t}" for t in ts]),
                      margin=_PLOT_MARGIN, height=380)
    return fig


def iterations_figure(record: SampleRecord, title: str = "FPDM fixed-point iterations per timestep"):
    """Bars: iterations used vs allowed at each timestep (sampling order)."""
    import plotly.graph_objects as go

    ts = [str(s.t) for s in record.steps]
    fig = go.Figure([
        go.Bar(x=ts, y=[s.max_iterations for s in record.steps], name="allowed", marker_color="#c7d2fe",
               hovertemplate="t = %{x}: %{y} iterations allowed<extra></extra>"),
        go.Bar(x=ts, y=[s.iterations for s in record.steps], name="used", marker_color="#4f46e5",
               hovertemplate="t = %{x}: %{y} iterations used<extra></extra>"),
    ])
    fig.update_layout(title=dict(text=title, font_size=14), barmode="overlay", xaxis_title="timestep t (sampling order)",
                      yaxis_title="iterations", xaxis_type="category", margin=_PLOT_MARGIN, height=380,
                      legend=dict(orientation="h", y=1.0, x=1.0, xanchor="right", yanchor="bottom"))
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
    elif dit_loaded:
        rows.append(f"| **DiT** | 0 | - (depth {dit_depth}) | 0 of {plan['budget']} | 0 | below one DiT step |")
    finals = [s.rel_trace[-1] for s in fpdm.steps if s.rel_trace]
    firsts = [s.rel_trace[0] for s in fpdm.steps if s.rel_trace]
    converged = sum(s.converged for s in fpdm.steps)
    lines = ["\n".join(rows)]
    lines.append(f"**Plan**: {plan['rule']}; {settings.solver} solver, reuse {'on' if settings.reuse else 'off'}"
                 + (f", tolerance {settings.tol:g} ({converged} of {plural(len(fpdm.steps), 'step')} converged)"
                    if settings.tol else "") + ".")
    if finals:
        lines.append(f"**Relative residual**: first iteration median {np.median(firsts):.3g}, "
                     f"last iteration median {np.median(finals):.3g} (max {max(finals):.3g}).")
    n = settings.num_images * (2 if settings.cfg_scale != 1.0 else 1)
    lines.append(f"Costs are per image; this batch ran {plural(n, 'model row')}"
                 + (" (guidance doubles the batch)" if settings.cfg_scale != 1.0 else "")
                 + f", {_gflops(fpdm.spent_flops * n)} GFLOPs for FPDM in all. One fixed-point iteration costs "
                 "more FLOPs than one DiT block (projection MLP + block).")
    lines += [f"**Note:** {note}" for note in notes or []]
    return "\n\n".join(lines)


def compare_markdown(runs: list[tuple[str, SampleRecord]]) -> str:
    """One row per compared run: steps, iterations, block evaluations, residuals."""
    rows = ["| run | steps | iterations / step | block evaluations | first-iteration residual (median) "
            "| last-iteration residual (median) |", "|---|---|---|---|---|---|"]
    for label, r in runs:
        its = [s.iterations for s in r.steps]
        firsts = [s.rel_trace[0] for s in r.steps if s.rel_trace]
        finals = [s.rel_trace[-1] for s in r.steps if s.rel_trace]
        rows.append(f"| **{label}** | {len(r.steps)} | {min(its)}-{max(its)} | {r.spent_block_evals} of "
                    f"{r.plan['budget']} | {np.median(firsts):.3g} | {np.median(finals):.3g} |")
    return "\n".join(rows) + "\n\nSame budget, seed, noise and classes in both runs."


def label_caption(settings: Settings, config: ModelConfig) -> str:
    names = class_names(config)
    ids = settings.labels(config).tolist()
    shown = [names[i] if i < len(names) else UNCONDITIONAL for i in ids]
    cols = grid_columns(len(ids))
    rows = [", ".join(shown[r:r + cols]) for r in range(0, len(shown), cols)]
    return "Classes, row by row: " + " | ".join(rows)
