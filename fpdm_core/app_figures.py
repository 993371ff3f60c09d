"""The app's figures and text: residual heatmaps, iterations per step, the budget table and captions.
No Gradio in here (plotly figures, Markdown strings).
"""
from __future__ import annotations

import math

import numpy as np

from .app_settings import UNCONDITIONAL, Settings, class_names, plural
from .models import ModelConfig
from .plots import residual_matrix
from .sampling import SampleRecord


def grid_columns(n: int) -> int:
    return n if n <= 5 else 5 if n <= 20 else math.ceil(math.sqrt(n))


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
    lines.append(f"**Plan**: {plan['rule']}; {settings.config.solver} solver, reuse {'on' if settings.config.reuse else 'off'}"
                 + (f", tolerance {settings.config.tol:g} ({converged} of {plural(len(fpdm.steps), 'step')} converged)"
                    if settings.config.tol else "") + ".")
    if finals:
        lines.append(f"**Relative residual**: first iteration median {np.median(firsts):.3g}, "
                     f"last iteration median {np.median(finals):.3g} (max {max(finals):.3g}).")
    n = settings.num_images * (2 if settings.config.cfg_scale != 1.0 else 1)
    lines.append(f"Costs are per image; this batch ran {plural(n, 'model row')}"
                 + (" (guidance doubles the batch)" if settings.config.cfg_scale != 1.0 else "")
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

