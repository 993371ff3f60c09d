"""Fixed-point solvers (Picard and Anderson) for Fixed Point Diffusion Models.

`solve(f, z0, ...)` iterates a batched map f: (B, ...) -> (B, ...) towards a
fixed point z* = f(z*). Every iteration evaluates f exactly once; the residual
of iteration k is r_k = f(z_{k-1}) - z_{k-1}, measured per sample over all
non-batch dimensions in float64 (float32 on MPS, which has no float64), so the norm
of a large but finite iterate never overflows; a non-finite norm raises NonFiniteError,
so a diverging map is never reported as converged.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch

SOLVERS = ("picard", "anderson")
STOP_MODES = ("abs", "rel")
_REL_EPS = 1e-9


class NonFiniteError(FloatingPointError):
    """A fixed-point iteration produced NaN or inf (or an iterate whose norm overflows)."""


@dataclass
class SolverStats:
    """Per-sample residual traces of one `solve` call."""

    abs_trace: torch.Tensor  # (B, K) float32, CPU: ||f(z_k) - z_k||
    rel_trace: torch.Tensor  # (B, K) float32, CPU: ||f(z_k) - z_k|| / (||f(z_k)|| + 1e-9)
    iterations: int  # K, number of f evaluations
    converged: torch.Tensor  # (B,) bool: last residual <= tol

    @property
    def final_abs(self) -> torch.Tensor:
        """(B,) absolute residual of the last iteration."""
        return self.abs_trace[:, -1]

    @property
    def final_rel(self) -> torch.Tensor:
        """(B,) relative residual of the last iteration."""
        return self.rel_trace[:, -1]

    def to_dict(self) -> dict:
        """Plain python lists/numbers (JSON-ready)."""
        return {
            "iterations": self.iterations,
            "abs_trace": self.abs_trace.tolist(),
            "rel_trace": self.rel_trace.tolist(),
            "final_abs": self.final_abs.tolist(),
            "final_rel": self.final_rel.tolist(),
            "converged": self.converged.tolist(),
        }


def _validate(z0, max_iter, tol, stop_mode, solver, damping, anderson_m, anderson_lam, anderson_beta):
    if z0.dim() < 1:
        raise ValueError("z0 must have a leading batch dimension")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; valid solvers: {', '.join(SOLVERS)}")
    if stop_mode not in STOP_MODES:
        raise ValueError(f"unknown stop_mode {stop_mode!r}; valid modes: {', '.join(STOP_MODES)}")
    if not 0.0 < damping <= 1.0:
        raise ValueError(f"damping must be in (0, 1], got {damping}")
    if anderson_m < 1:
        raise ValueError(f"anderson_m must be >= 1, got {anderson_m}")
    if not anderson_lam >= 0.0:
        raise ValueError(f"anderson_lam must be >= 0, got {anderson_lam}")
    if not anderson_beta > 0.0:
        raise ValueError(f"anderson_beta must be > 0, got {anderson_beta}")
    if tol is not None and not tol > 0.0:
        raise ValueError(f"tol must be > 0 (or None for a fixed iteration count), got {tol}")


def _residuals(fz: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Per-sample (abs, rel) residual norms as float32, detached, and whether every norm is finite.

    Computed in float64 (float32 on MPS): in float32, ||f(z)|| overflows to inf while the
    difference is still finite, which made the relative residual 0 for a diverging map.
    """
    dtype = torch.float32 if fz.device.type == "mps" else torch.float64
    fzw = fz.detach().flatten(1).to(dtype)  # (B, N)
    abs_res = torch.linalg.vector_norm(fzw - z.detach().flatten(1).to(dtype), dim=1)  # (B,)
    f_norm = torch.linalg.vector_norm(fzw, dim=1)  # (B,)
    rel_res = abs_res / (f_norm + _REL_EPS)  # (B,)
    abs32, rel32 = abs_res.float(), rel_res.float()  # (B,), (B,)
    finite = bool(torch.isfinite(f_norm).all() & torch.isfinite(abs32).all() & torch.isfinite(rel32).all())
    return abs32, rel32, finite


def _anderson_step(xs: deque, fs: deque, lam: float, beta: float) -> torch.Tensor:
    """Type-II Anderson mixing of the stored history; returns (B, N).

    Solves min ||alpha @ G||^2 + lam * mean(diag(G G^T)) * ||alpha||^2 s.t. sum(alpha) = 1
    through the bordered system; the ridge is scaled by the residual energy so it
    stays scale-invariant (an absolute ridge stalls once ||G||^2 << lam).
    """
    x = torch.stack(tuple(xs), dim=1)  # (B, n, N)
    fx = torch.stack(tuple(fs), dim=1)  # (B, n, N)
    g = fx - x  # (B, n, N)
    bsz, n = g.shape[:2]
    gram = torch.bmm(g, g.transpose(1, 2)).double()  # (B, n, n)
    scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(1e-30)[:, None, None]  # (B, 1, 1)
    h = torch.zeros(bsz, n + 1, n + 1, dtype=torch.float64, device=g.device)  # (B, n+1, n+1)
    h[:, 0, 1:] = 1.0
    h[:, 1:, 0] = 1.0
    h[:, 1:, 1:] = gram + lam * scale * torch.eye(n, dtype=torch.float64, device=g.device)
    y = torch.zeros(bsz, n + 1, 1, dtype=torch.float64, device=g.device)  # (B, n+1, 1)
    y[:, 0] = 1.0
    alpha = torch.linalg.solve(h, y)[:, 1:].transpose(1, 2).to(g.dtype)  # (B, 1, n), sums to 1
    mixed_f = torch.bmm(alpha, fx)[:, 0]  # (B, N)
    if beta == 1.0:
        return mixed_f
    return beta * mixed_f + (1.0 - beta) * torch.bmm(alpha, x)[:, 0]  # (B, N)


def solve(
    f: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    *,
    max_iter: int,
    tol: float | None = None,
    stop_mode: str = "rel",
    solver: str = "picard",
    damping: float = 1.0,
    anderson_m: int = 5,
    anderson_lam: float = 1e-4,
    anderson_beta: float = 1.0,
    label: str = "",
) -> tuple[torch.Tensor, SolverStats]:
    """Iterate z <- f(z) from z0; return the latest iterate and its stats.

    solver: one of SOLVERS. tol=None runs exactly max_iter evaluations; otherwise stops once every
    sample's `stop_mode` residual is <= tol. `damping` applies to Picard,
    `anderson_*` (history m, relative ridge lambda, mixing beta) to Anderson. Autograd
    follows the caller's grad mode; stats are detached.
    """
    _validate(z0, max_iter, tol, stop_mode, solver, damping, anderson_m, anderson_lam, anderson_beta)
    work_dtype = torch.promote_types(z0.dtype, torch.float32)
    xs: deque = deque(maxlen=anderson_m)
    fs: deque = deque(maxlen=anderson_m)
    abs_hist: list[torch.Tensor] = []
    rel_hist: list[torch.Tensor] = []
    z = z0  # (B, ...)
    done = False
    for k in range(1, max_iter + 1):
        fz = f(z)  # (B, ...)
        if fz.shape != z.shape:
            raise ValueError(f"f changed the shape from {tuple(z.shape)} to {tuple(fz.shape)}")
        abs_res, rel_res, finite = _residuals(fz, z)  # (B,), (B,)
        if not finite:
            where = f"{label}, " if label else ""
            raise NonFiniteError(
                f"non-finite fixed-point residual ({where}iteration {k}/{max_iter}, solver={solver}); "
                "try a lower learning rate, damping < 1, solver='picard', or fewer iterations"
            )
        abs_hist.append(abs_res)
        rel_hist.append(rel_res)
        if tol is not None:
            done = bool(((abs_res if stop_mode == "abs" else rel_res) <= tol).all())
        if solver == "picard":
            z = fz if damping == 1.0 else (1.0 - damping) * z + damping * fz  # (B, ...)
        else:
            xs.append(z.flatten(1).to(work_dtype))  # (B, N)
            fs.append(fz.flatten(1).to(work_dtype))  # (B, N)
            if k == 1:
                z = fz  # plain Picard step
            else:
                z = _anderson_step(xs, fs, anderson_lam, anderson_beta).view(z0.shape).to(z0.dtype)  # (B, ...)
        if done:
            break
    abs_trace = torch.stack(abs_hist, dim=1).cpu()  # (B, K)
    rel_trace = torch.stack(rel_hist, dim=1).cpu()  # (B, K)
    final = abs_trace[:, -1] if stop_mode == "abs" else rel_trace[:, -1]  # (B,)
    converged = final <= tol if tol is not None else torch.zeros_like(final, dtype=torch.bool)
    return z, SolverStats(abs_trace, rel_trace, len(abs_hist), converged)
