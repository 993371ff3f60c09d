"""The command line for `fpdm_core.sampling`: sample images from an FPDM or DiT checkpoint,
`python -m fpdm_core.sample --help`.

Writes into --out-dir: `samples.png` (one column per class), `samples.npz` (`images` uint8
N x H x W [x C], `labels`) and `record.json` (the sampling record: plan, config, per-step
iterations, residuals and costs, plus the checkpoint path). The sampler flags are generated from
`SamplerConfig`'s field declarations (`fpdm_core.options`): one flag per field, with its default,
choices and limits. Bad input ends in one line on stderr and exit code 2, before any sampling
starts; existing outputs are replaced only with --force.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from . import cli, options
from .checkpoints import SHIPPED, CheckpointError, load_pipeline
from .data import to_uint8
from .devices import pick_device
from .plots import save_grid
from .sampling import SamplerConfig, new_record, sample_progressive
from .solvers import NonFiniteError

OUTPUTS = ("samples.png", "samples.npz", "record.json")
MAX_IMAGES = 1024  # --n: all images are sampled as one batch (twice that with guidance)


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m fpdm_core.sample", description=__doc__,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=str(SHIPPED["fpdm"]), help="FPDM or DiT checkpoint (.safetensors)")
    p.add_argument("--weights", default="ema", choices=("ema", "model"), help="which weights of the checkpoint")
    p.add_argument("--n", type=cli.int_in(1, MAX_IMAGES), default=20, help="number of images (one batch)")
    p.add_argument("--classes", type=int, nargs="+", default=None, metavar="ID",
                   help="class ids to cycle through, one grid column each (id num_classes = unconditional; None = every class)")
    options.add_arguments(p, SamplerConfig, title="sampler (fpdm_core.sampling.SamplerConfig)")
    p.add_argument("--seed", type=cli.int_in(0, cli.MAX_SEED), default=0,
                   help="seed of the torch.Generator that draws all noise (0..2**32-1: torch keeps 32 bits)")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=cli.threads_type(), default=None,
                   help="torch CPU threads (None = torch's default)")
    p.add_argument("--out-dir", default="runs/samples", help=f"folder for {', '.join(OUTPUTS)}")
    p.add_argument("--force", action="store_true", help="replace outputs already in --out-dir")
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


def run(a: argparse.Namespace, config: SamplerConfig) -> Path:
    """Sample as the parsed flags say and write the three outputs; returns the output folder.

    Everything that can be refused (out-dir, checkpoint, classes, plan) is checked before sampling.
    """
    from tqdm.auto import tqdm

    out = cli.check_out_dir(a.out_dir, OUTPUTS, force=a.force)
    path = Path(a.checkpoint)
    if not path.is_file():
        raise CheckpointError(missing_checkpoint_message(path))
    device = pick_device(a.device)
    model, diffusion = load_pipeline(path, weights=a.weights, device=device)  # the process it was trained with
    labels = class_labels(a.n, a.classes, model.config.num_classes)  # (n,)
    record = new_record(model, diffusion, config)  # raises ValueError for an impossible budget
    steps = sample_progressive(model, diffusion, labels, config, generator=torch.Generator().manual_seed(a.seed),
                               device=device, record=record)
    with tqdm(steps, total=len(record.timesteps), desc="sampling", disable=a.no_progress, dynamic_ncols=True) as bar:
        for step in bar:
            bar.set_postfix(t=step.record.t, iters=step.record.iterations, spent=step.record.spent_block_evals)
            images = step.x_t  # (n, C, H, W)
    out.mkdir(parents=True, exist_ok=True)
    images = images.float().cpu()
    period = len(a.classes) if a.classes else (model.config.num_classes or 1)
    save_grid(images, out / "samples.png", nrow=min(period, a.n))  # one column per entry of the class cycle
    np.savez(out / "samples.npz", images=to_uint8(images), labels=labels.numpy())
    info = {**record.to_dict(), "checkpoint": str(path), "weights": a.weights, "diffusion": diffusion.config.to_dict(),
            "seed": a.seed, "n": a.n, "labels": labels.tolist()}
    (out / "record.json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    config = options.from_args(SamplerConfig, a, p)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        out = run(a, config)
    except (CheckpointError, cli.OutputError, ValueError, OSError) as e:
        return cli.fail(e)
    except NonFiniteError as e:  # the model diverged: not bad input, but still one line
        print(f"error: {cli.one_line(e)}", file=sys.stderr)
        return 1
    print(f"wrote {out / 'samples.png'}, {out / 'samples.npz'} and {out / 'record.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
