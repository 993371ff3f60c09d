"""Toy fixed-point problems for teaching (notebook 01): maps with a known spectrum, solved and classified.

`tanh_map` is a c-contraction, `linear_map` an affine map with eigenvalues spread over a chosen
interval (and its exact fixed point); `toy_outcome` tells converged, not converged and diverged
apart (a residual that grew 1000-fold is divergence, not convergence); `toy_figure` draws Picard
and Anderson on one map.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .solvers import NonFiniteError, SolverStats, solve

DIVERGENCE_GROWTH = 1e3  # a residual that grew this much over a solve means the iteration diverged


def _basis(dim: int, seed: int) -> tuple[torch.Tensor, torch.Generator]:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))  # (dim, dim) orthogonal
    return q, g


def tanh_map(dim: int, c: float, seed: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """f(z) = tanh(W z + b), W symmetric with eigenvalues in [c/2, c] (so ||W||_2 = c): a c-contraction."""
    q, g = _basis(dim, seed)
    w = q @ torch.diag(c * torch.linspace(0.5, 1, dim, dtype=torch.float64)) @ q.T  # (dim, dim)
    b = 0.1 * torch.randn(dim, generator=g, dtype=torch.float64)  # (dim,) small: tanh stays near its linear range
    return lambda z: torch.tanh(z @ w.T + b)  # (B, dim) -> (B, dim)


def linear_map(dim: int, eig_lo: float, eig_hi: float, seed: int = 0):
    """(f, z*): f(z) = A z + b with A's eigenvalues evenly spread over [eig_lo, eig_hi], and its exact fixed point."""
    q, g = _basis(dim, seed)
    a = q @ torch.diag(torch.linspace(eig_lo, eig_hi, dim, dtype=torch.float64)) @ q.T  # (dim, dim)
    b = torch.randn(dim, generator=g, dtype=torch.float64)  # (dim,)
    z_star = torch.linalg.solve(torch.eye(dim, dtype=torch.float64) - a, b)  # (dim,)
    return (lambda z: z @ a.T + b), z_star


SPECTRA = {"mixed": (-1.0, 1.0), "positive": (0.1, 1.0), "negative": (-1.0, -0.1)}  # eigenvalues / contraction


@dataclass
class ToyOutcome:
    """One solve of a toy map, classified."""

    status: str  # converged | not converged | diverged
    iterations: int
    rel_trace: list[float]  # sample 0
    sentence: str


def toy_outcome(f, z0: torch.Tensor, *, max_iter: int, tol: float, solver: str = "picard", damping: float = 1.0) -> ToyOutcome:
    """Solve and say what happened. Diverged: NaN/inf, or the absolute residual grew DIVERGENCE_GROWTH-fold."""
    try:
        _, st = solve(f, z0, max_iter=max_iter, tol=tol, solver=solver, damping=damping)
    except NonFiniteError:
        return ToyOutcome("diverged", max_iter, [], f"{solver}: diverged (the iterates overflowed to inf/NaN)")
    return _classify(st, solver, tol)


def _classify(st: SolverStats, solver: str, tol: float) -> ToyOutcome:
    trace = st.rel_trace[0].tolist()
    growth = float(st.abs_trace[:, -1].max() / st.abs_trace[:, 0].clamp_min(1e-300).min())
    if not math.isfinite(growth) or growth > DIVERGENCE_GROWTH:
        return ToyOutcome("diverged", st.iterations, trace,
                          f"{solver}: diverged (the residual grew {growth:.1e}-fold in {st.iterations} iterations)")
    if bool(st.converged.all()):
        return ToyOutcome("converged", st.iterations, trace,
                          f"{solver}: converged in {st.iterations} iterations (relative residual {trace[-1]:.1e} <= {tol:g})")
    return ToyOutcome("not converged", st.iterations, trace,
                      f"{solver}: not converged in {st.iterations} iterations (relative residual {trace[-1]:.1e} > {tol:g})")


def toy_figure(contraction: float = 0.9, spectrum: str = "mixed", damping: float = 1.0, anderson: bool = True, *,
               dim: int = 64, max_iter: int = 300, tol: float = 1e-12, seed: int = 0):
    """(figure, sentence): Picard (and Anderson) on `linear_map` with eigenvalues `SPECTRA[spectrum]` x contraction."""
    import matplotlib.pyplot as plt

    lo, hi = SPECTRA[spectrum]
    f, _ = linear_map(dim, lo * contraction, hi * contraction, seed)
    z0 = torch.zeros(1, dim, dtype=torch.float64)  # (1, dim)
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    sentences = []
    for solver in ("picard", "anderson") if anderson else ("picard",):
        out = toy_outcome(f, z0, max_iter=max_iter, tol=tol, solver=solver, damping=damping)
        sentences.append(out.sentence)
        if out.rel_trace:
            ax.semilogy(range(1, len(out.rel_trace) + 1), out.rel_trace, marker=".", label=f"{solver}: {out.status}")
    ax.set(xlabel="iteration", ylabel="relative residual",
           title=f"{spectrum} spectrum, c = {contraction:.2f}, damping = {damping:.2f}")
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, "; ".join(sentences) + "."
