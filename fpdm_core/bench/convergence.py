"""Convergence of the fixed-point solve: relative residual per (timestep, iteration), reuse on/off,
Picard vs Anderson, on the FPDM checkpoint."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..plots import residual_matrix
from ..sampling import SamplerConfig, sample
from ..stats import bootstrap_ci, paired_diff_ci, verdict
from .harness import Context, bench_diffusion, finding, load_checkpoint_model, log, pyplot, save_figure, write_result

NAME = "convergence"
TITLE = "Convergence of the fixed-point solve"
CLAIMS = ["The trained map converges; reusing the previous timestep's solution starts closer."]


def residual_summary(m: np.ndarray) -> dict:
    """Numbers from a (step, iteration) relative-residual matrix.

    First-iteration residuals leave out the first step, which has no previous solution to reuse.
    """
    first = m[1:, 0] if len(m) > 1 else m[:, 0]
    third = max(1, len(first) // 3)
    last = np.array([row[~np.isnan(row)][-1] for row in m])
    ratios = m[:, 1:] / m[:, :-1]
    ok = (m[:, :-1] > 1e-5) & np.isfinite(ratios)  # above the float32 floor
    return {"first_iteration_mean": float(np.nanmean(first)),
            "first_iteration_high_noise": float(np.nanmean(first[:third])),
            "first_iteration_low_noise": float(np.nanmean(first[-third:])),
            "final_median": float(np.median(last)), "final_max": float(np.max(last)),
            "contraction_median": float(np.median(ratios[ok])) if ok.any() else None}


def run(ctx: Context) -> Path:
    started, sc = time.perf_counter(), ctx.scale
    model, path = load_checkpoint_model(ctx, "fpdm")
    diffusion = bench_diffusion(ctx)
    labels = torch.arange(sc.conv_batch) % max(model.config.num_classes, 1)
    runs = []
    for solver in ("picard", "anderson"):
        for reuse in (False, True):
            cfg = SamplerConfig(steps=sc.conv_steps, iterations=sc.conv_iterations, reuse=reuse, solver=solver)
            log(f"convergence: {solver}, reuse={reuse}")
            _, record = sample(model, diffusion, labels, cfg, generator=torch.Generator().manual_seed(ctx.seed),
                               device=ctx.device)
            m = residual_matrix(record)
            runs.append({"solver": solver, "reuse": reuse, "timesteps": record.timesteps, "rel_residual": m,
                         "summary": residual_summary(m)})
    plot(ctx, runs)
    settings = {"fpdm": str(path), "steps": sc.conv_steps, "iterations": sc.conv_iterations, "batch": sc.conv_batch,
                "sampler": "DDIM eta 0, float32, EMA weights, fixed iteration count (no tolerance)",
                "residual": "||f(z)-z|| / (||f(z)|| + 1e-9), batch mean"}
    return write_result(ctx, NAME, settings, {"runs": runs}, started)


def plot(ctx: Context, runs: list[dict]) -> None:
    plt = pyplot()
    logs = [np.log10(np.where(r["rel_residual"] > 0, r["rel_residual"], np.nan)) for r in runs]
    lo, hi = np.nanmin([np.nanmin(x) for x in logs]), np.nanmax([np.nanmax(x) for x in logs])
    fig, axes = plt.subplots(2, 2, figsize=(10, 8), sharex=True, sharey=True)
    for ax, r, z in zip(axes.flat, runs, logs):
        im = ax.imshow(z, aspect="auto", cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest",
                       extent=(0.5, z.shape[1] + 0.5, len(z) - 0.5, -0.5))
        ax.set_title(f"{r['solver']}, reuse {'on' if r['reuse'] else 'off'}", fontsize=10)
        ticks = np.linspace(0, len(z) - 1, min(len(z), 6)).round().astype(int)
        ax.set_yticks(ticks, [f"t={r['timesteps'][i]}" for i in ticks], fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("fixed-point iteration")
    for ax in axes[:, 0]:
        ax.set_ylabel("denoising step (sampling order)")
    fig.colorbar(im, ax=axes, label="log10 relative residual")
    save_figure(ctx, NAME, fig)




MIN_STEPS = 10  # denoising steps (the units resampled) below which a verdict is underpowered


def per_step_contraction(m: np.ndarray) -> np.ndarray:
    """Median residual ratio per denoising step (iterations above the float32 floor); NaN where none."""
    ratios = m[:, 1:] / m[:, :-1]
    ok = (m[:, :-1] > 1e-5) & np.isfinite(ratios)
    return np.array([np.median(r[k]) if k.any() else np.nan for r, k in zip(ratios, ok)])


def verdicts(data: dict) -> list[dict]:
    """Intervals resample denoising steps (iterations within a step are not independent)."""
    runs = {(r["solver"], r["reuse"]): r for r in data["results"]["runs"]}
    base, reuse = runs[("picard", False)], runs[("picard", True)]
    m_base, m_reuse = (np.array(r["rel_residual"], dtype=float) for r in (base, reuse))
    out = []
    per_step = per_step_contraction(m_base)
    per_step = per_step[np.isfinite(per_step)]
    n = len(per_step)
    if n >= 2:
        c, lo, hi = bootstrap_ci(per_step, stat=np.median)
        status = verdict(lo - 1, hi - 1, higher_is_better=False, powered=n >= MIN_STEPS)
        out.append(finding(status, "the fixed-point map converges",
                           f"Picard iteration contracts by a median factor of {c:.2f} [{lo:.2f}, {hi:.2f}] per "
                           f"iteration (95% CI over {n} denoising steps; converges when below 1), to a median "
                           f"residual of {base['summary']['final_median']:.1e} after "
                           f"{data['settings']['iterations']} iterations: {status}."))
    first_base, first_reuse = m_base[1:, 0], m_reuse[1:, 0]  # the first step has nothing to reuse
    if len(first_base) >= 2:
        d, lo, hi = paired_diff_ci(first_reuse, first_base)
        status = verdict(lo, hi, higher_is_better=False, powered=len(first_base) >= MIN_STEPS)
        s_b, s_r = base["summary"], reuse["summary"]
        out.append(finding(status, "reuse gives a better starting point",
                           f"Reusing the previous fixed point changes the first-iteration residual by {d:+.3f} "
                           f"[{lo:+.3f}, {hi:+.3f}] (95% CI, paired over {len(first_base)} steps; mean "
                           f"{s_b['first_iteration_mean']:.3f} -> {s_r['first_iteration_mean']:.3f}, high noise "
                           f"{s_b['first_iteration_high_noise']:.3f} -> {s_r['first_iteration_high_noise']:.3f}, low "
                           f"noise {s_b['first_iteration_low_noise']:.3f} -> {s_r['first_iteration_low_noise']:.3f}): "
                           f"{status}."))
    a = runs[("anderson", True)]["summary"]
    out.append(finding("measured", "Anderson vs Picard",
                       f"With reuse, Anderson ends at a median residual of {a['final_median']:.1e} vs Picard's "
                       f"{reuse['summary']['final_median']:.1e}."))
    return out


def section(data: dict) -> str:
    lines = ["| solver | reuse | first-iteration residual (mean / high noise / low noise) | final median | final max "
             "| contraction |", "|---|---|---|---:|---:|---:|"]
    for r in data["results"]["runs"]:
        s = r["summary"]
        c = "n/a" if s["contraction_median"] is None else f"{s['contraction_median']:.2f}"
        lines.append(f"| {r['solver']} | {'on' if r['reuse'] else 'off'} | {s['first_iteration_mean']:.3f} / "
                     f"{s['first_iteration_high_noise']:.3f} / {s['first_iteration_low_noise']:.3f} | "
                     f"{s['final_median']:.1e} | {s['final_max']:.1e} | {c} |")
    return "\n".join(lines)
