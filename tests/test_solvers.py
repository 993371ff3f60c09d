import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fpdm_core.solvers import SOLVERS, NonFiniteError, SolverStats, solve


def make_contraction(bsz: int, dim: int, lo: float, hi: float, seed: int, dtype=torch.float64):
    """Per-sample affine map f(z) = A z + b, A = Q diag(s) Q^T with s in [lo, hi]; returns (f, z*)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(bsz, dim, dim, generator=g, dtype=dtype))  # (B, D, D)
    s = lo + (hi - lo) * torch.rand(bsz, dim, generator=g, dtype=dtype)  # (B, D)
    a = (q * s[:, None, :]) @ q.transpose(1, 2)  # (B, D, D), eigenvalues s, ||A||_2 = max s
    b = torch.randn(bsz, dim, generator=g, dtype=dtype)  # (B, D)
    eye = torch.eye(dim, dtype=dtype)
    z_star = torch.linalg.solve(eye - a, b)  # (B, D)

    def f(z):
        return torch.einsum("bij,bj->bi", a, z) + b  # (B, D)

    return f, z_star


def test_solvers_tuple():
    assert SOLVERS == ("picard", "anderson")


@pytest.mark.parametrize("k", [1, 2, 5, 13])
def test_fixed_count_picard_equals_explicit_loop(k):
    w = torch.randn(6, 6, generator=torch.Generator().manual_seed(0)) * 0.3

    def f(z):
        return torch.tanh(z @ w) + 0.1  # (B, T, D)

    z0 = torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(1))  # (B, T, D)
    expected = z0
    for _ in range(k):
        expected = f(expected)
    z, stats = solve(f, z0, max_iter=k)
    assert torch.equal(z, expected)
    assert stats.iterations == k
    assert stats.abs_trace.shape == (3, k) and stats.rel_trace.shape == (3, k)
    assert stats.abs_trace.dtype == torch.float32 and stats.abs_trace.device.type == "cpu"
    assert stats.final_abs.shape == (3,) and stats.final_rel.shape == (3,)


def test_trace_values_match_definition():
    def f(z):
        return 0.5 * z + 1.0

    z0 = torch.zeros(2, 3)
    _, stats = solve(f, z0, max_iter=2)
    # r_1 = f(0) - 0 = 1, r_2 = f(1) - 1 = 0.5 (per element, D=3)
    assert torch.allclose(stats.abs_trace, torch.tensor([[1.0, 0.5]] * 2) * math.sqrt(3))
    assert torch.allclose(stats.rel_trace, torch.tensor([[1.0, 0.5 / 1.5]] * 2), atol=1e-6)


def test_evaluation_count():
    calls = []

    def f(z):
        calls.append(1)
        return 0.5 * z

    for solver in SOLVERS:
        calls.clear()
        _, stats = solve(f, torch.ones(2, 3), max_iter=7, solver=solver)
        assert len(calls) == stats.iterations == 7


def test_picard_and_anderson_reach_fixed_point_anderson_faster():
    f, z_star = make_contraction(bsz=4, dim=16, lo=0.5, hi=0.9, seed=0)
    z0 = torch.zeros_like(z_star)
    zp, sp = solve(f, z0, max_iter=500, tol=1e-6, stop_mode="abs", solver="picard")
    za, sa = solve(f, z0, max_iter=500, tol=1e-6, stop_mode="abs", solver="anderson")
    assert sp.converged.all() and sa.converged.all()
    assert torch.allclose(zp, z_star, atol=1e-5)
    assert torch.allclose(za, z_star, atol=1e-5)
    # measured: picard 127, anderson 24
    assert sa.iterations * 3 <= sp.iterations


@settings(max_examples=25, deadline=None, database=None)
@given(
    seed=st.integers(0, 10_000),
    rho=st.floats(0.1, 0.95),
    dim=st.integers(1, 12),
    bsz=st.integers(1, 3),
)
def test_picard_residual_never_increases(seed, rho, dim, bsz):
    f, _ = make_contraction(bsz, dim, lo=0.0, hi=rho, seed=seed)
    z0 = torch.randn(bsz, dim, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    _, stats = solve(f, z0, max_iter=15)
    tr = stats.abs_trace  # (B, K)
    assert (tr[:, 1:] <= tr[:, :-1] * (1 + 1e-5) + 1e-12).all()


def test_damping_fixes_oscillating_map():
    b = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)

    def f(z):
        return -1.5 * z + b  # fixed point b / 2.5, |slope| > 1

    z0 = torch.zeros_like(b)
    _, undamped = solve(f, z0, max_iter=30, tol=1e-6, stop_mode="abs")
    assert not undamped.converged.any()
    assert undamped.final_abs.item() > 100 * undamped.abs_trace[0, 0].item()
    z, damped = solve(f, z0, max_iter=30, tol=1e-6, stop_mode="abs", damping=0.5)
    assert damped.converged.all() and damped.iterations < 30
    assert torch.allclose(z, b / 2.5, atol=1e-6)
    z2, _ = solve(f, z0, max_iter=2, damping=0.3)
    expected = z0
    for _ in range(2):
        expected = 0.7 * expected + 0.3 * f(expected)
    assert torch.allclose(z2, expected)


def test_warm_start_lowers_first_residual():
    f, z_star = make_contraction(bsz=3, dim=8, lo=0.5, hi=0.9, seed=1)
    warm = z_star + 1e-3 * torch.randn(z_star.shape, generator=torch.Generator().manual_seed(2), dtype=z_star.dtype)
    _, cold_stats = solve(f, torch.zeros_like(z_star), max_iter=1)
    _, warm_stats = solve(f, warm, max_iter=1)
    assert (warm_stats.abs_trace[:, 0] < cold_stats.abs_trace[:, 0]).all()


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("stop_mode", ["abs", "rel"])
def test_tol_stop_and_fixed_count_flags(solver, stop_mode):
    f, _ = make_contraction(bsz=2, dim=6, lo=0.3, hi=0.6, seed=3)
    z0 = torch.zeros(2, 6, dtype=torch.float64)
    _, stats = solve(f, z0, max_iter=200, tol=1e-4, stop_mode=stop_mode, solver=solver)
    assert stats.converged.dtype == torch.bool and stats.converged.all()
    assert stats.iterations < 200
    trace = stats.abs_trace if stop_mode == "abs" else stats.rel_trace
    assert (trace[:, -1] <= 1e-4).all() and (trace[:, -2] > 1e-4).any()
    _, fixed = solve(f, z0, max_iter=200, solver=solver)
    assert fixed.iterations == 200 and not fixed.converged.any()


def test_picard_gradient_flows():
    w = torch.tensor(0.5, requires_grad=True)
    z, _ = solve(lambda z: w * z + 1.0, torch.zeros(2, 3), max_iter=3)
    z.sum().backward()
    # z_3 = 1 + w + w^2, d/dw = 1 + 2w = 2 per element
    assert torch.allclose(w.grad, torch.tensor(12.0))


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_raises(solver, bad):
    def f(z):
        out = 0.5 * z + 1.0
        return out if f.calls < 2 else out + bad

    def counted(z):
        f.calls += 1
        return f(z)

    f.calls = -1
    with pytest.raises(NonFiniteError) as err:
        solve(counted, torch.ones(2, 3), max_iter=10, solver=solver, label="timestep 999")
    msg = str(err.value)
    assert "timestep 999" in msg and "iteration 3" in msg and "damping" in msg
    assert isinstance(err.value, FloatingPointError)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_iter": 0}, "max_iter"),
        ({"solver": "broyden"}, "unknown solver .broyden.; valid solvers: picard, anderson"),
        ({"stop_mode": "l2"}, "stop_mode"),
        ({"damping": 0.0}, "damping"),
        ({"damping": 1.5}, "damping"),
        ({"anderson_m": 0}, "anderson_m"),
        ({"tol": 0.0}, "tol"),
        ({"tol": -1e-3}, "tol"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"max_iter": 3} | kwargs
    with pytest.raises(ValueError, match=match):
        solve(lambda z: z, torch.zeros(1, 2), **args)


def test_stats_to_dict_is_json():
    f, _ = make_contraction(bsz=2, dim=4, lo=0.3, hi=0.6, seed=4)
    _, stats = solve(f, torch.zeros(2, 4, dtype=torch.float64), max_iter=50, tol=1e-3, solver="anderson")
    assert isinstance(stats, SolverStats)
    d = json.loads(json.dumps(stats.to_dict()))
    assert d["iterations"] == stats.iterations
    assert len(d["abs_trace"]) == 2 and len(d["abs_trace"][0]) == stats.iterations
    assert d["converged"] == [True, True]


def test_picard_matches_torchdeq_fixed_point_iter_including_traces():
    solver_mod = pytest.importorskip("torchdeq.solver")
    f, _ = make_contraction(bsz=2, dim=8, lo=0.5, hi=0.9, seed=5, dtype=torch.float32)
    z0 = torch.zeros(2, 8)
    ours, stats = solve(f, z0, max_iter=30)
    theirs, _, info = solver_mod.get_solver("fixed_point_iter")(f, z0, max_iter=30, tol=1e-12, stop_mode="abs")
    assert torch.equal(ours, theirs)
    # torchdeq's traces start with a placeholder for "no residual yet"; ours are float64 norms stored as float32
    assert torch.allclose(stats.abs_trace, info["abs_trace"][:, 1:].float(), rtol=1e-5)
    assert torch.allclose(stats.rel_trace, info["rel_trace"][:, 1:].float(), rtol=1e-5)


@pytest.mark.parametrize("tol", [1e-2, 1e-3])
def test_anderson_reaches_the_fixed_point_like_torchdeq_in_no_more_iterations(tol):
    """Both stop at `tol` (abs); for a contraction of at most 0.9 the error is then at most 10 x tol.

    torchdeq's float32 Anderson (absolute ridge) stalls near 1e-4 on this map; ours keeps converging.
    """
    solver_mod = pytest.importorskip("torchdeq.solver")
    f, z_star = make_contraction(bsz=2, dim=8, lo=0.5, hi=0.9, seed=5, dtype=torch.float32)
    z0 = torch.zeros_like(z_star)
    ours, stats = solve(f, z0, max_iter=100, tol=tol, stop_mode="abs", solver="anderson")
    theirs, _, info = solver_mod.get_solver("anderson")(f, z0, max_iter=100, tol=tol, stop_mode="abs")
    assert bool(stats.converged.all()) and stats.iterations <= int(info["nstep"].max())
    assert float((ours - z_star).abs().max()) <= 10 * tol
    assert float((theirs - z_star).abs().max()) <= 10 * tol


# ----------------------------------------------------------------------------- divergence
def test_an_expanding_map_is_reported_as_divergence_not_convergence():
    """Contraction factor 1.5: ||f(z)|| overflows float32 norms long before f(z) does (the old 'converged' bug)."""
    z0 = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.float32, torch.bfloat16):
        with pytest.raises(NonFiniteError, match="non-finite fixed-point residual") as e:
            solve(lambda z: 1.5 * z, z0.to(dtype), max_iter=300, tol=1e-3)
        assert "\n" not in str(e.value)


@settings(max_examples=40, deadline=None)
@given(lo=st.floats(1.05, 2.0), spread=st.floats(0.0, 2.0), damping=st.floats(0.3, 1.0), dim=st.integers(1, 12),
       seed=st.integers(0, 2**16), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_expanding_linear_maps_never_converge(lo, spread, damping, dim, seed, dtype):
    """f(z) = A z, A symmetric with eigenvalues in [lo, lo + spread], all > 1: the relative residual
    ||(A - I) z|| / ||A z|| never drops below (lo - 1) / (lo + spread), and every damped step
    I + damping (A - I) expands. Below that tolerance the solver must run out of iterations with
    a strictly growing residual, or raise NonFiniteError once the iterates overflow; never "converge"."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))  # (D, D)
    eig = lo + spread * torch.rand(dim, generator=g, dtype=torch.float64)  # (D,)
    a = ((q * eig) @ q.T).to(dtype)  # (D, D)
    tol = 0.5 * (lo - 1) / (lo + spread)
    z0 = torch.randn(3, dim, generator=g).to(dtype)  # (B, D)
    try:
        _, stats = solve(lambda z: z @ a, z0, max_iter=300, tol=tol, damping=damping)
    except NonFiniteError:
        return
    assert stats.iterations == 300 and not bool(stats.converged.any())
    assert bool((stats.abs_trace[:, 1:] > stats.abs_trace[:, :-1]).all())
