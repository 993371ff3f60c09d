"""Sample images from an FPDM or DiT checkpoint: `python -m fpdm_core.sample --help`.

Writes into --out-dir: `samples.png` (one column per class), `samples.npz` (`images` uint8
N x H x W [x C], `labels`) and `record.json` (the sampling record: plan, config, per-step
iterations, residuals and costs, plus the checkpoint path). Bad input exits with code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from .budget import ALLOCATIONS
from .checkpoints import SHIPPED, CheckpointError
from .diffusion import SPACINGS
from .sampling import METHODS
from .solvers import SOLVERS, NonFiniteError


def add_sampler_args(p: argparse.ArgumentParser) -> None:
    """The flags that build a `SamplerConfig` (shared with `python -m fpdm_core.metrics evaluate`)."""
    g = p.add_argument_group("sampler")
    g.add_argument("--budget", type=int, default=None,
                   help="block evaluations per image; alone it picks steps by timestep smoothing")
    g.add_argument("--steps", type=int, default=None, help="denoising steps (20 without --budget)")
    g.add_argument("--iterations", type=int, default=None,
                   help="FPDM fixed-point iterations per step (6 without --budget; not with --budget)")
    g.add_argument("--allocation", default="uniform", choices=ALLOCATIONS,
                   help="how a budget's iterations spread over the steps (adaptive needs --tol)")
    g.add_argument("--min-iterations", type=int, default=2, help="timestep smoothing: iterations each step keeps")
    g.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=True,
                   help="start each step's solve at the previous step's fixed point")
    g.add_argument("--solver", default="picard", choices=SOLVERS, help="fixed-point solver")
    g.add_argument("--tol", type=float, default=None, help="stop a step early at this relative residual")
    g.add_argument("--damping", type=float, default=1.0, help="solver damping (1 = plain iteration)")
    g.add_argument("--method", default="ddim", choices=METHODS, help="reverse step")
    g.add_argument("--eta", type=float, default=0.0, help="DDIM noise (0 = deterministic)")
    g.add_argument("--spacing", default="linspace", choices=SPACINGS, help="timestep spacing")
    g.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (1 = none)")
    g.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"), help="autocast precision")


def sampler_config_from_args(a: argparse.Namespace, p: argparse.ArgumentParser):
    """`SamplerConfig` from parsed flags; invalid combinations exit via `p.error` (code 2)."""
    from .sampling import SamplerConfig

    if a.budget is not None and a.iterations is not None:
        p.error("--iterations cannot be combined with --budget (the budget decides the iterations)")
    try:
        return SamplerConfig(steps=a.steps, iterations=a.iterations, budget=a.budget, allocation=a.allocation,
                             min_iterations=a.min_iterations, reuse=a.reuse, solver=a.solver, tol=a.tol,
                             damping=a.damping, method=a.method, eta=a.eta, spacing=a.spacing,
                             cfg_scale=a.cfg_scale, precision=a.precision)
    except ValueError as e:
        p.error(str(e))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fpdm_core.sample", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=str(SHIPPED["fpdm"]), help="FPDM or DiT checkpoint (.safetensors)")
    p.add_argument("--weights", default="ema", choices=("ema", "model"), help="which weights of the checkpoint")
    p.add_argument("--n", type=int, default=20, help="number of images")
    p.add_argument("--classes", type=int, nargs="+", default=None, metavar="ID",
                   help="class ids to cycle through, one grid column each (id num_classes = unconditional; None = every class)")
    add_sampler_args(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the torch.Generator that draws all noise")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (None = torch's default)")
    p.add_argument("--out-dir", default="runs/samples", help="folder for samples.png, samples.npz, record.json")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def class_labels(n: int, classes: list[int] | None, num_classes: int) -> torch.Tensor:
    """Labels (n,) cycling over `classes` (default: every class); ids must be in 0..num_classes."""
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    classes = classes or (list(range(num_classes)) if num_classes else [0])
    bad = [c for c in classes if not 0 <= c <= num_classes]
    if bad:
        raise ValueError(f"class ids {bad} are out of range: this model has classes 0..{num_classes - 1} "
                         f"(and {num_classes} = unconditional)")
    return torch.tensor(classes, dtype=torch.long).repeat(-(-n // len(classes)))[:n]  # (n,)


def missing_checkpoint_message(path: Path) -> str:
    return (f"checkpoint {path} does not exist. Train one, e.g. `python -m fpdm_core.train --model FPDM-FM-M "
            f"--run-dir runs/fpdm --max-minutes 60`, then pass `--checkpoint runs/fpdm/checkpoint.safetensors`")


def run(a: argparse.Namespace, config) -> Path:
    """Sample as the parsed flags say and write the three outputs; returns the output folder."""
    from tqdm.auto import tqdm

    from .checkpoints import load_model
    from .data import to_uint8
    from .devices import pick_device
    from .diffusion import GaussianDiffusion
    from .plots import save_grid
    from .sampling import new_record, sample_progressive

    path = Path(a.checkpoint)
    if not path.is_file():
        raise CheckpointError(missing_checkpoint_message(path))
    device = pick_device(a.device)
    model = load_model(path, weights=a.weights, device=device)
    diffusion = GaussianDiffusion().to(device)
    labels = class_labels(a.n, a.classes, model.config.num_classes)  # (n,)
    record = new_record(model, diffusion, config)  # raises ValueError for an impossible budget
    steps = sample_progressive(model, diffusion, labels, config, generator=torch.Generator().manual_seed(a.seed),
                               device=device, record=record)
    with tqdm(steps, total=len(record.timesteps), desc="sampling", disable=a.no_progress, dynamic_ncols=True) as bar:
        for step in bar:
            bar.set_postfix(t=step.record.t, iters=step.record.iterations, spent=step.record.spent_block_evals)
            images = step.x_t  # (n, C, H, W)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = images.float().cpu()
    period = len(a.classes) if a.classes else (model.config.num_classes or 1)
    save_grid(images, out / "samples.png", nrow=min(period, a.n))  # one column per entry of the class cycle
    np.savez(out / "samples.npz", images=to_uint8(images), labels=labels.numpy())
    info = {**record.to_dict(), "checkpoint": str(path), "weights": a.weights, "seed": a.seed, "n": a.n,
            "labels": labels.tolist()}
    (out / "record.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    config = sampler_config_from_args(a, p)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        out = run(a, config)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out / 'samples.png'}, {out / 'samples.npz'} and {out / 'record.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
