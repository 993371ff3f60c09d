"""Figures: image grids (PIL), residual curves and heatmaps (matplotlib), interactive heatmaps (plotly)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .data import to_uint8


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Images in [-1, 1] (B, C, H, W) -> one uint8 grid (H', W') or (H', W', C), white padding."""
    u = to_uint8(images)  # (B, H, W[, C])
    B, H, W = u.shape[:3]
    nrow = nrow or math.ceil(math.sqrt(B))
    rows = math.ceil(B / nrow)
    grid = np.full((rows * (H + pad) + pad, nrow * (W + pad) + pad) + u.shape[3:], 255, dtype=np.uint8)
    for i in range(B):
        r, c = divmod(i, nrow)
        grid[pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = u[i]
    return grid


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 2) -> None:
    from PIL import Image

    img = Image.fromarray(image_grid(images, nrow))
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)


def residual_matrix(record) -> np.ndarray:
    """Relative residual per (step, iteration) of a `SampleRecord` (or its dict); NaN where a step stopped."""
    steps = record["steps"] if isinstance(record, dict) else [vars(s) for s in record.steps]
    width = max((len(s["rel_trace"]) for s in steps), default=0)
    out = np.full((len(steps), max(width, 1)), np.nan)
    for i, s in enumerate(steps):
        out[i, : len(s["rel_trace"])] = s["rel_trace"]
    return out


def residual_curves(record, ax=None, every: int | None = None):
    """Matplotlib: relative residual vs iteration for a few timesteps (log scale)."""
    import matplotlib.pyplot as plt

    steps = record["steps"] if isinstance(record, dict) else [vars(s) for s in record.steps]
    ax = ax or plt.subplots(figsize=(5, 3.5))[1]
    every = every or max(1, len(steps) // 6)
    cmap = plt.get_cmap("viridis")
    for i, s in enumerate(steps[::every]):
        ax.semilogy(range(1, len(s["rel_trace"]) + 1), s["rel_trace"], marker="o", ms=3,
                    color=cmap(i / max(1, len(steps[::every]) - 1)), label=f"t={s['t']}")
    ax.set_xlabel("fixed-point iteration")
    ax.set_ylabel("relative residual ||f(z)-z|| / ||f(z)||")
    ax.legend(fontsize=7, ncol=2)
    ax.figure.tight_layout()
    return ax.figure


def residual_heatmap_plotly(record, title: str = "relative residual"):
    """Plotly heatmap of log10 relative residual, timestep (rows, sampling order) x iteration."""
    import plotly.graph_objects as go

    steps = record["steps"] if isinstance(record, dict) else [vars(s) for s in record.steps]
    m = residual_matrix(record)
    z = np.log10(np.where(m > 0, m, np.nan))
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(1, m.shape[1] + 1)), y=[f"t={s['t']}" for s in steps], colorscale="Viridis",
        colorbar=dict(title="log10 rel."), hovertemplate="%{y}, iteration %{x}: 10^%{z:.2f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="fixed-point iteration", yaxis_title="denoising step",
                      yaxis_autorange="reversed", margin=dict(l=60, r=20, t=40, b=40))
    return fig


def iterations_bar_plotly(record, title: str = "iterations per timestep"):
    import plotly.graph_objects as go

    steps = record["steps"] if isinstance(record, dict) else [vars(s) for s in record.steps]
    fig = go.Figure(go.Bar(x=[str(s["t"]) for s in steps], y=[s["iterations"] for s in steps]))
    fig.update_layout(title=title, xaxis_title="timestep t (sampling order)", yaxis_title="iterations",
                      xaxis_type="category", margin=dict(l=60, r=20, t=40, b=40))
    return fig


def write_html(fig, path: str | Path, div_id: str) -> Path:
    """A plotly figure as HTML that loads the one local `plotly.min.js` next to it (works offline), with a fixed
    element id, so the same figure always gives the same bytes."""
    path = Path(path)
    fig.write_html(path, include_plotlyjs="directory", div_id=div_id, full_html=True)
    return path
