"""Benchmarks that measure the paper's claims on this machine: `python -m fpdm_core.bench --help`.

One sub-command per claim; each writes `<out>/bench/<name>.json` (numbers, settings, seeds,
repeats, spread and the machine) and a matplotlib figure `<out>/<name>.png`:

  params       parameters of FPDM vs DiT for every preset incl. XL/2 (meta device)   paper: 87% fewer
  memory       peak memory of one training step, each configuration in a fresh process   paper: 60% less
  speed        training steps/s, sampling images/s, fixed-point iteration vs DiT block, FLOP/s vs matmul peak
  quality      class accuracy and FCD vs sampling budget: DiT, FPDM, timestep smoothing, reuse,
               allocation schedules, Picard vs Anderson                  paper: better when compute is limited
  convergence  relative residual per (timestep, iteration): reuse on/off, Picard vs Anderson
  ablations    pre/post depth; S-JFB ranges vs JFB vs full backprop after equal training time (slow)
  all          every benchmark above, then `report`
  report       `<out>/RESULTS.md` from the JSON files alone (generated: never edit it by hand)

Modes: default = the full settings (hours on a 2-core CPU: quality samples 1000 images per point,
ablations train 10 minutes per run, and `memory` measures FPDM-XL/2 vs DiT-XL/2 at batch 8, which
needs about 20 GiB free); `--quick` = minutes (FPDM-FM-M vs DiT-FM-M, an XL/2-layout pair at hidden
256, budgets of 5/10/20 DiT steps, 200 images, 10 s ablation runs of a tiny model); `--tiny` =
CI-sized settings for the tests (not evidence). Every mode also estimates the XL/2 training step on
the meta device (no memory used). Timings are medians over `repeats`; spread = (max - min) / median.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .budget import CostModel
from .models import FPDM, PRESETS, ModelConfig, build_model, count_parameters

COMMANDS = ("params", "memory", "speed", "quality", "convergence", "ablations")
PAPER = {"param_reduction_pct": 87.0, "memory_saving_pct": 60.0, "dit_steps": 20, "iteration_vs_block": 1.36}
GiB, MiB = 2**30, 2**20


# ----------------------------------------------------------------------------- settings per mode
@dataclass(frozen=True)
class Scale:
    """The sizes of every benchmark in one mode (full, quick or tiny)."""

    name: str
    repeats: int
    fpdm: str  # the shipped-size pair compared in `memory` and `speed`
    dit: str
    mem_batch: int
    mem_sweep: tuple[int, ...]  # n_grad values, n_no_grad = 10
    mem_extras: bool  # also recomputation and full backprop (22 iterations)
    mem_paper: bool  # measure FPDM-XL/2 vs DiT-XL/2 (batch 8) in fresh processes (else: estimate only)
    mem_wide: int | None  # hidden size of a reduced-width XL/2-layout pair measured at batch 8; None: skip
    mem_jobs: int  # fresh processes measured at once (each reads its own peak; only `step_s` feels the others)
    train_batch: int
    train_steps: int  # training steps per repeat
    sample_batch: int
    speed_budgets: tuple[int, ...]  # in DiT-step equivalents
    matmul_sizes: tuple[int, ...]
    budgets: tuple[int, ...]  # quality, in DiT-step equivalents (budget = k x DiT depth block evaluations)
    n_images: int
    real_n: int  # real test images behind the FCD reference statistics
    conv_batch: int
    conv_steps: int
    conv_iterations: int
    abl_model: str
    abl_minutes: float  # training time per ablation run
    abl_max_steps: int | None
    abl_batch: int
    dataset: str  # training data of `speed` and `ablations`; "digits" (scikit-learn) loads at once
    data_subset: int | None


_SHIPPED_SIZE = dict(fpdm="FPDM-FM-M", dit="DiT-FM-M", mem_batch=128, mem_sweep=(1, 3, 6, 12), mem_extras=True,
                     mem_jobs=1, train_batch=128, speed_budgets=(5, 20), matmul_sizes=(1024, 2048),
                     dataset="fashion-mnist", data_subset=None)
SCALES = {
    "full": Scale("full", repeats=5, **_SHIPPED_SIZE, mem_paper=True, mem_wide=None,
                  train_steps=5, sample_batch=100,
                  budgets=(2, 3, 5, 10, 20, 40), n_images=1000, real_n=10000,
                  conv_batch=64, conv_steps=20, conv_iterations=12,
                  abl_model="FPDM-FM-S", abl_minutes=10.0, abl_max_steps=None, abl_batch=128),
    "quick": Scale("quick", repeats=3, **_SHIPPED_SIZE, mem_paper=False, mem_wide=256,
                   train_steps=3, sample_batch=50,
                   budgets=(5, 10, 20), n_images=200, real_n=10000,
                   conv_batch=32, conv_steps=20, conv_iterations=12,
                   abl_model="FPDM-tiny", abl_minutes=1 / 6, abl_max_steps=None, abl_batch=64),
    "tiny": Scale("tiny", repeats=1, fpdm="FPDM-tiny", dit="DiT-tiny",
                  mem_batch=8, mem_sweep=(1, 12), mem_extras=False, mem_jobs=4, mem_paper=False, mem_wide=None,
                  train_batch=8, train_steps=2, sample_batch=4, speed_budgets=(2,), matmul_sizes=(256,),
                  budgets=(2, 5), n_images=20, real_n=500,
                  conv_batch=4, conv_steps=4, conv_iterations=4,
                  abl_model="FPDM-tiny", abl_minutes=0.05, abl_max_steps=3, abl_batch=16,
                  dataset="digits", data_subset=512),
}
ABLATION_DEPTH = 8  # block evaluations per denoising step when ablation models are sampled (equal budgets)


@dataclass
class Context:
    out: Path
    scale: Scale
    seed: int
    device: torch.device
    precision: str  # training precision in `speed` and `ablations` (sampling runs in float32)
    fpdm_path: Path | None
    dit_path: Path | None
    classifier_path: Path | None
    minutes: float | None
    command: str

    @property
    def repeats(self) -> int:
        return self.scale.repeats


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- machine, timing, JSON
def machine_info(device: torch.device | str = "cpu") -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    mem_total = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_total = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0]) * 1024
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, text=True,
                                capture_output=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    device = torch.device(device)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(mem_total / GiB, 1) if mem_total else None,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def spread(values: list[float]) -> dict:
    """Median, min, max and relative spread (max - min) / median of repeated measurements."""
    med = statistics.median(values)
    return {"median": med, "min": min(values), "max": max(values),
            "spread_pct": 100.0 * (max(values) - min(values)) / med if med else 0.0, "values": list(values)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeats: int, *, inner: int = 1, warmup: int = 1,
          device: torch.device = torch.device("cpu")) -> list[float]:
    """Seconds per call of `fn`: `repeats` values, each the mean over `inner` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        _sync(device)
        out.append((time.perf_counter() - start) / inner)
    return out


def _jsonable(x):
    """Plain JSON: numpy scalars to python, NaN/inf to None, tuples to lists, paths to strings."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Path):
        return str(x)
    return x


def write_result(ctx: Context, name: str, settings: dict, results: dict, started: float) -> Path:
    data = {
        "name": name,
        "mode": ctx.scale.name,
        "command": ctx.command,
        "machine": machine_info(ctx.device),
        "seeds": [ctx.seed],
        "repeats": ctx.repeats,
        "settings": settings,
        "results": results,
        "figure": f"{name}.png",
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    path = ctx.out / "bench" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(data), indent=1, allow_nan=False) + "\n")
    _log(f"wrote {path} ({data['elapsed_s']} s)")
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(ctx: Context, name: str, fig) -> None:
    ctx.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(ctx.out / f"{name}.png", dpi=110)
    _pyplot().close(fig)


# ----------------------------------------------------------------------------- params
PARAM_PAIRS = (("FPDM-tiny", "DiT-tiny"), ("FPDM-FM-S", "DiT-FM-S"), ("FPDM-FM-M", "DiT-FM-M"),
               ("FPDM-XL/2", "DiT-XL/2"))


def param_breakdown(config: ModelConfig | str, **overrides) -> dict[str, int]:
    """Parameters per top-level part of a model (meta device)."""
    with torch.device("meta"):
        model = build_model(config, **overrides)
    parts: dict[str, int] = {}
    for name, p in model.named_parameters():
        part = name.split(".")[0]
        part = "fixed_point" if part.startswith("block_fixed_point") else part
        parts[part] = parts.get(part, 0) + p.numel()
    return parts


def bench_params(ctx: Context) -> Path:
    started = time.perf_counter()
    rows = []
    for fpdm, dit in PARAM_PAIRS:
        pf, pd = count_parameters(fpdm), count_parameters(dit)
        rows.append({"fpdm": fpdm, "dit": dit, "fpdm_params": pf, "dit_params": pd,
                     "reduction_pct": 100 * (1 - pf / pd), "dit_depth": PRESETS[dit].depth,
                     "pre_post": f"{PRESETS[fpdm].pre_depth}/{PRESETS[fpdm].post_depth}"})
    pd = rows[-1]["dit_params"]  # DiT-XL/2
    for k in (2, 4):  # the paper's other XL/2 splits
        pf = count_parameters("FPDM-XL/2", pre_depth=k, post_depth=k)
        rows.append({"fpdm": f"FPDM-XL/2 ({k}/{k})", "dit": "DiT-XL/2", "fpdm_params": pf, "dit_params": pd,
                     "reduction_pct": 100 * (1 - pf / pd), "pre_post": f"{k}/{k}", "dit_depth": 28})
    breakdown = {name: param_breakdown(name) for name in ("FPDM-XL/2", "DiT-XL/2")}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["dit_params"] for r in rows], 0.4, label="DiT", color="#888")
    ax.bar(x + 0.2, [r["fpdm_params"] for r in rows], 0.4, label="FPDM", color="#2a7ab9")
    for i, r in enumerate(rows):
        ax.text(i + 0.2, r["fpdm_params"] * 1.15, f"-{r['reduction_pct']:.1f}%", ha="center", fontsize=8)
    ax.set_xticks(x, [r["fpdm"].replace("FPDM-", "") for r in rows], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("parameters")
    ax.set_title("Parameters: FPDM vs DiT of the same width (label: reduction)")
    ax.legend()
    fig.tight_layout()
    _save_figure(ctx, "params", fig)
    return write_result(ctx, "params", {"counted_on": "meta device (no weights allocated)"},
                        {"pairs": rows, "breakdown": breakdown}, started)


# ----------------------------------------------------------------------------- memory
def saved_tensor_bytes(model: torch.nn.Module, fn):
    """(bytes of the tensors autograd saves for backward while `fn()` runs, fn's result).

    Each storage counts once; parameters are left out. Works on the meta device (sizes only).
    Tensors saved inside `torch.utils.checkpoint` regions are not seen (that is their point).
    """
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s._cdata not in params and s._cdata not in seen:
            seen[s._cdata] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def _training_loss(model, diffusion, batch: int, *, n_no_grad: int = 0, n_grad: int = 0, recompute: bool = False,
                   seed: int = 0, device="cpu") -> torch.Tensor:
    """The loss of one training batch of random data (as `train.Trainer` computes it, float32)."""
    from .train import fpdm_train_forward

    c = model.config
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, c.in_channels, c.input_size, c.input_size, generator=gen).clamp(-1, 1).to(device)
    noise = torch.randn(x0.shape, generator=gen).to(device)  # (B, C, H, W)
    t = torch.randint(0, diffusion.num_timesteps, (batch,), generator=gen).to(device)  # (B,)
    y = torch.randint(0, max(c.num_classes, 1), (batch,), generator=gen).to(device)  # (B,)
    if isinstance(model, FPDM):
        def model_fn(x_t, tt):
            return fpdm_train_forward(model, x_t, tt, y, n_no_grad, n_grad, recompute_iters=recompute, generator=gen)
    else:
        def model_fn(x_t, tt):
            return model(x_t, tt, y, generator=gen)
    return diffusion.training_loss(model_fn, x0, t, noise)[0]


@functools.lru_cache(maxsize=8)
def _meta_model(config: ModelConfig):
    """A model on the meta device (shapes only), in training mode; cached per config."""
    with torch.device("meta"):
        model = build_model(config)
    model.to("meta").train()  # the positional table is built on the CPU
    model.check_inputs = lambda *a: None  # meta tensors hold no values to check
    return model


def estimate_step_memory(config: ModelConfig, batch: int, *, n_no_grad: int = 0, n_grad: int = 0,
                         recompute: bool = False) -> dict:
    """Analytic memory of one float32 training step, traced on the meta device (nothing allocated).

    weights + grads + 2 AdamW moments = 4 x parameter bytes; activations = the tensors autograd saves.
    """
    from .diffusion import GaussianDiffusion

    model = _meta_model(config)
    diffusion = GaussianDiffusion().to("meta")
    params = sum(p.numel() for p in model.parameters())
    saved, _ = saved_tensor_bytes(model, lambda: _training_loss(model, diffusion, batch, n_no_grad=n_no_grad,
                                                                 n_grad=n_grad, recompute=recompute, device="meta"))
    return {"params": params, "weights_grads_adamw_bytes": 16 * params, "activation_bytes": saved,
            "total_bytes": 16 * params + saved}


def _peak_rss_bytes() -> int:
    """Peak resident memory of this process image: VmHWM on Linux, else ru_maxrss.

    ru_maxrss alone misleads in a child process: Linux carries the parent's peak over fork + exec.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) * 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _reset_peak_rss() -> bool:
    """Lower the peak-RSS mark to the current RSS (Linux >= 4.0), so import-time spikes do not hide a small step."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _warm_up(device: torch.device) -> None:
    """Run torch's lazy set-up before the baseline: the first AdamW step alone imports ~800 modules (~70 MB)."""
    from torch.utils.checkpoint import checkpoint

    from .models import DiTBlock

    block = DiTBlock(8, 2, 4.0).to(device)
    x = torch.randn(2, 4, 8, device=device, requires_grad=True)  # (B, N, D)
    c = torch.randn(2, 8, device=device)  # (B, D)
    (block(x, c).sum() + checkpoint(block, x, c, use_reentrant=False).sum()).backward()
    torch.nn.utils.clip_grad_norm_(block.parameters(), 1.0)
    torch.optim.AdamW(block.parameters()).step()


def memstep(spec: dict) -> dict:
    """One full training step in THIS process; returns its peak memory over the post-import baseline.

    Run it in a fresh process (`python -m fpdm_core.bench _memstep SPEC`): the peak is a process
    high-water mark, the baseline is taken after imports and torch's lazy set-up. The AdamW moments
    are allocated first (a step on zero gradients, which leaves the weights unchanged), so the
    measured step holds weights, moments, gradients and activations together, as every later step does.
    """
    from . import train  # noqa: F401 - every import happens before the baseline
    from .diffusion import GaussianDiffusion

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    _warm_up(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        measure = "torch.cuda.max_memory_allocated"
    else:
        measure = "peak RSS (VmHWM) delta" + (", peak reset after imports" if _reset_peak_rss() else "")
    base = torch.cuda.memory_allocated(device) if cuda else _peak_rss_bytes()
    config = ModelConfig.from_dict(spec["config"])
    torch.manual_seed(spec["seed"])
    model = build_model(config).to(device).train()
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # allocates both moments; zero gradients and no weight decay leave the weights as they are
    opt.zero_grad(set_to_none=True)
    diffusion = GaussianDiffusion().to(device)
    start = time.perf_counter()
    saved, loss = saved_tensor_bytes(model, lambda: _training_loss(
        model, diffusion, spec["batch"], n_no_grad=spec["n_no_grad"], n_grad=spec["n_grad"],
        recompute=spec["recompute"], seed=spec["seed"], device=device))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    _sync(device)
    step_s = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) if cuda else _peak_rss_bytes()) - base
    return {"peak_bytes": peak, "baseline_bytes": base, "params": params, "weights_grads_adamw_bytes": 16 * params,
            "activation_bytes": peak - 16 * params, "saved_tensor_bytes": saved, "step_s": step_s,
            "loss": loss.item(), "measure": measure}


def _available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(Path("/proc/meminfo").read_text().split("MemAvailable:")[1].split()[0]) * 1024
    return None


def run_memstep(spec: dict, timeout: float) -> dict:
    """`memstep(spec)` in a fresh Python process; {"error": ...} when it fails."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "fpdm_core.bench", "_memstep", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        why = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit code {proc.returncode}"
        return {"error": f"{why}: {proc.stderr.strip()[-500:]}"}
    return json.loads(lines[-1])


def memory_configs(sweep: tuple[int, ...], extras: bool = True) -> list[dict]:
    """The training-step configurations of one setting; a row that plays several roles appears once."""
    wanted = [("dit", dict(kind="dit", n_no_grad=0, n_grad=0, recompute=False))]
    wanted += [("sweep", dict(kind="fpdm", n_no_grad=10, n_grad=g, recompute=False)) for g in sweep]
    wanted += [("average", dict(kind="fpdm", n_no_grad=5, n_grad=6, recompute=False)),
               ("worst", dict(kind="fpdm", n_no_grad=10, n_grad=12, recompute=False))]
    if extras:
        wanted += [("recompute", dict(kind="fpdm", n_no_grad=10, n_grad=12, recompute=True)),
                   ("full backprop", dict(kind="fpdm", n_no_grad=0, n_grad=22, recompute=False))]
    rows: dict[tuple, dict] = {}
    for role, cfg in wanted:
        key = tuple(cfg.values())
        rows.setdefault(key, {**cfg, "roles": []})["roles"].append(role)
    for row in rows.values():
        if row["kind"] == "dit":
            row["label"] = "DiT"
        else:
            row["label"] = (f"FPDM {'recompute ' if row['recompute'] else ''}"
                            f"n_ng={row['n_no_grad']} n_g={row['n_grad']}")
    return list(rows.values())


def memory_settings(scale: Scale) -> list[dict]:
    xl_f, xl_d = PRESETS["FPDM-XL/2"], PRESETS["DiT-XL/2"]
    out = [dict(name="small", title=f"{scale.fpdm} vs {scale.dit}, batch {scale.mem_batch}", fpdm=PRESETS[scale.fpdm],
                dit=PRESETS[scale.dit], batch=scale.mem_batch, sweep=scale.mem_sweep, extras=scale.mem_extras,
                measure=True)]
    if scale.mem_wide:
        w = scale.mem_wide
        out.append(dict(name="xl-like", title=f"XL/2 layout (28 blocks, 256 tokens) at hidden {w}, batch 8",
                        fpdm=replace(xl_f, hidden_size=w, num_heads=max(1, w // 64)),
                        dit=replace(xl_d, hidden_size=w, num_heads=max(1, w // 64)),
                        batch=8, sweep=(), extras=False, measure=True))
    out.append(dict(name="paper", title="FPDM-XL/2 vs DiT-XL/2, 256 tokens, batch 8 (the paper's scale)",
                    fpdm=xl_f, dit=xl_d, batch=8, sweep=(1, 3, 6, 12), extras=True, measure=scale.mem_paper))
    return out


def memory_savings(rows: list[dict], key: str) -> dict:
    """Percent less memory than DiT for the `worst` and `average` S-JFB rows (by `key`)."""
    dit = next(r for r in rows if "dit" in r["roles"])
    out = {}
    for role in ("worst", "average"):
        row = next((r for r in rows if role in r["roles"]), None)
        if row and row.get(key) and dit.get(key):
            out[role] = 100 * (1 - row[key] / dit[key])
    return out


def bench_memory(ctx: Context) -> Path:
    from concurrent.futures import ThreadPoolExecutor

    started = time.perf_counter()
    threads = torch.get_num_threads()
    settings_out = []
    for s in memory_settings(ctx.scale):
        rows = memory_configs(s["sweep"], s["extras"])
        todo = []
        for row in rows:
            cfg = s["dit"] if row["kind"] == "dit" else s["fpdm"]
            row["batch"] = s["batch"]
            est = estimate_step_memory(cfg, s["batch"], n_no_grad=row["n_no_grad"], n_grad=row["n_grad"],
                                       recompute=row["recompute"])
            row["estimate"] = est
            row["estimate_bytes"] = est["total_bytes"]
            if not s["measure"]:
                continue
            need, avail = 1.25 * est["total_bytes"] + 0.5 * GiB, _available_bytes(ctx.device)
            if avail is not None and need > avail:
                row["error"] = f"skipped: needs about {need / GiB:.1f} GiB, {avail / GiB:.1f} GiB available"
                _log(f"memory {s['name']} {row['label']}: {row['error']}")
                continue
            spec = {"config": cfg.to_dict(), "batch": s["batch"], "n_no_grad": row["n_no_grad"],
                    "n_grad": row["n_grad"], "recompute": row["recompute"], "device": str(ctx.device),
                    "threads": threads, "seed": ctx.seed}
            todo.append((row, spec))
        jobs = 1 if s["name"] == "paper" else ctx.scale.mem_jobs
        _log(f"memory {s['name']}: {len(todo)} configurations, each in a fresh process ({jobs} at a time)")
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            timeout = 3600 if s["name"] == "paper" else 900
            for (row, _), res in zip(todo, pool.map(lambda rs: run_memstep(rs[1], timeout), todo)):
                row.update(res)
        measured = s["measure"] and all("peak_bytes" in r for r in rows)
        settings_out.append({"name": s["name"], "title": s["title"], "batch": s["batch"], "measured": measured,
                             "fpdm": s["fpdm"].to_dict(), "dit": s["dit"].to_dict(), "rows": rows,
                             "savings_measured_pct": memory_savings(rows, "peak_bytes") if measured else {},
                             "savings_estimated_pct": memory_savings(rows, "estimate_bytes")})
    _plot_memory(ctx, settings_out)
    notes = ("peak = high-water mark of one training step over the baseline after imports and torch's lazy set-up, "
             "in a fresh process (CPU: peak RSS from /proc/self/status VmHWM, which unlike ru_maxrss does not "
             "inherit the parent's peak; CUDA: torch.cuda.max_memory_allocated); "
             "weights+grads+AdamW = 16 bytes/parameter (float32); activations = peak - that (includes temporaries); "
             "estimates trace the step on the meta device and count the tensors autograd saves; "
             "EMA weights (4 bytes/parameter more for both models) are not included")
    return write_result(ctx, "memory", {"precision": "fp32", "device": str(ctx.device), "threads": threads,
                                        "notes": notes}, {"settings": settings_out}, started)


def _plot_memory(ctx: Context, settings: list[dict]) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(settings) + 1, figsize=(5 * (len(settings) + 1), 4.2))
    for ax, s in zip(axes, settings):
        key = "peak_bytes" if s["measured"] else "estimate_bytes"
        rows = [r for r in s["rows"] if r.get(key) is not None]
        if not rows:
            ax.set_visible(False)
            continue
        unit, uname = (GiB, "GiB") if max(r[key] for r in rows) >= GiB else (MiB, "MiB")
        fixed = [r["estimate"]["weights_grads_adamw_bytes"] / unit for r in rows]
        act = [max(r[key] / unit - f, 0) for r, f in zip(rows, fixed)]
        x = np.arange(len(rows))
        ax.bar(x, fixed, color="#888", label="weights + grads + AdamW (16 B/param)")
        ax.bar(x, act, bottom=fixed, color="#2a7ab9", label="activations (the rest)")
        ax.set_xticks(x, [r["label"].replace("FPDM ", "").replace(" ", "\n") for r in rows], fontsize=7)
        ax.set_ylabel(uname)
        ax.set_title(f"{s['title']}: {'measured' if s['measured'] else 'estimated'}", fontsize=8)
        ax.legend(fontsize=7)
    ax = axes[-1]
    for s in settings:
        key = "peak_bytes" if s["measured"] else "estimate_bytes"
        dit = next(r for r in s["rows"] if "dit" in r["roles"])
        sweep = sorted((r["n_grad"], r) for r in s["rows"] if "sweep" in r["roles"] and r.get(key))
        if not sweep or not dit.get(key):
            continue
        def act(r):
            return r[key] - r["estimate"]["weights_grads_adamw_bytes"]

        ax.plot([g for g, _ in sweep], [act(r) / act(dit) for _, r in sweep], marker="o",
                label=f"{s['name']} ({'measured' if s['measured'] else 'estimated'})")
    ax.axhline(1, color="k", lw=0.8, ls="--")
    ax.set_xlabel("n_grad (iterations with gradient)")
    ax.set_ylabel("activation memory / DiT's")
    ax.set_title("activations grow with n_grad", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save_figure(ctx, "memory", fig)


# ----------------------------------------------------------------------------- speed
def train_step_flops(cost: CostModel, batch: int, n_no_grad: int = 0, n_grad: int = 0) -> float:
    """FLOPs of one training step: forward of everything, backward (2x forward) of the graph-carrying part."""
    with_grad = cost.step_flops(n_grad)
    return batch * (3 * with_grad + n_no_grad * cost.iteration_flops)


def matmul_peaks(sizes: tuple[int, ...], repeats: int, device: torch.device) -> dict:
    """GFLOP/s of square matmuls in float32 and bfloat16."""
    out = {}
    for dtype in ("fp32", "bf16"):
        dt = torch.float32 if dtype == "fp32" else torch.bfloat16
        per_size = {}
        for n in sizes:
            a, b = torch.randn(n, n, device=device).to(dt), torch.randn(n, n, device=device).to(dt)
            flops = 2 * n**3
            inner = max(1, int(1e9 // flops))
            secs = timed(lambda: torch.mm(a, b), max(repeats, 3), inner=inner, device=device)
            per_size[str(n)] = spread([flops / s / 1e9 for s in secs])
        out[dtype] = {"by_size": per_size, "peak_gflops": max(v["median"] for v in per_size.values())}
    return out


def bench_speed(ctx: Context) -> Path:
    from .diffusion import GaussianDiffusion
    from .devices import resolve_precision
    from .sampling import SamplerConfig, sample
    from .train import TrainConfig, Trainer

    started, sc, dev = time.perf_counter(), ctx.scale, ctx.device
    results: dict = {}
    _log("speed: matmul peaks")
    results["matmul"] = matmul_peaks(sc.matmul_sizes, ctx.repeats, dev)
    peaks = {k: v["peak_gflops"] for k, v in results["matmul"].items()}

    _log("speed: one fixed-point iteration vs one DiT block")
    torch.manual_seed(ctx.seed)
    fpdm, dit = build_model(sc.fpdm).to(dev).eval(), build_model(sc.dit).to(dev).eval()
    B, N, D = sc.train_batch, fpdm.config.num_tokens, fpdm.config.hidden_size
    g = torch.Generator().manual_seed(ctx.seed)
    z, inj = (torch.randn(B, N, D, generator=g).to(dev) for _ in range(2))  # (B, N, D)
    c = torch.randn(B, D, generator=g).to(dev)  # (B, D)
    cost_f = CostModel.of(fpdm.config)
    with torch.no_grad():
        t_block = timed(lambda: dit.blocks[0](z, c), ctx.repeats, inner=5, warmup=3, device=dev)
        t_iter = timed(lambda: fpdm.fixed_point_map(z, inj, c), ctx.repeats, inner=5, warmup=3, device=dev)
    results["block"] = {"batch": B, "tokens": N, "hidden": D, "precision": "fp32", "dit_block_s": spread(t_block),
                        "fp_iteration_s": spread(t_iter),
                        "ratio": statistics.median(t_iter) / statistics.median(t_block),
                        "flop_ratio": cost_f.iteration_flops / cost_f.block_flops,
                        "prototype_ratio": PAPER["iteration_vs_block"]}

    train_rows = {}
    for preset in (sc.fpdm, sc.dit):
        _log(f"speed: training steps/s of {preset}")
        cfg = TrainConfig(model=preset, batch_size=sc.train_batch, max_steps=1, precision=ctx.precision,
                          device=str(dev), seed=ctx.seed, sample_every=0, dataset=sc.dataset, subset=sc.data_subset)
        trainer = Trainer(cfg)
        cost = CostModel.of(trainer.model.config)
        trainer.step()  # warm-up
        secs, flops, draws = [], [], []
        for _ in range(ctx.repeats):
            start, total = time.perf_counter(), 0.0
            for _ in range(sc.train_steps):
                row = trainer.step()
                n_ng, n_g = row.get("n_no_grad", 0), row.get("n_grad", 0)
                total += train_step_flops(cost, sc.train_batch, n_ng, n_g)
                draws.append([n_ng, n_g])
            _sync(dev)
            secs.append(time.perf_counter() - start)
            flops.append(total)
        precision = resolve_precision(ctx.precision, trainer.device)
        gflops = spread([f / s / 1e9 for f, s in zip(flops, secs)])
        train_rows[preset] = {"kind": cost.kind, "batch": sc.train_batch, "precision": precision,
                              "steps_per_repeat": sc.train_steps,
                              "steps_per_s": spread([sc.train_steps / s for s in secs]),
                              "gflops_per_s": gflops, "fraction_of_peak": gflops["median"] / peaks[precision],
                              "draws": draws, "params": sum(p.numel() for p in trainer.model.parameters())}
        del trainer
    results["train"] = train_rows

    diffusion = GaussianDiffusion().to(dev)
    labels = torch.arange(sc.sample_batch) % max(fpdm.config.num_classes, 1)
    sample_rows = []
    for model in (fpdm, dit):
        sample(model, diffusion, labels[:2], SamplerConfig(budget=dit.config.depth, steps=1),
               generator=torch.Generator().manual_seed(0), device=dev)  # warm-up
        for k in sc.speed_budgets:
            budget = k * dit.config.depth
            cfg = SamplerConfig(budget=budget, steps=k, reuse=True)
            _log(f"speed: sampling {model.config.kind} at {k} DiT steps ({budget} block evaluations)")
            rec = {}

            def run():
                _, rec["r"] = sample(model, diffusion, labels, cfg, generator=torch.Generator().manual_seed(ctx.seed),
                                     device=dev)

            secs = timed(run, ctx.repeats, warmup=0, device=dev)
            flops = rec["r"].spent_flops * len(labels)
            gflops = spread([flops / s / 1e9 for s in secs])
            sample_rows.append({"kind": model.config.kind, "preset": sc.fpdm if model is fpdm else sc.dit,
                                "budget_dit_steps": k, "budget": budget, "batch": len(labels), "precision": "fp32",
                                "block_evals_per_image": rec["r"].spent_block_evals,
                                "gflop_per_image": rec["r"].spent_flops / 1e9,
                                "images_per_s": spread([len(labels) / s for s in secs]), "gflops_per_s": gflops,
                                "fraction_of_peak": gflops["median"] / peaks["fp32"]})
    results["sample"] = sample_rows
    _plot_speed(ctx, results)
    return write_result(ctx, "speed", {"fpdm": sc.fpdm, "dit": sc.dit, "device": str(dev),
                                       "threads": torch.get_num_threads(), "train_precision": ctx.precision,
                                       "flops": "budget.CostModel (multiply-add = 2 FLOPs; backward = 2x forward)"},
                        results, started)


def _errbar(stats: list[dict]):
    return [[s["median"] - s["min"] for s in stats], [s["max"] - s["median"] for s in stats]]


def _plot_speed(ctx: Context, r: dict) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    names = list(r["train"])
    stats = [r["train"][n]["steps_per_s"] for n in names]
    axes[0].bar(names, [s["median"] for s in stats], yerr=_errbar(stats), color=["#2a7ab9", "#888"], capsize=4)
    axes[0].set_ylabel("training steps / s")
    axes[0].set_title(f"training (batch {ctx.scale.train_batch})", fontsize=9)
    for kind, color in (("fpdm", "#2a7ab9"), ("dit", "#888")):
        rows = [s for s in r["sample"] if s["kind"] == kind]
        axes[1].errorbar([s["budget_dit_steps"] for s in rows], [s["images_per_s"]["median"] for s in rows],
                         yerr=_errbar([s["images_per_s"] for s in rows]), marker="o", color=color, label=kind,
                         capsize=3)
    axes[1].set_xlabel("budget (DiT-step equivalents)")
    axes[1].set_ylabel("images / s")
    axes[1].set_title("sampling", fontsize=9)
    axes[1].legend(fontsize=8)
    b = r["block"]
    st = [b["dit_block_s"], b["fp_iteration_s"]]
    axes[2].bar(["DiT block", "FP iteration"], [s["median"] * 1e3 for s in st],
                yerr=np.array(_errbar(st)) * 1e3, color=["#888", "#2a7ab9"], capsize=4)
    axes[2].set_ylabel("ms per call")
    axes[2].set_title(f"iteration / block = {b['ratio']:.2f}x (FLOPs {b['flop_ratio']:.2f}x)", fontsize=9)
    labels = [f"train {n}" for n in names] + [f"sample {s['kind']} k={s['budget_dit_steps']}" for s in r["sample"]]
    values = ([r["train"][n]["gflops_per_s"]["median"] for n in names]
              + [s["gflops_per_s"]["median"] for s in r["sample"]])
    axes[3].barh(labels, values, color="#2a7ab9")
    for dtype, ls in (("fp32", "--"), ("bf16", ":")):
        axes[3].axvline(r["matmul"][dtype]["peak_gflops"], color="k", ls=ls, label=f"{dtype} matmul peak")
    axes[3].set_xlabel("achieved GFLOP/s")
    axes[3].tick_params(axis="y", labelsize=7)
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    _save_figure(ctx, "speed", fig)


# ----------------------------------------------------------------------------- quality
def quality_variants(k: int) -> list[tuple[str, str, dict]]:
    """(name, model kind, SamplerConfig fields) at a budget of k DiT steps."""
    both = dict(reuse=True)
    return [
        ("DiT", "dit", dict(steps=k)),
        ("FPDM (as trained)", "fpdm", dict(steps=k, reuse=False)),
        ("FPDM + smoothing", "fpdm", dict(reuse=False)),
        ("FPDM + reuse", "fpdm", dict(steps=k, reuse=True)),
        ("FPDM + smoothing + reuse", "fpdm", both),
        ("FPDM + both, increasing", "fpdm", {**both, "allocation": "increasing"}),
        ("FPDM + both, decreasing", "fpdm", {**both, "allocation": "decreasing"}),
        ("FPDM + both, adaptive (tol 1e-3)", "fpdm", {**both, "allocation": "adaptive", "tol": 1e-3}),
        ("FPDM + both, Anderson", "fpdm", {**both, "solver": "anderson"}),
    ]


HEADLINE = "FPDM + smoothing + reuse"


def _load(ctx: Context, kind: str):
    """(EMA model, path) of the `--fpdm`/`--dit` checkpoint, else the shipped one."""
    from .checkpoints import SHIPPED, load_model

    path = {"fpdm": ctx.fpdm_path, "dit": ctx.dit_path}[kind] or SHIPPED[kind]
    if not path.is_file():
        raise FileNotFoundError(f"no {kind.upper()} checkpoint at {path}: train one (see README) or pass --{kind} PATH")
    return load_model(path, device=ctx.device), path


def _classifier(ctx: Context):
    from . import metrics

    return metrics.load_classifier(ctx.classifier_path or metrics.CLASSIFIER_PATH, device=ctx.device)


def quality_reference(classifier, n: int, seed: int, real_n: int = 10000) -> dict:
    """What real images score at the same n: the accuracy ceiling and the FCD floor (train vs test stats)."""
    from . import metrics
    from .data import load_fashion_mnist

    x_test, y_test = load_fashion_mnist("test")
    x_train, _ = load_fashion_mnist("train")
    idx = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))[:n]
    mu, s = metrics.feature_stats(classifier, x_train[idx])
    mu_r, s_r = metrics.real_stats(classifier, n=real_n)
    return {"n": n, "accuracy": metrics.class_accuracy(classifier, x_test[:n], y_test[:n]),
            "fcd": metrics.frechet_distance(mu, s, mu_r, s_r)}


def bench_quality(ctx: Context) -> Path:
    from . import metrics
    from .diffusion import GaussianDiffusion
    from .sampling import SamplerConfig, plan_for

    started, sc = time.perf_counter(), ctx.scale
    models = {kind: _load(ctx, kind) for kind in ("fpdm", "dit")}
    classifier = _classifier(ctx)
    diffusion = GaussianDiffusion().to(ctx.device)
    depth = models["dit"][0].config.depth
    rows = []
    for k in sc.budgets:
        budget = k * depth
        for name, kind, fields in quality_variants(k):
            row = {"variant": name, "kind": kind, "budget_dit_steps": k, "budget": budget}
            rows.append(row)
            cfg = SamplerConfig(budget=budget, **fields)
            try:
                plan = plan_for(models[kind][0], cfg)
            except ValueError as e:  # a budget too small for this variant
                row["skipped"] = str(e)
                continue
            _log(f"quality: {name} at {k} DiT steps ({budget} block evaluations), n={sc.n_images}")
            res = metrics.evaluate(models[kind][0], diffusion, cfg, n=sc.n_images, classifier=classifier,
                                   seed=ctx.seed, batch_size=250, device=ctx.device, real_n=sc.real_n)
            row.update({key: res[key] for key in ("accuracy", "fcd", "block_evals_per_image", "flops_per_image",
                                                  "seconds")},
                       steps=plan.steps, iterations=plan.iterations, sampler=cfg.to_dict())
    reference = quality_reference(classifier, sc.n_images, ctx.seed, sc.real_n)
    _plot_quality(ctx, rows, reference)
    settings = {"fpdm": str(models["fpdm"][1]), "dit": str(models["dit"][1]), "n_images": sc.n_images,
                "budgets_dit_steps": list(sc.budgets), "dit_depth": depth,
                "sampler": "DDIM eta 0, float32, EMA weights",
                "classifier": str(ctx.classifier_path or metrics.CLASSIFIER_PATH), "headline_variant": HEADLINE}
    return write_result(ctx, "quality", settings, {"rows": rows, "reference": reference}, started)


def _plot_quality(ctx: Context, rows: list[dict], reference: dict) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    cmap = plt.get_cmap("tab10")
    for i, v in enumerate(variants):
        rs = [r for r in rows if r["variant"] == v and r.get("fcd") is not None]
        if not rs:
            continue
        style = dict(marker="o", color="k" if v == "DiT" else cmap(i % 10), lw=2.2 if v in ("DiT", HEADLINE) else 1,
                     ls="-" if v in ("DiT", HEADLINE) or "both" not in v else ":", label=v)
        axes[0].plot([r["budget_dit_steps"] for r in rs], [r["fcd"] for r in rs], **style)
        axes[1].plot([r["budget_dit_steps"] for r in rs], [r["accuracy"] for r in rs], **style)
        axes[2].plot([r["flops_per_image"] / 1e9 for r in rs], [r["fcd"] for r in rs], **style)
    axes[0].axhline(reference["fcd"], color="gray", ls="--", lw=0.8, label="real images (same n)")
    axes[1].axhline(reference["accuracy"], color="gray", ls="--", lw=0.8, label="real images")
    for ax, yl in zip(axes, ("FCD (lower is better)", "class accuracy", "FCD")):
        ax.set_ylabel(yl)
        ax.set_xscale("log")
    budgets = sorted({r["budget_dit_steps"] for r in rows})
    for ax in axes[:2]:
        if PAPER["dit_steps"] in budgets:
            ax.axvline(PAPER["dit_steps"], color="gray", lw=0.6)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("budget (DiT-step equivalents = block evaluations / DiT depth)")
    axes[2].set_xlabel("GFLOPs per image (CostModel)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    _save_figure(ctx, "quality", fig)


# ----------------------------------------------------------------------------- convergence
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


def bench_convergence(ctx: Context) -> Path:
    from .diffusion import GaussianDiffusion
    from .plots import residual_matrix
    from .sampling import SamplerConfig, sample

    started, sc = time.perf_counter(), ctx.scale
    model, path = _load(ctx, "fpdm")
    diffusion = GaussianDiffusion().to(ctx.device)
    labels = torch.arange(sc.conv_batch) % max(model.config.num_classes, 1)
    runs = []
    for solver in ("picard", "anderson"):
        for reuse in (False, True):
            cfg = SamplerConfig(steps=sc.conv_steps, iterations=sc.conv_iterations, reuse=reuse, solver=solver)
            _log(f"convergence: {solver}, reuse={reuse}")
            _, record = sample(model, diffusion, labels, cfg, generator=torch.Generator().manual_seed(ctx.seed),
                               device=ctx.device)
            m = residual_matrix(record)
            runs.append({"solver": solver, "reuse": reuse, "timesteps": record.timesteps, "rel_residual": m,
                         "summary": residual_summary(m)})
    _plot_convergence(ctx, runs)
    settings = {"fpdm": str(path), "steps": sc.conv_steps, "iterations": sc.conv_iterations, "batch": sc.conv_batch,
                "sampler": "DDIM eta 0, float32, EMA weights, fixed iteration count (no tolerance)",
                "residual": "||f(z)-z|| / (||f(z)|| + 1e-9), batch mean"}
    return write_result(ctx, "convergence", settings, {"runs": runs}, started)


def _plot_convergence(ctx: Context, runs: list[dict]) -> None:
    plt = _pyplot()
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
    _save_figure(ctx, "convergence", fig)


# ----------------------------------------------------------------------------- ablations
def ablation_runs() -> list[tuple[str, dict, dict]]:
    """(name, model overrides, TrainConfig overrides)."""
    return [
        ("pre/post 0/0", dict(pre_depth=0, post_depth=0), {}),
        ("pre/post 1/1, S-JFB 0-10/1-12", {}, {}),
        ("pre/post 2/2", dict(pre_depth=2, post_depth=2), {}),
        ("S-JFB 0-5/1-6", {}, dict(no_grad_iters=(0, 5), grad_iters=(1, 6))),
        ("JFB (n_grad = 1)", {}, dict(method="jfb")),
        ("full backprop", {}, dict(method="full")),
    ]


@contextlib.contextmanager
def _temporary_preset(name: str, config: ModelConfig):
    """Register a preset for the duration of a run (TrainConfig takes model sizes by preset name only)."""
    if name in PRESETS:
        raise ValueError(f"preset {name!r} exists")
    PRESETS[name] = config
    try:
        yield name
    finally:
        del PRESETS[name]


def worst_case_draw(cfg) -> tuple[int, int]:
    """The (n_no_grad, n_grad) of a TrainConfig's most memory-hungry step."""
    hi_ng, hi_g = cfg.no_grad_iters[1], cfg.grad_iters[1]
    return {"sjfb": (hi_ng, hi_g), "jfb": (hi_ng, 1), "full": (0, hi_ng + hi_g)}[cfg.method]


def bench_ablations(ctx: Context) -> Path:
    from .diffusion import GaussianDiffusion
    from .sampling import SamplerConfig
    from .train import TrainConfig, Trainer

    started, sc = time.perf_counter(), ctx.scale
    minutes = ctx.minutes if ctx.minutes is not None else sc.abl_minutes
    try:
        from . import metrics

        classifier = _classifier(ctx)
    except (ImportError, FileNotFoundError, ValueError) as e:  # quality is optional here: loss, memory, time remain
        classifier = None
        _log(f"ablations: no classifier, quality left out ({type(e).__name__}: {e})")
    rows = []
    for name, model_over, train_over in ablation_runs():
        base = PRESETS[sc.abl_model]
        with _temporary_preset(f"_ablation {name}", replace(base, **model_over)) as preset:
            cfg = TrainConfig(model=preset, batch_size=sc.abl_batch, max_minutes=minutes, max_steps=sc.abl_max_steps,
                              precision=ctx.precision, device=str(ctx.device), seed=ctx.seed, sample_every=0,
                              subset=sc.data_subset, dataset=sc.dataset, **train_over)
            _log(f"ablations: {name}, {minutes:.2f} min")
            trainer = Trainer(cfg)
            losses, start = [], time.perf_counter()
            deadline = start + minutes * 60
            while time.perf_counter() < deadline and (cfg.max_steps is None or trainer.step_count < cfg.max_steps):
                losses.append(trainer.step()["loss"])
            seconds = time.perf_counter() - start
        model, c = trainer.model, trainer.model.config
        n_ng, n_g = worst_case_draw(cfg)
        mem = estimate_step_memory(c, sc.abl_batch, n_no_grad=n_ng, n_grad=n_g)
        tail = losses[-max(1, len(losses) // 5):]
        row = {"name": name, "pre_post": f"{c.pre_depth}/{c.post_depth}", "method": cfg.method,
               "no_grad_iters": cfg.no_grad_iters, "grad_iters": cfg.grad_iters, "params": mem["params"],
               "steps": len(losses), "seconds": seconds, "steps_per_s": len(losses) / seconds,
               "final_loss": float(np.mean(tail)), "losses": losses, "worst_case_draw": [n_ng, n_g],
               "worst_case_memory_bytes": mem["total_bytes"], "worst_case_activation_bytes": mem["activation_bytes"]}
        if classifier is not None:
            steps = 10
            scfg = SamplerConfig(budget=steps * ABLATION_DEPTH, steps=steps, reuse=True)
            res = metrics.evaluate(model, GaussianDiffusion().to(ctx.device), scfg, n=sc.n_images,
                                   classifier=classifier, seed=ctx.seed, device=ctx.device, real_n=sc.real_n)
            row.update(accuracy=res["accuracy"], fcd=res["fcd"], block_evals_per_image=res["block_evals_per_image"])
        rows.append(row)
        del trainer
    _plot_ablations(ctx, rows)
    settings = {"model": sc.abl_model, "minutes_each": minutes, "max_steps": sc.abl_max_steps, "batch": sc.abl_batch,
                "precision": ctx.precision,
                "dataset": sc.dataset + (f" (first {sc.data_subset})" if sc.data_subset else ""),
                "evaluation": f"raw (not EMA) weights, 10 DDIM steps x {ABLATION_DEPTH} block evaluations, reuse, "
                              f"n={sc.n_images}" if classifier is not None else "no classifier: quality left out",
                "memory": "analytic worst-case step (16 B/param + saved activations, meta device)"}
    return write_result(ctx, "ablations", settings, {"rows": rows}, started)


def _plot_ablations(ctx: Context, rows: list[dict]) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    names = [r["name"] for r in rows]
    y = np.arange(len(rows))
    panels = [("final_loss", "training loss (last 20%)"), ("fcd", "FCD (lower is better)"),
              ("worst_case_memory_bytes", "worst-case step memory (MiB)"), ("steps_per_s", "training steps / s")]
    for ax, (key, title) in zip(axes, panels):
        vals = [(r.get(key) or 0) / (MiB if "bytes" in key else 1) for r in rows]
        ax.barh(y, vals, color="#2a7ab9")
        ax.set_yticks(y, names if ax is axes[0] else [""] * len(y), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"ablations: equal training time ({ctx.scale.abl_model})", fontsize=10)
    fig.tight_layout()
    _save_figure(ctx, "ablations", fig)


# ----------------------------------------------------------------------------- report
def _verdict(status: str, claim: str, sentence: str) -> dict:
    return {"status": status, "claim": claim, "sentence": sentence}


TIE_PCT = 2.0  # differences of a metric below this (relative) are called a tie, not a result


def _lower(a: float, b: float) -> str:
    """'reproduced' if a is lower than b by more than TIE_PCT, 'not reproduced' if higher, else 'tie'."""
    if abs(a - b) <= TIE_PCT / 100 * max(abs(a), abs(b)):
        return "tie"
    return "reproduced" if a < b else "not reproduced"


def _signed(b: float) -> str:
    return ("+" if b >= 0 else "-") + _mib(abs(b))


def _memory_parts(row: dict, measured: bool) -> tuple[float, float]:
    """(weights + grads + AdamW bytes, activation bytes) of a memory row, measured or estimated."""
    src = row if measured else row["estimate"]
    return src["weights_grads_adamw_bytes"], src["activation_bytes"]


def _less(pct: float) -> str:
    return f"{pct:.0f}% less" if pct >= 0 else f"{-pct:.0f}% more"


def _mib(b) -> str:
    if b is None:
        return "n/a"
    return f"{b / GiB:.2f} GiB" if abs(b) >= GiB else f"{b / MiB:.{1 if abs(b) < 10 * MiB else 0}f} MiB"


def verdicts_params(d: dict) -> list[dict]:
    xl = next(r for r in d["results"]["pairs"] if r["fpdm"] == "FPDM-XL/2")
    red = xl["reduction_pct"]
    ok = round(red) == PAPER["param_reduction_pct"]
    return [_verdict("reproduced" if ok else "not reproduced", "87% fewer parameters than DiT-XL/2",
                     f"FPDM-XL/2 has {red:.1f}% fewer parameters than DiT-XL/2 ({xl['fpdm_params'] / 1e6:.1f}M vs "
                     f"{xl['dit_params'] / 1e6:.1f}M; paper: 87%): {'reproduced' if ok else 'not reproduced'}.")]


def verdicts_memory(d: dict) -> list[dict]:
    by = {s["name"]: s for s in d["results"]["settings"]}
    out = []
    paper = by.get("paper")
    if paper:
        sav = paper["savings_measured_pct"] if paper["measured"] else paper["savings_estimated_pct"]
        how = ("measured in fresh processes" if paper["measured"] else
               "estimated: 16 B/parameter plus the tensors autograd saves, traced on the meta device; "
               + ("the measurement failed or was skipped, see the table" if d["mode"] == "full"
                  else "run `memory` without --quick to measure it"))
        ok = sav["worst"] >= PAPER["memory_saving_pct"] - 5
        out.append(_verdict("reproduced" if ok else "not reproduced", "60% less training memory than DiT",
                            f"At the paper's scale (FPDM-XL/2 vs DiT-XL/2, batch 8, float32; {how}) one S-JFB training "
                            f"step needs {_less(sav['worst'])} memory than DiT in the worst case (n_grad = 12) and "
                            f"{_less(sav['average'])} at the average draw (n_grad = 6); paper: 60% less: "
                            f"{'reproduced' if ok else 'not reproduced'}."))
    for s in d["results"]["settings"]:
        key = "peak_bytes" if s["measured"] else "estimate_bytes"
        dit, worst = (next(r for r in s["rows"] if role in r["roles"]) for role in ("dit", "worst"))
        if dit.get(key) is None or worst.get(key) is None:
            continue
        (dit_fixed, dit_act), (w_fixed, w_act) = (_memory_parts(r, s["measured"]) for r in (dit, worst))
        out.append(_verdict("measured", f"where the saving comes from ({s['name']})",
                            f"{s['title']} ({'measured' if s['measured'] else 'estimated'}): weights, gradients and "
                            f"AdamW moments are {100 * dit_fixed / dit[key]:.0f}% of DiT's peak; in the worst case "
                            f"FPDM changes them by {_signed(w_fixed - dit_fixed)} and activations by "
                            f"{_signed(w_act - dit_act)} ({_less(100 * (1 - worst[key] / dit[key]))} in total)."))
        if s["name"] == "paper" or not s["measured"]:
            continue
        rows = s["rows"]
        sweep = sorted((r["n_grad"], r) for r in rows if "sweep" in r["roles"])
        if len(sweep) >= 2:
            (g0, r0), (g1, r1) = sweep[0], sweep[-1]
            out.append(_verdict("measured", f"activation memory grows with n_grad ({s['name']})",
                                f"Activations of one FPDM step grow from {_mib(r0['activation_bytes'])} at n_grad = "
                                f"{g0} to {_mib(r1['activation_bytes'])} at n_grad = {g1} (DiT: "
                                f"{_mib(dit['activation_bytes'])}); recomputation and full backprop are in the table."))
    return out


def verdicts_speed(d: dict) -> list[dict]:
    r = d["results"]
    b = r["block"]
    out = [_verdict("measured", "cost of one fixed-point iteration",
                    f"One fixed-point iteration takes {b['ratio']:.2f}x the time of one DiT block (FLOP model "
                    f"{b['flop_ratio']:.2f}x; the prototype measured {b['prototype_ratio']:.2f}x): at an equal count of "
                    f"block evaluations FPDM spends about {b['ratio']:.2f}x DiT's time per evaluation.")]
    tr = r["train"]
    f, dt = (next(v for v in tr.values() if v["kind"] == k) for k in ("fpdm", "dit"))
    out.append(_verdict("measured", "training throughput",
                        f"S-JFB training runs at {f['steps_per_s']['median']:.2f} steps/s vs DiT's "
                        f"{dt['steps_per_s']['median']:.2f} (batch {f['batch']}, {f['precision']}; "
                        f"{100 * f['fraction_of_peak']:.0f}% and {100 * dt['fraction_of_peak']:.0f}% of the "
                        f"{f['precision']} matmul peak of {r['matmul'][f['precision']]['peak_gflops']:.0f} GFLOP/s)."))
    return out


def _q(rows, variant, k):
    """The evaluated quality row of a variant at a budget, or None."""
    return next((r for r in rows if r["variant"] == variant and r["budget_dit_steps"] == k
                 and r.get("fcd") is not None), None)


def verdicts_quality(d: dict) -> list[dict]:
    rows = d["results"]["rows"]
    budgets = sorted({r["budget_dit_steps"] for r in rows})
    out = []
    k = PAPER["dit_steps"] if PAPER["dit_steps"] in budgets else max(budgets)
    f, dt = _q(rows, HEADLINE, k), _q(rows, "DiT", k)
    if f and dt:
        status = _lower(f["fcd"], dt["fcd"])
        out.append(_verdict(status, "better quality than DiT at limited compute",
                            f"At the compute of {k} DiT steps ({dt['budget']} block evaluations) FPDM with timestep "
                            f"smoothing and reuse has FCD {f['fcd']:.2f} vs DiT's {dt['fcd']:.2f} (accuracy "
                            f"{f['accuracy']:.2f} vs {dt['accuracy']:.2f}; FPDM spends "
                            f"{f['flops_per_image'] / dt['flops_per_image']:.2f}x DiT's FLOPs): {status}."))
    limited = [b for b in budgets if b <= PAPER["dit_steps"] and _q(rows, HEADLINE, b) and _q(rows, "DiT", b)]
    if limited:
        wins = [b for b in limited if _lower(_q(rows, HEADLINE, b)["fcd"], _q(rows, "DiT", b)["fcd"]) == "reproduced"]
        out.append(_verdict("measured", "FPDM vs DiT across small budgets",
                            f"FPDM (smoothing + reuse) has the lower FCD (by more than {TIE_PCT:.0f}%) at "
                            f"{len(wins)} of {len(limited)} budgets of at most {PAPER['dit_steps']} DiT steps "
                            f"({', '.join(map(str, wins)) or 'none'})."))
    for variant, what in (("FPDM + smoothing", "timestep smoothing"), ("FPDM + reuse", "solution reuse")):
        pairs = [(_q(rows, variant, b), _q(rows, "FPDM (as trained)", b)) for b in budgets]
        pairs = [(a, b) for a, b in pairs if a and b]
        if pairs:
            calls = [_lower(a["fcd"], b["fcd"]) for a, b in pairs]
            wins, losses = calls.count("reproduced"), calls.count("not reproduced")
            status = "reproduced" if wins > len(pairs) / 2 else "not reproduced" if losses > len(pairs) / 2 else "tie"
            out.append(_verdict(status, f"{what} improves FPDM at equal budget",
                                f"{what.capitalize()} lowers FPDM's FCD at {wins} and raises it at {losses} of "
                                f"{len(pairs)} budgets (vs the as-trained split; ties within {TIE_PCT:.0f}%): "
                                f"{status}."))
    return out


def verdicts_convergence(d: dict) -> list[dict]:
    runs = {(r["solver"], r["reuse"]): r["summary"] for r in d["results"]["runs"]}
    base, reuse = runs[("picard", False)], runs[("picard", True)]
    out = []
    c = base["contraction_median"]
    ok = c is not None and c < 1
    out.append(_verdict("reproduced" if ok else "not reproduced", "the fixed-point map converges",
                        f"Picard iteration contracts: the relative residual shrinks by a median factor of "
                        f"{c if c is not None else float('nan'):.2f} per iteration, to a median of "
                        f"{base['final_median']:.1e} after {d['settings']['iterations']} iterations: "
                        f"{'reproduced' if ok else 'not reproduced'}."))
    status = _lower(reuse["first_iteration_mean"], base["first_iteration_mean"])
    out.append(_verdict(status, "reuse gives a better starting point",
                        f"Reusing the previous fixed point cuts the first-iteration residual from "
                        f"{base['first_iteration_mean']:.3f} to {reuse['first_iteration_mean']:.3f} on average "
                        f"(high noise {base['first_iteration_high_noise']:.3f} -> "
                        f"{reuse['first_iteration_high_noise']:.3f}, low noise "
                        f"{base['first_iteration_low_noise']:.3f} -> {reuse['first_iteration_low_noise']:.3f}; "
                        f"the first step has nothing to reuse and is left out): {status}."))
    a = runs[("anderson", True)]
    out.append(_verdict("measured", "Anderson vs Picard",
                        f"With reuse, Anderson ends at a median residual of {a['final_median']:.1e} vs Picard's "
                        f"{reuse['final_median']:.1e}."))
    return out


def verdicts_ablations(d: dict) -> list[dict]:
    rows = {r["name"]: r for r in d["results"]["rows"]}
    sjfb, jfb, full = rows["pre/post 1/1, S-JFB 0-10/1-12"], rows["JFB (n_grad = 1)"], rows["full backprop"]
    key = "fcd" if sjfb.get("fcd") is not None and jfb.get("fcd") is not None else "final_loss"
    status = _lower(sjfb[key], jfb[key])
    out = [_verdict(status, "S-JFB trains better than JFB",
                    f"After equal training time S-JFB reaches {key} {sjfb[key]:.3f} vs JFB's {jfb[key]:.3f}: "
                    f"{status}."),
           _verdict("measured", "full backprop costs memory and time",
                    f"Backprop through all iterations needs "
                    f"{full['worst_case_memory_bytes'] / sjfb['worst_case_memory_bytes']:.1f}x S-JFB's worst-case "
                    f"step memory and runs {full['steps_per_s'] / sjfb['steps_per_s']:.2f}x its steps/s "
                    f"({key} {full[key]:.3f}).")]
    pp = [r for r in d["results"]["rows"] if r["name"].startswith("pre/post")]
    best = min(pp, key=lambda r: r[key])
    out.append(_verdict("measured", "pre/post depth",
                        f"Among pre/post depths {', '.join(r['pre_post'] for r in pp)} the lowest {key} after equal "
                        f"time is {best['pre_post']} ({best[key]:.3f})."))
    return out


def table_params(d):
    lines = ["| FPDM | DiT | pre/post | FPDM params | DiT params | reduction |", "|---|---|---|---:|---:|---:|"]
    for r in d["results"]["pairs"]:
        lines.append(f"| {r['fpdm']} | {r['dit']} | {r['pre_post']} | {r['fpdm_params'] / 1e6:.2f}M | "
                     f"{r['dit_params'] / 1e6:.2f}M | {r['reduction_pct']:.1f}% |")
    return "\n".join(lines)


def table_memory(d):
    out = []
    for s in d["results"]["settings"]:
        out += [f"**{s['title']}** ({'measured, a fresh process per row' if s['measured'] else 'estimated only'})", "",
                "| configuration | roles | peak | weights+grads+AdamW | activations | saved tensors | estimate "
                "| step s |",
                "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in s["rows"]:
            est, measured = r["estimate"], r.get("peak_bytes") is not None
            label = r["label"] + (f" ({r['error']})" if r.get("error") else "")
            act = _mib(r["activation_bytes"]) if measured else f"{_mib(est['activation_bytes'])} (est.)"
            step = f"{r['step_s']:.2f}" if measured else "n/a"
            out.append(f"| {label} | {', '.join(r['roles'])} | {_mib(r.get('peak_bytes'))} | "
                       f"{_mib(est['weights_grads_adamw_bytes'])} | {act} | {_mib(r.get('saved_tensor_bytes'))} | "
                       f"{_mib(est['total_bytes'])} | {step} |")
        kind = "measured" if s["savings_measured_pct"] else "estimated"
        sav = s["savings_measured_pct"] or s["savings_estimated_pct"]
        out += ["", f"FPDM vs DiT ({kind}): " + ", ".join(f"{k} case {_less(v)}" for k, v in sav.items()), ""]
    return "\n".join(out)


def _stat(s, scale=1.0, fmt=".3g"):
    """'median (min-max, spread x%)' of a `spread` dict."""
    return (f"{s['median'] * scale:{fmt}} ({s['min'] * scale:{fmt}}-{s['max'] * scale:{fmt}}, "
            f"spread {s['spread_pct']:.0f}%)")


def table_speed(d):
    r = d["results"]
    lines = ["| matmul | peak GFLOP/s |", "|---|---:|"]
    lines += [f"| {k} | {v['peak_gflops']:.0f} |" for k, v in r["matmul"].items()]
    b = r["block"]
    lines += ["", f"One DiT block: {_stat(b['dit_block_s'], 1e3)} ms; one fixed-point iteration: "
              f"{_stat(b['fp_iteration_s'], 1e3)} ms (batch {b['batch']}, {b['tokens']} tokens, hidden {b['hidden']}); "
              f"ratio {b['ratio']:.2f}x, FLOP ratio {b['flop_ratio']:.2f}x.", "",
              "| training | batch | precision | steps/s median (min-max) | GFLOP/s | of peak |",
              "|---|---:|---|---:|---:|---:|"]
    for name, t in r["train"].items():
        lines.append(f"| {name} | {t['batch']} | {t['precision']} | {_stat(t['steps_per_s'])} | "
                     f"{t['gflops_per_s']['median']:.1f} | {100 * t['fraction_of_peak']:.0f}% |")
    lines += ["", "| sampling | budget (DiT steps) | block evals/image | GFLOP/image | images/s median (min-max) "
              "| GFLOP/s | of fp32 peak |", "|---|---:|---:|---:|---:|---:|---:|"]
    for s in r["sample"]:
        lines.append(f"| {s['preset']} | {s['budget_dit_steps']} | {s['block_evals_per_image']} | "
                     f"{s['gflop_per_image']:.2f} | {_stat(s['images_per_s'])} | {s['gflops_per_s']['median']:.1f} | "
                     f"{100 * s['fraction_of_peak']:.0f}% |")
    return "\n".join(lines)


def table_quality(d):
    rows = d["results"]["rows"]
    budgets = sorted({r["budget_dit_steps"] for r in rows})
    lines = ["FCD (class accuracy) per budget in DiT-step equivalents:", "",
             "| variant | " + " | ".join(str(b) for b in budgets) + " |", "|---|" + "---:|" * len(budgets)]
    for v in dict.fromkeys(r["variant"] for r in rows):
        cells = []
        for b in budgets:
            r = next((x for x in rows if x["variant"] == v and x["budget_dit_steps"] == b), None)
            cells.append("skipped" if r is None or r.get("fcd") is None else f"{r['fcd']:.2f} ({r['accuracy']:.2f})")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    ref = d["results"]["reference"]
    lines.append(f"\nReal images at the same n = {ref['n']}: FCD {ref['fcd']:.2f} (train vs test), "
                 f"accuracy {ref['accuracy']:.2f}.")
    return "\n".join(lines)


def table_convergence(d):
    lines = ["| solver | reuse | first-iteration residual (mean / high noise / low noise) | final median | final max "
             "| contraction |", "|---|---|---|---:|---:|---:|"]
    for r in d["results"]["runs"]:
        s = r["summary"]
        c = "n/a" if s["contraction_median"] is None else f"{s['contraction_median']:.2f}"
        lines.append(f"| {r['solver']} | {'on' if r['reuse'] else 'off'} | {s['first_iteration_mean']:.3f} / "
                     f"{s['first_iteration_high_noise']:.3f} / {s['first_iteration_low_noise']:.3f} | "
                     f"{s['final_median']:.1e} | {s['final_max']:.1e} | {c} |")
    return "\n".join(lines)


def table_ablations(d):
    lines = ["| run | pre/post | method | params | steps | steps/s | final loss | FCD | accuracy "
             "| worst-case step memory |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in d["results"]["rows"]:
        fcd = "n/a" if r.get("fcd") is None else f"{r['fcd']:.2f}"
        acc = "n/a" if r.get("accuracy") is None else f"{r['accuracy']:.2f}"
        lines.append(f"| {r['name']} | {r['pre_post']} | {r['method']} | {r['params'] / 1e6:.2f}M | {r['steps']} | "
                     f"{r['steps_per_s']:.2f} | {r['final_loss']:.4f} | {fcd} | {acc} | "
                     f"{_mib(r['worst_case_memory_bytes'])} |")
    return "\n".join(lines)


SECTIONS = {
    "params": ("Parameters", "FPDM-XL/2 has 87% fewer parameters than DiT-XL/2.", table_params, verdicts_params),
    "memory": ("Training memory", "FPDM needs 60% less memory during training than DiT.", table_memory,
               verdicts_memory),
    "speed": ("Speed", "Not a claim of the paper: what an iteration, a training step and a sampled image cost here.",
              table_speed, verdicts_speed),
    "quality": ("Quality under a sampling budget",
                "FPDM gives better images than DiT when sampling compute is limited (paper: 20 DiT steps = 560 block "
                "evaluations for XL/2); timestep smoothing and solution reuse help.", table_quality, verdicts_quality),
    "convergence": ("Convergence of the fixed-point solve",
                    "The trained map converges; reusing the previous timestep's solution starts closer.",
                    table_convergence, verdicts_convergence),
    "ablations": ("Ablations (equal training time)",
                  "S-JFB beats JFB; full backprop costs memory; the pre/post depth split matters.",
                  table_ablations, verdicts_ablations),
}


def load_results(out: Path) -> dict[str, dict]:
    found = {}
    for name in COMMANDS:
        path = out / "bench" / f"{name}.json"
        if path.is_file():
            found[name] = json.loads(path.read_text())
    return found


def build_report(out: Path) -> str:
    """RESULTS.md text from `<out>/bench/*.json` alone."""
    data = load_results(out)
    lines = ["# FPDM benchmarks: results", "",
             f"Generated by `python -m fpdm_core.bench report` from `bench/*.json`; do not edit by hand. "
             f"Regenerate everything with `python -m fpdm_core.bench all [--quick]`.", ""]
    all_verdicts = {}
    for name, d in data.items():
        try:
            all_verdicts[name] = SECTIONS[name][3](d)
        except (KeyError, StopIteration, TypeError, ValueError, ZeroDivisionError) as e:
            all_verdicts[name] = [_verdict("error", name, f"could not judge {name}.json: {type(e).__name__}: {e}")]
    lines += ["## Summary", "", "| benchmark | claim | this machine | mode |", "|---|---|---|---|"]
    for name in COMMANDS:
        if name not in data:
            lines.append(f"| {name} | | not run yet: `python -m fpdm_core.bench {name}` | |")
            continue
        for v in all_verdicts[name]:
            lines.append(f"| {name} | {v['claim']} | **{v['status']}** | {data[name]['mode']} |")
    lines += ["", "## Machines", "", "| benchmark | mode | CPU | cores / threads | memory | device | torch | load avg "
              "| date | seeds | repeats | took |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, d in data.items():
        m = d["machine"]
        lines.append(f"| {name} | {d['mode']} | {m['cpu']} | {m['cores']} / {m['torch_threads']} | "
                     f"{m['memory_gib']} GiB | "
                     f"{m['gpu'] or m['device']} | {m['torch']} | {', '.join(map(str, m['load_average'] or []))} | "
                     f"{m['date']} | {', '.join(map(str, d['seeds']))} | {d['repeats']} | {d['elapsed_s']} s |")
    lines += ["", "Timings are medians over the repeats; ranges are (min-max), spread = (max - min) / median. "
              "A load average above the core count means other work shared the processor.", ""]
    for i, name in enumerate(COMMANDS, 1):
        title, claim, table, _ = SECTIONS[name]
        lines += [f"## {i}. {title} (`{name}`)", "", f"*Claim:* {claim}", ""]
        if name not in data:
            lines += [f"Not run yet: `python -m fpdm_core.bench {name}`.", ""]
            continue
        d = data[name]
        if d["mode"] == "tiny":
            lines += ["**Tiny test settings: these numbers are not evidence.**", ""]
        lines += [f"Mode `{d['mode']}`, command `{d['command']}`, seeds {d['seeds']}, repeats {d['repeats']}.", ""]
        settings = {k: v for k, v in d["settings"].items() if not isinstance(v, (dict, list))}
        lines += ["Settings: " + "; ".join(f"{k} = {v}" for k, v in settings.items()), ""]
        try:
            lines += [table(d), ""]
        except (KeyError, StopIteration, TypeError, ValueError) as e:
            lines += [f"(table unavailable: {type(e).__name__}: {e})", ""]
        if (out / d["figure"]).is_file():
            lines += [f"![{name}]({d['figure']})", ""]
        lines += [f"- {v['sentence']}" for v in all_verdicts[name]] + [""]
    return "\n".join(lines)


def write_report(out: Path) -> Path:
    path = out / "RESULTS.md"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(build_report(out))
    _log(f"wrote {path}")
    return path


# ----------------------------------------------------------------------------- command line
RUNNERS = {"params": bench_params, "memory": bench_memory, "speed": bench_speed, "quality": bench_quality,
           "convergence": bench_convergence, "ablations": bench_ablations}
HELP = {
    "params": "parameters, FPDM vs DiT, every preset incl. XL/2 (instant)",
    "memory": "peak memory of one training step per configuration, each in a fresh process",
    "speed": "training steps/s, sampling images/s, iteration vs block time, FLOP/s vs matmul peaks",
    "quality": "accuracy and FCD vs sampling budget (needs checkpoints and the classifier)",
    "convergence": "residual heatmaps per timestep and iteration (needs the FPDM checkpoint)",
    "ablations": "pre/post depth, S-JFB ranges vs JFB vs full backprop after equal training time (slow in full mode)",
    "all": "every benchmark, then the report",
    "report": "write <out>/RESULTS.md from the JSON files",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fpdm_core.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{" + ",".join((*COMMANDS, "all", "report")) + "}")
    for name in (*COMMANDS, "all", "report"):
        s = sub.add_parser(name, help=HELP[name], description=HELP[name])
        s.add_argument("--out", default="figures",
                       help="folder for RESULTS.md and the figures; JSON goes to <out>/bench (default: figures)")
        if name == "report":
            continue
        mode = s.add_mutually_exclusive_group()
        mode.add_argument("--quick", action="store_true", help="minutes instead of hours (small settings)")
        mode.add_argument("--tiny", action="store_true", help="CI-sized settings for tests (numbers are not evidence)")
        s.add_argument("--seed", type=int, default=0, help="seed of weights, data, noise and draws (default: 0)")
        s.add_argument("--repeats", type=int, default=None, help="override the mode's number of timing repeats")
        s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default: cpu)")
        s.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
        s.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                       help="training precision in speed and ablations; sampling is float32 (default: auto = bf16 "
                            "where the processor has fast bf16)")
        s.add_argument("--fpdm", default=None, help="FPDM checkpoint (default: the shipped one)")
        s.add_argument("--dit", default=None, help="DiT checkpoint (default: the shipped one)")
        s.add_argument("--classifier", default=None, help="Fashion-MNIST judge (default: metrics.CLASSIFIER_PATH)")
        s.add_argument("--minutes", type=float, default=None,
                       help="ablations: training minutes per run (default: 10, --quick 1/6, --tiny 0.05)")
    sub.add_parser("_memstep").add_argument("spec", help=argparse.SUPPRESS)  # hidden: one measured step, JSON in/out
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(argv)
    if a.command == "_memstep":
        print(json.dumps(_jsonable(memstep(json.loads(a.spec)))))
        return 0
    out = Path(a.out)
    if a.command == "report":
        write_report(out)
        return 0
    from .devices import pick_device

    if a.threads:
        torch.set_num_threads(a.threads)
    scale = SCALES["tiny" if a.tiny else "quick" if a.quick else "full"]
    if a.repeats:
        scale = replace(scale, repeats=a.repeats)
    try:
        device = pick_device(a.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ctx = Context(out, scale, a.seed, device, a.precision, a.fpdm and Path(a.fpdm), a.dit and Path(a.dit),
                  a.classifier and Path(a.classifier), a.minutes, "python -m fpdm_core.bench " + " ".join(argv))
    names = COMMANDS if a.command == "all" else (a.command,)
    failed = []
    for name in names:
        try:
            RUNNERS[name](ctx)
        except (FileNotFoundError, ValueError) as e:  # a missing checkpoint or classifier, a bad setting
            print(f"error: {name}: {e}", file=sys.stderr)
            failed.append(name)
        except Exception:  # noqa: BLE001 - `all` goes on with the other benchmarks
            if len(names) == 1:
                raise
            traceback.print_exc()
            failed.append(name)
    if a.command == "all":
        write_report(out)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
