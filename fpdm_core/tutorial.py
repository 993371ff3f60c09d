"""What the tutorial notebooks share, so that no notebook carries package code.

- `load_or_train`: a shipped (or given) checkpoint with its diffusion process, or a tiny model trained for seconds
  when the file is missing.
- Toy fixed-point problems live in `fpdm_core.toy_problems` (notebook 01).
- Figures drawn by code: the DiT vs FPDM architecture, noising at several t, denoising frames
  (x_t and the x0 prediction) as a strip and a GIF, the sampling explorer (residual heatmap,
  iterations per timestep, samples).
- `live_figure`: ipywidgets controls that redraw a figure in place; a saved notebook keeps the
  picture for the default values and a sentence instead of a widget repr.
- Reading committed results: training time from `checkpoints/*.metrics.jsonl`, bench JSON with
  "not yet measured" for missing keys, `headline_summary` (the headline benchmark's table and verdicts), and
  `check_reference` for the notebooks' reference numbers.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from . import assets
from .bench import headline
from .checkpoints import SHIPPED, load_checkpoint, load_pipeline
from .diffusion import GaussianDiffusion
from .models import DiT, FPDM, ModelConfig
from .options import options_of
from .plots import image_grid, residual_matrix
from .sampling import SampleRecord, SamplerConfig, new_record, sample, sample_progressive
from .solvers import NonFiniteError
from .stats import bootstrap_ci, paired_diff_ci, verdict
from .train import TrainConfig, Trainer

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "figures" / "bench"
TINY_PRESETS = {"fpdm": "FPDM-tiny", "dit": "DiT-tiny"}
# TrainConfig fields of the fallback: a tiny model for a few seconds on a CPU (it only shows the mechanics)
FALLBACK_RECIPE = dict(subset=512, batch_size=32, lr=2e-3, warmup_steps=5, ema_decay=0.9, no_grad_iters=(0, 3),
                       grad_iters=(1, 3), precision="fp32", max_steps=60)
MISSING = "not yet measured"


# ----------------------------------------------------------------------------- models
class TutorialModel(NamedTuple):
    """A model in eval mode, the diffusion process it was trained with (sample it with that), where it came from."""

    model: DiT | FPDM
    diffusion: GaussianDiffusion
    source: str


def load_or_train(kind: str, path: str | Path | None = None, recipe: dict | None = None, *,
                  device: str | torch.device = "cpu", seed: int = 0) -> TutorialModel:
    """`path` (empty: the shipped checkpoint of `kind`) if it exists, else the tiny preset trained with `recipe`
    (TrainConfig fields over FALLBACK_RECIPE) and a note saying so."""
    if kind not in SHIPPED:
        raise ValueError(f"kind must be one of {sorted(SHIPPED)}, got {kind!r}")
    path = Path(path) if path else SHIPPED[kind]
    if path.is_file():
        return TutorialModel(*load_pipeline(path, device=device), path.name)
    cfg = TrainConfig(**{"model": TINY_PRESETS[kind], **FALLBACK_RECIPE, **(recipe or {}), "device": str(device), "seed": seed})
    print(f"NOTE: {path} does not exist: training {cfg.model} for {cfg.max_steps} steps instead. Its samples are noise,\n"
          "      so the numbers below only show the mechanics; pass a trained checkpoint for real ones.")
    trainer = Trainer(cfg)
    for _ in range(cfg.max_steps):
        trainer.step()
    return TutorialModel(trainer.ema.eval(), trainer.diffusion, f"{cfg.model} trained {cfg.max_steps} steps (fallback)")


@dataclass(frozen=True)
class TrainingRun:
    """How a shipped checkpoint was trained, read from its metadata and metrics log."""

    model: str
    steps: int
    minutes: float
    final_loss: float | None
    precision: str
    device: str
    batch_size: int


def training_run(kind: str, folder: str | Path | None = None) -> TrainingRun | None:
    """The shipped `kind` checkpoint's training (None when the checkpoint is missing); `folder` as in
    `assets.checkpoint_dir`."""
    path = assets.shipped(kind, folder)
    if not path.is_file():
        return None
    meta = load_checkpoint(path).meta
    log = path.with_name(path.name.removesuffix(".safetensors") + ".metrics.jsonl")
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    device = "CPU" if "+cpu" in meta.get("torch", "") else meta.get("train", {}).get("device", "unknown device")
    return TrainingRun(meta["train"]["model"], int(meta["step"]), float(meta.get("elapsed_s", 0.0)) / 60,
                       rows[-1]["loss"] if rows else None, meta.get("precision", "fp32"), device,
                       int(meta["train"]["batch_size"]))


# ----------------------------------------------------------------------------- figures drawn by code
def architecture_figure(dit: ModelConfig, fpdm: ModelConfig):
    """DiT (a stack of `depth` blocks) next to FPDM (pre blocks, one weight-tied block iterated with input
    injection, post blocks), with the parameter-carrying parts labelled from the two configs."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, ax = plt.subplots(figsize=(10, 6.2))
    ax.set(xlim=(0, 10), ylim=(0, 10.4))
    ax.set_axis_off()

    def box(x, y, w, h, text, color, size=9):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=color, ec="k", lw=1))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)

    def arrow(x0, y0, x1, y1, **kw):
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=12, lw=1.2, **kw))

    grey, blue, orange, green = "#e8e8e8", "#cfe2f3", "#fce5cd", "#d9ead3"
    # DiT column
    ax.text(1.75, 10.1, f"DiT: {dit.depth} blocks", ha="center", fontsize=11, weight="bold")
    box(0.5, 0.3, 2.5, 0.7, "x_t, t, y", "white")
    box(0.5, 1.4, 2.5, 0.7, "patchify + embed", grey)
    ys = np.linspace(2.5, 7.9, min(dit.depth, 7))
    for i, y in enumerate(ys):
        label = f"block {i + 1}" if i < len(ys) - 1 else f"block {dit.depth}"
        box(0.5, y, 2.5, 0.55, label if i != len(ys) - 2 or dit.depth <= 7 else "...", blue)
    box(0.5, 8.8, 2.5, 0.7, "final layer -> eps", grey)
    for y0, y1 in [(1.0, 1.4), (2.1, ys[0])] + [(a + 0.55, b) for a, b in zip(ys[:-1], ys[1:])] + [(ys[-1] + 0.55, 8.8)]:
        arrow(1.75, y0 + 0.05, 1.75, y1 - 0.05)
    ax.text(0.2, 5.2, f"{dit.depth} different\nweight sets", rotation=90, ha="center", va="center", fontsize=8)
    # FPDM column
    ax.text(6.6, 10.1, f"FPDM: {fpdm.pre_depth} pre + 1 fixed-point + {fpdm.post_depth} post", ha="center", fontsize=11,
            weight="bold")
    box(5.0, 0.3, 3.2, 0.7, "x_t, t, y", "white")
    box(5.0, 1.4, 3.2, 0.7, "patchify + embed", grey)
    box(5.0, 2.5, 3.2, 0.7, f"pre block{'s' if fpdm.pre_depth > 1 else ''} (x{fpdm.pre_depth}) -> x_pre", blue)
    box(5.0, 4.0, 3.2, 2.4, "", orange)
    ax.text(6.6, 6.05, "weight-tied fixed-point block", ha="center", fontsize=9, weight="bold")
    ax.text(6.6, 5.35, "f(z) = Block(MLP([z ; inj]), t + y)", ha="center", fontsize=9, family="monospace")
    ax.text(6.6, 4.65, "z <- f(z), K times (Picard / Anderson)\nz_0 = x_pre, or previous step's z*", ha="center",
            fontsize=8)
    box(5.0, 7.3, 3.2, 0.7, f"post block{'s' if fpdm.post_depth > 1 else ''} (x{fpdm.post_depth})", blue)
    box(5.0, 8.8, 3.2, 0.7, "final layer -> eps", grey)
    box(8.6, 3.3, 1.3, 0.7, "inj =\nLinear(x_pre)", green, size=8)
    for y0, y1 in ((1.0, 1.4), (2.1, 2.5), (3.2, 4.0), (6.4, 7.3), (8.0, 8.8)):
        arrow(6.6, y0 + 0.05, 6.6, y1 - 0.05)
    arrow(8.25, 2.9, 9.2, 3.3)  # x_pre -> injection
    arrow(9.2, 4.0, 8.25, 5.0)  # injection -> every iteration
    ax.add_patch(FancyArrowPatch((5.0, 4.4), (5.0, 5.9), connectionstyle="arc3,rad=-1.2", arrowstyle="-|>",
                                 mutation_scale=12, lw=1.2))
    ax.text(4.2, 5.15, "K\niterations", ha="center", va="center", fontsize=8)
    ax.text(6.6, -0.1, "one denoising step costs pre + K + post block evaluations", ha="center", fontsize=8)
    fig.tight_layout()
    return fig


def noising_figure(diffusion, images: torch.Tensor, timesteps: list[int], seed: int = 0):
    """Rows: images (B, C, H, W) in [-1, 1]; columns: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps at each t."""
    import matplotlib.pyplot as plt

    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))  # (B, C, H, W)
    fig, axes = plt.subplots(1, len(timesteps), figsize=(1.5 * len(timesteps), 1.5 * len(images) + 0.4))
    for ax, t in zip(np.atleast_1d(axes), timesteps):
        tt = torch.full((len(images),), t, dtype=torch.long)
        ax.imshow(image_grid(diffusion.q_sample(images, tt, noise), nrow=1), cmap="gray")
        ax.set_title(f"t = {t}\nabar = {diffusion.alphas_cumprod[t].item():.3f}", fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


@dataclass
class Frame:
    t: int
    x_t: torch.Tensor  # (B, C, H, W) after the step
    x0_pred: torch.Tensor  # (B, C, H, W)


def denoising_frames(model, diffusion, labels, config: SamplerConfig, *, seed: int = 0, device="cpu"):
    """(frames, record): one `Frame` per denoising step of `sample_progressive` (tensors on the CPU)."""
    record = new_record(model, diffusion, config)
    frames = [Frame(s.record.t, s.x_t.cpu(), s.x0_pred.cpu())
              for s in sample_progressive(model, diffusion, labels, config, generator=torch.Generator().manual_seed(seed),
                                          device=device, record=record)]
    return frames, record


def denoising_strip(runs: dict[str, list[Frame]], columns: int = 6):
    """Matplotlib: per run (a row of panels), a panel of x_t and one of x0 predictions; inside a panel the columns
    are `columns` evenly spaced steps and the rows the images."""
    import matplotlib.pyplot as plt

    n = len(next(iter(runs.values()))[0].x_t)
    fig, axes = plt.subplots(len(runs), 2, figsize=(1.8 * columns + 0.6, (0.85 * n + 0.6) * len(runs)), squeeze=False)
    for r, (name, frames) in enumerate(runs.items()):
        picks = np.unique(np.linspace(0, len(frames) - 1, columns).round().astype(int))
        for k, (what, label) in enumerate((("x_t", "x_t"), ("x0_pred", "x0 prediction"))):
            images = torch.stack([getattr(frames[p], what) for p in picks], 1).flatten(0, 1)  # (B * columns, C, H, W)
            ax = axes[r, k]
            ax.imshow(image_grid(images, nrow=len(picks)), cmap="gray")
            ax.set_title(f"{name}: {label}\nt = " + ", ".join(str(frames[p].t) for p in picks), fontsize=8)
            ax.set_axis_off()
    fig.tight_layout()
    return fig


def save_denoising_gif(runs: dict[str, list[Frame]], path: str | Path, *, scale: int = 2, ms: int = 120) -> Path:
    """A GIF: one frame per step; per run a row [x_t | x0 prediction]; runs with fewer steps hold their last frame."""
    from PIL import Image

    n = max(len(f) for f in runs.values())
    pages = []
    for i in range(n):
        rows = []
        for frames in runs.values():
            fr = frames[min(i, len(frames) - 1)]
            rows.append(np.concatenate([image_grid(fr.x_t, nrow=len(fr.x_t)), image_grid(fr.x0_pred, nrow=len(fr.x_t))], 1))
        page = Image.fromarray(np.concatenate(rows, 0))
        pages.append(page.resize((page.width * scale, page.height * scale), Image.NEAREST))
    path = Path(path)
    pages[0].save(path, save_all=True, append_images=pages[1:], duration=ms, loop=0)
    return path


def residual_heatmap(record: SampleRecord, ax, vmin: float | None = None, vmax: float | None = None):
    """Matplotlib: log10 relative residual, denoising step (rows, noisiest first) x iteration; returns the image."""
    m = np.log10(residual_matrix(record))
    im = ax.imshow(m, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax,
                   extent=(0.5, m.shape[1] + 0.5, m.shape[0] - 0.5, -0.5))
    ax.set(xlabel="fixed-point iteration", ylabel="denoising step (noisiest first)")
    return im


# ----------------------------------------------------------------------------- the sampling explorer
EXPLORER_MODES = ("budget (timestep smoothing)", "budget + steps", "steps x iterations")


def explorer_config(mode: str, budget: int, steps: int, iterations: int, allocation: str, reuse: bool, solver: str,
                    tol: float = 0.0) -> SamplerConfig:
    """The controls as a `SamplerConfig`; everything else keeps the kit's defaults. tol 0 = run every planned iteration."""
    if mode not in EXPLORER_MODES:
        raise ValueError(f"mode must be one of {EXPLORER_MODES}, got {mode!r}")
    kw = dict(allocation=allocation, reuse=reuse, solver=solver, tol=tol or None)
    if mode == EXPLORER_MODES[0]:
        return SamplerConfig(budget=budget, **kw)
    if mode == EXPLORER_MODES[1]:
        return SamplerConfig(budget=budget, steps=steps, **kw)
    return SamplerConfig(steps=steps, iterations=iterations, **kw)


EXPLORER_STEP_RANGE = (1, 100)  # teaching ranges of the explorer's sliders, inside SamplerConfig's declared limits
EXPLORER_ITERATION_RANGE = (1, 30)
EXPLORER_BUDGET_FLOOR, EXPLORER_BUDGET_STEP = 8, 4  # block evaluations
EXPLORER_TOLERANCES = (("off", 0.0), ("1e-1", 1e-1), ("1e-2", 1e-2), ("1e-3", 1e-3), ("1e-4", 1e-4))


def explorer_controls(*, mode: str, budget: int, max_budget: int, steps: int, iterations: int,
                      tol: bool = False) -> dict:
    """The explorer's ipywidgets, keyed as `explorer_config` takes them. Choices and defaults are
    `SamplerConfig`'s declared ones; `tol` adds a tolerance menu, without which the adaptive allocation
    (it needs a tolerance) is left out. Slider ranges are teaching ranges inside the declared limits."""
    import ipywidgets as widgets

    opts = options_of(SamplerConfig)
    allocations = [a for a in opts["allocation"].choices if tol or a != "adaptive"]

    def slider(name: str, value: int, lo: int, hi: int, step: int = 1):
        return widgets.IntSlider(value=value, min=lo, max=hi, step=step, continuous_update=False, description=name)

    def menu(description: str, options, value):
        return widgets.Dropdown(options=options, value=value, description=description)

    controls = {"mode": menu("set by", EXPLORER_MODES, mode),
                "budget": slider("budget", budget, EXPLORER_BUDGET_FLOOR, max_budget, EXPLORER_BUDGET_STEP),
                "steps": slider("steps", steps, *EXPLORER_STEP_RANGE),
                "iterations": slider("iterations", iterations, *EXPLORER_ITERATION_RANGE),
                "allocation": menu("allocation", allocations, opts["allocation"].default),
                "reuse": widgets.Checkbox(value=opts["reuse"].default, description="reuse"),
                "solver": menu("solver", opts["solver"].choices, opts["solver"].default)}
    if tol:
        controls["tol"] = menu("tol", EXPLORER_TOLERANCES, 0.0)
    return controls


def explorer_figure(model: FPDM, diffusion, config: SamplerConfig, *, n_images: int = 10, seed: int = 0, device="cpu"):
    """(figure, sentence, record): sample `n_images` (one per class, cycling) and draw the residual heatmap,
    the iterations per timestep (planned vs used) and the samples."""
    import matplotlib.pyplot as plt

    labels = torch.arange(n_images) % model.config.num_classes
    frames, record = denoising_frames(model, diffusion, labels, config, seed=seed, device=device)
    from matplotlib.ticker import MaxNLocator

    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(13, 3.4), gridspec_kw={"width_ratios": [1.1, 1.1, 1.2]})
    fig.colorbar(residual_heatmap(record, a1), ax=a1, label="log10 rel. residual")
    a1.set_title("residual per step and iteration", fontsize=9)
    x = np.arange(len(record.steps))
    a2.bar(x, [s.max_iterations for s in record.steps], color="#ddd", label="allowed")
    a2.bar(x, [s.iterations for s in record.steps], width=0.5, color="#2a7ab9", label="used")
    every = max(1, len(x) // 8)
    a2.set_xticks(x[::every], [str(record.steps[i].t) for i in x[::every]], fontsize=7)
    a2.set(xlabel="timestep t (sampling order)", ylabel="fixed-point iterations")
    a2.set_title("iterations per timestep", fontsize=9)
    a2.legend(fontsize=7, loc="lower right", framealpha=0.9)
    for axis in (a1.xaxis, a1.yaxis, a2.yaxis):
        axis.set_major_locator(MaxNLocator(integer=True))
    a3.imshow(image_grid(frames[-1].x_t, nrow=math.ceil(n_images / 2) if n_images > 5 else n_images), cmap="gray")
    a3.set_axis_off()
    a3.set_title("samples", fontsize=9)
    fig.tight_layout()
    finals = [s.rel_trace[-1] for s in record.steps if s.rel_trace]
    sentence = (f"{record.plan['rule']}: {record.plan['steps']} steps, {record.spent_block_evals} of {record.plan['budget']} "
                f"block evaluations per image spent; final relative residual per step: median {np.median(finals):.1e}, "
                f"worst {max(finals):.1e}.")
    return fig, sentence, record


# ----------------------------------------------------------------------------- widgets with a static fallback
class _Controls:
    """A widget box whose plain-text form is a sentence, not `VBox(children=...)`, in a saved notebook."""

    TEXT = "(controls: open the notebook in JupyterLab and run it to move them; the figure shows the defaults)"

    def __init__(self, box):
        self.box = box

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.box._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        data["text/plain"] = self.TEXT
        return bundle


def safe_draw(draw: Callable, values: dict, errors=(NonFiniteError, ValueError)):
    """(figure or None, sentence): draw(**values) -> (figure, sentence, ...); a known error becomes its sentence."""
    try:
        fig, sentence, *_ = draw(**values)
    except errors as e:
        return None, f"**Could not draw these settings:** {e}"
    return fig, sentence


def live_figure(draw: Callable, controls: dict) -> dict:
    """Show `draw(**defaults)` now, as an ordinary figure output, and redraw it in place when a control changes.

    draw(**values) returns (matplotlib figure, sentence); NonFiniteError / ValueError become a sentence.
    Returns {"values", "sentence"} of what is shown, kept current as the controls move.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import DisplayHandle, Markdown, display

    shown: dict = {}
    fig_handle, text_handle = DisplayHandle(), DisplayHandle()

    def render(first: bool):
        shown["values"] = {name: c.value for name, c in controls.items()}
        fig, shown["sentence"] = safe_draw(draw, shown["values"])
        for handle, obj in ((fig_handle, fig if fig is not None else Markdown(" ")), (text_handle, Markdown(shown["sentence"]))):
            handle.display(obj) if first else handle.update(obj)
        if fig is not None:
            plt.close(fig)

    display(_Controls(widgets.HBox(list(controls.values()), layout=widgets.Layout(flex_flow="row wrap"))))
    render(first=True)
    for c in controls.values():
        c.observe(lambda _change: render(first=False), names="value")
    return shown


# ----------------------------------------------------------------------------- judged samples
def judged_samples(model, diffusion, config: SamplerConfig, classifier, *, n: int, seed: int = 0, device="cpu"):
    """(images, correct (n,) bool numpy, record): n class-conditional samples (labels cycle through the classes),
    whether the judge assigns each to its requested class, and the `SampleRecord` (costs). Same seed and n -> same
    noise for every model."""
    labels = torch.arange(n) % model.config.num_classes  # (n,)
    images, record = sample(model, diffusion, labels, config, generator=torch.Generator().manual_seed(seed), device=device)
    with torch.no_grad():
        pred = classifier(images.to(next(classifier.parameters()).device)).argmax(1).cpu()  # (n,)
    return images.cpu(), (pred == labels).numpy(), record


def compare_accuracy(fpdm_correct, dit_correct, chance: float) -> dict:
    """Bootstrap 95% intervals (fpdm_core.stats) of both accuracies and of FPDM minus DiT on paired samples (same
    labels and noise), and the verdict on "FPDM is better"; underpowered while either model is not above chance."""
    fpdm, dit = bootstrap_ci(np.asarray(fpdm_correct, float)), bootstrap_ci(np.asarray(dit_correct, float))
    diff = paired_diff_ci(np.asarray(fpdm_correct, float), np.asarray(dit_correct, float))
    powered = fpdm[1] > chance and dit[1] > chance
    return {"fpdm": fpdm, "dit": dit, "diff": diff, "verdict": verdict(diff[1], diff[2], powered=powered)}


# ----------------------------------------------------------------------------- committed results
def read_bench(folder: str | Path = BENCH_DIR) -> dict[str, dict]:
    """{name: parsed JSON} of the bench files present in `folder` (none: an empty dict)."""
    folder = Path(folder)
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def dig(data, *keys, default=None):
    """data[k0][k1]...; `default` where a key or index is missing (bench JSON changes as benchmarks are rerun)."""
    for k in keys:
        try:
            data = data[k]
        except (KeyError, IndexError, TypeError):
            return default
    return data


def fmt(value, spec: str = "", missing: str = MISSING) -> str:
    """format(value, spec), or `missing` for None."""
    return missing if value is None else format(value, spec)


HEADLINE_VARIANTS = ("DiT", "FPDM, smoothing rule", "FPDM, best split", "DiT-16")
HEADLINE_PAIRS = (("FPDM, best split", "DiT"), ("FPDM, smoothing rule", "DiT"), ("FPDM, best split", "DiT-16"))


def _with_ci(m: dict | None, spec: str) -> str:
    return MISSING if not m or m.get("value") is None else f"{m['value']:{spec}} [{m['lo']:{spec}}, {m['hi']:{spec}}]"


def headline_summary(data: dict) -> dict:
    """The headline condition (the first of `settings.conditions`) of a headline.json.

    Returns {"condition": (method, cfg_scale, n), "rows": {(variant, budget): row}, "verdicts": {(a, b): {budget:
    {metric: verdict}}} (fpdm_core.bench.headline.judge, powered as the benchmark says), "table": markdown with,
    per budget, accuracy and FCD (95% CIs) of every variant and the overall verdict on each `a beats b`}.
    """
    r, (method, cfg_scale, n, _) = data["results"], data["settings"]["conditions"][0]
    here = [x for x in r["rows"] + r["comparisons"] if x["method"] == method and x["cfg_scale"] == cfg_scale]
    rows = {(x["variant"], x["budget_dit_steps"]): x for x in here if "variant" in x and "skipped" not in x}
    verdicts = {pair: {} for pair in HEADLINE_PAIRS}
    for c in here:
        if (c.get("a"), c.get("b")) in verdicts:
            verdicts[c["a"], c["b"]][c["budget_dit_steps"]] = headline.judge(c, r["metrics"], headline.is_powered(c, data))
    lines = ["| budget (DiT steps) | " + " | ".join(HEADLINE_VARIANTS) + " | "
             + " | ".join(f"{a} beats {b}?" for a, b in HEADLINE_PAIRS) + " |",
             "|---" * (1 + len(HEADLINE_VARIANTS) + len(HEADLINE_PAIRS)) + "|"]
    for k in sorted({k for _, k in rows}):
        cells = [(f"acc {_with_ci(dig(rows, (v, k), 'metrics', 'accuracy'), '.3f')}<br>"
                  f"FCD {_with_ci(dig(rows, (v, k), 'metrics', 'fcd'), '.0f')}") if (v, k) in rows else MISSING
                 for v in HEADLINE_VARIANTS]
        cells += [headline.overall(verdicts[p][k]) if k in verdicts[p] else MISSING for p in HEADLINE_PAIRS]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return {"condition": (method, cfg_scale, n), "rows": rows, "verdicts": verdicts, "table": "\n".join(lines)}


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1} (lists stay values)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def check_reference(results: dict, reference: dict) -> list[str]:
    """Compare a notebook's results with its reference entries {"key.path": {"value": v, "abs"|"rel": tol}}.

    No tolerance means equal (integers, strings, lists). Returns one line per mismatch (empty: all match).
    """
    flat, failures = flatten(results), []
    for key, ref in reference.items():
        if key not in flat:
            failures.append(f"{key}: missing from results (expected {ref['value']!r})")
            continue
        got, want = flat[key], ref["value"]
        if "abs" in ref or "rel" in ref:
            ok = isinstance(got, (int, float)) and abs(got - want) <= ref.get("abs", 0.0) + ref.get("rel", 0.0) * abs(want)
            band = f" +- {ref['abs']:g}" if "abs" in ref else f" +- {100 * ref['rel']:g}%"
        else:
            ok, band = got == want, ""
        if not ok:
            failures.append(f"{key}: got {got!r}, expected {want!r}{band}")
    return failures
