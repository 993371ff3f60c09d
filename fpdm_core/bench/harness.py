"""What every benchmark shares: modes (`Scale`), the run `Context`, machine info, timing, JSON, figures.

A benchmark measures with these and writes `<out>/bench/<NAME>.json` through `write_result`;
the report reads nothing else. Modes: `full` is the evidence; `quick` and `tiny` are smoke tests
(their reports give no verdicts).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from .. import assets, classifier
from ..checkpoints import load_model, read_header, stored_diffusion
from ..diffusion import DiffusionConfig, GaussianDiffusion

PAPER = {"param_reduction_pct": 87.0, "memory_saving_pct": 60.0, "dit_steps": 20, "iteration_vs_block": 1.36}
GiB, MiB = 2**30, 2**20
SMOKE_MODES = ("quick", "tiny")  # settings too small to be evidence
SMOKE = "smoke test: no verdict"


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
    abl_steps: int  # training steps per ablation run (each variant x seed)
    abl_minutes: float  # wall-clock cap per ablation run (the step count usually ends it first)
    abl_batch: int
    abl_seeds: tuple[int, ...]  # training seeds per variant (added to --seed)
    abl_n: int  # images sampled per ablation run for accuracy and FCD
    dataset: str  # training data of `speed` and `ablations`; "digits" (scikit-learn) loads at once
    data_subset: int | None


_SHIPPED_SIZE = dict(fpdm="FPDM-FM-M", dit="DiT-FM-M", mem_batch=128, mem_sweep=(1, 3, 6, 12), mem_extras=True,
                     mem_jobs=1, train_batch=128, speed_budgets=(5, 10, 20), matmul_sizes=(1024, 2048),
                     dataset="fashion-mnist", data_subset=None)
SCALES = {
    "full": Scale("full", repeats=5, **_SHIPPED_SIZE, mem_paper=True, mem_wide=None,
                  train_steps=5, sample_batch=100,
                  budgets=(2, 3, 5, 10, 20, 40), n_images=1000, real_n=10000,
                  conv_batch=64, conv_steps=20, conv_iterations=12,
                  abl_model="FPDM-FM-S", abl_steps=2000, abl_minutes=2.5, abl_batch=256, abl_seeds=(0, 1),
                  abl_n=500),
    "quick": Scale("quick", repeats=3, **_SHIPPED_SIZE, mem_paper=False, mem_wide=256,
                   train_steps=3, sample_batch=50,
                   budgets=(5, 10, 20), n_images=200, real_n=10000,
                   conv_batch=32, conv_steps=20, conv_iterations=12,
                   abl_model="FPDM-tiny", abl_steps=200, abl_minutes=1 / 12, abl_batch=64, abl_seeds=(0, 1),
                   abl_n=100),
    "tiny": Scale("tiny", repeats=1, fpdm="FPDM-tiny", dit="DiT-tiny",
                  mem_batch=8, mem_sweep=(1, 12), mem_extras=False, mem_jobs=4, mem_paper=False, mem_wide=None,
                  train_batch=8, train_steps=2, sample_batch=4, speed_budgets=(2,), matmul_sizes=(256,),
                  budgets=(2, 5), n_images=20, real_n=500,
                  conv_batch=4, conv_steps=4, conv_iterations=4,
                  abl_model="FPDM-tiny", abl_steps=3, abl_minutes=0.5, abl_batch=16, abl_seeds=(0, 1), abl_n=20,
                  dataset="digits", data_subset=512),
}


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
    minutes: float | None  # ablations: wall-clock cap per run instead of the mode's
    command: str
    jobs: int = 1  # ablations: runs trained at once in worker processes
    only_paper: bool = False  # memory: measure only FPDM-XL/2 vs DiT-XL/2 and merge into memory.json
    dit_deep_path: Path | None = None  # headline: a deeper DiT baseline

    @property
    def repeats(self) -> int:
        return self.scale.repeats


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def is_smoke(data: dict) -> bool:
    """True for results of a smoke-test mode (quick, tiny): numbers to look at, not evidence."""
    return data["mode"] in SMOKE_MODES


def finding(status: str, claim: str, sentence: str, **extra) -> dict:
    """One line of a benchmark's verdicts: a status (stats.VERDICTS or "measured"), the claim, a sentence."""
    return {"status": status, "claim": claim, "sentence": sentence, **extra}


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeats: int, *, inner: int = 1, warmup: int = 1,
          device: torch.device = torch.device("cpu")) -> list[float]:
    """Seconds per call of `fn`: `repeats` values, each the mean over `inner` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        sync(device)
        out.append((time.perf_counter() - start) / inner)
    return out


def jsonable(x):
    """Plain JSON: numpy scalars to python, NaN/inf to None, tuples to lists, paths to strings."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Path):
        return str(x)
    return x


def result_path(out: Path, name: str) -> Path:
    return out / "bench" / f"{name}.json"


def write_result(ctx: Context, name: str, settings: dict, results: dict, started: float) -> Path:
    """`<out>/bench/<name>.json`: the numbers with their settings, seeds, repeats, machine and wall time."""
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
    path = dump_json(result_path(ctx.out, name), data)
    log(f"wrote {path} ({data['elapsed_s']} s)")
    return path


def dump_json(path: Path, data: dict) -> Path:
    """Write `data` as strict JSON (NaN/inf become null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(data), indent=1, allow_nan=False) + "\n")
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(ctx: Context, name: str, fig) -> None:
    ctx.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(ctx.out / f"{name}.png", dpi=110)
    pyplot().close(fig)


# ----------------------------------------------------------------------------- models and the judge
def checkpoint_path(ctx: Context, kind: str) -> Path:
    """The `--fpdm`/`--dit` checkpoint, else the shipped one."""
    return {"fpdm": ctx.fpdm_path, "dit": ctx.dit_path}[kind] or assets.shipped(kind)


def load_checkpoint_model(ctx: Context, kind: str):
    """(EMA model, path) of the `--fpdm`/`--dit` checkpoint, else the shipped one."""
    path = checkpoint_path(ctx, kind)
    if not path.is_file():
        raise FileNotFoundError(f"no {kind.upper()} checkpoint at {path}: train one (see README) or pass --{kind} PATH")
    return load_model(path, device=ctx.device), path


def bench_diffusion(ctx: Context) -> GaussianDiffusion:
    """The diffusion process the benchmarked checkpoints were trained with, on `ctx.device`.

    Paired comparisons sample every model from the same noise through one process, so checkpoints
    (--fpdm, --dit, --dit-deep) trained with different processes are refused; a missing file is left
    to `load_checkpoint_model` to report.
    """
    paths = [p for p in (checkpoint_path(ctx, "fpdm"), checkpoint_path(ctx, "dit"), ctx.dit_deep_path) if p]
    configs = {p.name: stored_diffusion(read_header(p)[0]) for p in paths if p.is_file()}
    if len(set(configs.values())) > 1:
        raise ValueError(f"the checkpoints were trained with different diffusion processes ({configs}): "
                         f"benchmark models trained with the same one")
    return GaussianDiffusion.from_config(next(iter(configs.values()), DiffusionConfig())).to(ctx.device)


def load_judge(ctx: Context):
    """The Fashion-MNIST classifier behind accuracy and FCD (`--classifier`, else the shipped one)."""
    return classifier.load_classifier(ctx.classifier_path or assets.shipped("classifier"), device=ctx.device)


# ----------------------------------------------------------------------------- formatting
def mib(b) -> str:
    if b is None:
        return "n/a"
    return f"{b / GiB:.2f} GiB" if abs(b) >= GiB else f"{b / MiB:.{1 if abs(b) < 10 * MiB else 0}f} MiB"


def less(pct: float) -> str:
    return f"{pct:.0f}% less" if pct >= 0 else f"{-pct:.0f}% more"


def ci(value: float, lo: float, hi: float, fmt: str = ".3f") -> str:
    """'value [lo, hi]' of a 95% interval."""
    return f"{value:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"
