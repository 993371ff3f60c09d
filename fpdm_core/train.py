"""Training: FPDM with Stochastic Jacobian-Free Backpropagation (S-JFB), JFB or full backprop; DiT baseline.

`python -m fpdm_core.train --help` lists the flags. A run folder holds `checkpoint.safetensors`
(weights, EMA, optimizer, RNG), `metrics.jsonl`, sample grids and residual plots. `--resume`
continues a run exactly where it stopped.

Data parallel: `python -m torch.distributed.run --nproc_per_node N -m fpdm_core.train ...` (torchrun)
trains with DDP (NCCL on GPUs, Gloo on the CPU). --batch-size stays the GLOBAL batch; every rank
draws the global batch's indices, timesteps, noise, label dropout and S-JFB iteration counts from
the same seeded generator and keeps its slice, so the run follows a one-process run with the same
global batch (up to float rounding) and can be resumed on another number of processes. Rank 0
alone logs, shows progress, samples and saves (the same checkpoint format).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint as recompute
from tqdm.auto import tqdm

from . import cli, distributed, options
from .checkpoints import (CheckpointError, check_resumable, load_checkpoint, remove_stale_temp_files,
                          restore_training, save_checkpoint)
from .data import load_dataset
from .devices import autocast, pick_device, resolve_precision
from .diffusion import DiffusionConfig, GaussianDiffusion
from .latent_shards import read_latents_info
from .models import FPDM, build_model, solve_outside_autocast
from .plots import residual_curves, save_grid
from .sampling import SamplerConfig, sample
from .train_config import TrainConfig

CHECKPOINT_NAME = "checkpoint.safetensors"


def draw_iterations(cfg: TrainConfig, generator: torch.Generator) -> tuple[int, int]:
    """(n_no_grad, n_grad) for one batch, drawn from `generator` (one draw shared by the batch)."""
    n_ng = int(torch.randint(cfg.no_grad_iters[0], cfg.no_grad_iters[1] + 1, (1,), generator=generator))
    n_g = int(torch.randint(cfg.grad_iters[0], cfg.grad_iters[1] + 1, (1,), generator=generator))
    if cfg.gradient == "jfb":
        return n_ng, 1
    if cfg.gradient == "full":
        return 0, n_ng + n_g
    return n_ng, n_g


def fpdm_train_forward(model: FPDM, x_t, t, y, n_no_grad: int, n_grad: int, *, recompute_iters: bool = False,
                       generator: torch.Generator | None = None, drop_labels: torch.Tensor | None = None,
                       fixed_point_map=None, return_stats: bool = False):
    """S-JFB forward: n_no_grad iterations without a graph from x_pre, then n_grad with one.

    The no-grad phase is `solvers.solve` (Picard, exactly n_no_grad evaluations). The initial
    iterate is detached, so the pre blocks get gradient only through the injection.
    drop_labels: (B,) bool, labels to replace by the null class (None: the model draws them).
    fixed_point_map: a stand-in for `model.fixed_point_map` with the same signature (e.g. compiled).
    Returns the output (B, C_out, H, W), or with `return_stats` (output, SolverStats of the
    no-grad phase, None when n_no_grad is 0).
    """
    f = fixed_point_map or model.fixed_point_map
    enc = model.encode(x_t, t, y, generator, drop_labels)
    z, stats = enc.x_pre.detach(), None  # (B, N, D)
    if n_no_grad:
        with torch.no_grad():
            inj, c = enc.inj.detach(), enc.c_fp.detach()
            z, stats = solve_outside_autocast(lambda v: f(v, inj, c), z, max_iter=n_no_grad, solver="picard",
                                              label="S-JFB no-grad phase")
    for _ in range(n_grad):
        if recompute_iters:
            z = recompute(f, z, enc.inj, enc.c_fp, use_reentrant=False)
        else:
            z = f(z, enc.inj, enc.c_fp)
    out = model.decode(z, enc.c_io)
    return (out, stats) if return_stats else out


class TrainForward(torch.nn.Module):
    """The training forward pass as a module's `forward`, so DDP's gradient hooks see it.

    FPDM trains through `encode` / `fixed_point_map` / `decode` (S-JFB), not `FPDM.forward`;
    wrapping that path in a module lets `DistributedDataParallel(TrainForward(model))` all-reduce
    every parameter's gradient (no `find_unused_parameters` needed: n_grad >= 1 touches them all).
    Parameters keep their names under `model.`; save `trainer.model`, never this wrapper.
    """

    def __init__(self, model: torch.nn.Module, *, recompute_iters: bool = False, compile: bool | str = False):
        """compile: True for torch.compile's default backend (inductor), or a backend name (e.g. "aot_eager")."""
        super().__init__()
        self.model, self.recompute_iters = model, recompute_iters
        self.fpdm = isinstance(model, FPDM)
        kw = {"backend": compile} if isinstance(compile, str) else {}
        # compiled bound methods, not modules: the wrapper's parameters stay exactly model.*
        self.fixed_point_map = torch.compile(model.fixed_point_map, **kw) if compile and self.fpdm else None
        self.dit_forward = torch.compile(model.forward, **kw) if compile and not self.fpdm else None

    def forward(self, x_t, t, y, n_no_grad: int = 0, n_grad: int = 1, drop_labels: torch.Tensor | None = None):
        """(output (B, C_out, H, W), final relative residual of the no-grad phase (B,) or None)."""
        if self.fpdm:
            out, stats = fpdm_train_forward(self.model, x_t, t, y, n_no_grad, n_grad,
                                            recompute_iters=self.recompute_iters, drop_labels=drop_labels,
                                            fixed_point_map=self.fixed_point_map, return_stats=True)
            return out, (stats.final_rel if stats is not None else None)
        return (self.dit_forward or self.model)(x_t, t, y, drop_labels=drop_labels), None


def enable_tf32(device: torch.device) -> bool:
    """TF32 tensor-core matmuls for float32 work on CUDA (bf16 autocast regions are unaffected)."""
    if device.type != "cuda":
        return False
    torch.set_float32_matmul_precision("high")  # convolutions (the patch embedding) use TF32 by default
    return True


def ema_decay(cfg: TrainConfig, step: int) -> float:
    """EMA decay at 0-based `step`; with warm-up the average forgets the (useless) initial weights quickly."""
    return min(cfg.ema_decay, (1 + step) / (10 + step)) if cfg.ema_warmup else cfg.ema_decay


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    e, m = list(ema.parameters()), list(model.parameters())
    torch._foreach_lerp_(e, m, 1 - decay)


class Trainer:
    """One training run: data, model, EMA, AdamW, generators; `step()` does one batch.

    dist/device: this process's place in a torchrun job and its device (`distributed.setup()`);
    left out, a single process on `cfg.device`. `self.model` is the bare model (save and sample
    with it); `self.forward_module` is what the step calls (DDP-wrapped when distributed).
    """

    def __init__(self, cfg: TrainConfig, run_dir: str | Path | None = None, *,
                 dist: distributed.DistInfo | None = None, device: torch.device | None = None):
        self.cfg, self.run_dir = cfg, Path(run_dir) if run_dir else None
        self.dist = dist or distributed.DistInfo()
        self.dist.local_size(cfg.batch_size)  # --batch-size is global: it must split evenly over the ranks
        self.device = device if device is not None else pick_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        if cfg.tf32:
            enable_tf32(self.device)
        self.x, self.y = load_dataset(cfg.dataset, data_dir=cfg.data_dir)
        if cfg.subset:
            self.x, self.y = self.x[: cfg.subset], self.y[: cfg.subset]
        torch.manual_seed(cfg.seed)  # weight init only; every later draw uses self.gen
        model_cfg = cfg.model_config()
        self.model = build_model(model_cfg, grad_checkpoint=cfg.grad_checkpoint,
                                 timestep_cond_pre_post=cfg.timestep_cond_pre_post,
                                 input_size=self.x.shape[-1], in_channels=self.x.shape[1],
                                 num_classes=max(model_cfg.num_classes, int(self.y.max()) + 1)).to(self.device)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.diffusion = GaussianDiffusion.from_config(cfg.diffusion).to(self.device)
        self.gen = torch.Generator().manual_seed(cfg.seed)  # identical on every rank: keep draws global
        self.step_count = 0
        self.batches_per_epoch = max(1, len(self.x) // cfg.batch_size)
        self.forward_module = TrainForward(self.model, recompute_iters=cfg.recompute, compile=cfg.compile)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.forward_module = DistributedDataParallel(
                self.forward_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slice of batch `step_count` of a per-epoch permutation seeded by (seed, epoch).

        Resumable from the step alone, on any number of ranks.
        """
        epoch, i = divmod(self.step_count, self.batches_per_epoch)
        perm = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch))
        idx = self.dist.shard(perm[i * self.cfg.batch_size: (i + 1) * self.cfg.batch_size])
        return self.x[idx].to(self.device, torch.float32), self.y[idx].to(self.device)

    def loss(self, x0, y) -> tuple[torch.Tensor, dict]:
        """Mean loss over this rank's slice; t, noise, iteration counts and label dropout are drawn globally."""
        shard, Bg = self.dist.shard, x0.shape[0] * self.dist.world_size
        t = shard(self.diffusion.sample_t(Bg, generator=self.gen)).to(self.device)  # (B,)
        noise = shard(torch.randn((Bg, *x0.shape[1:]), generator=self.gen)).to(self.device)  # (B, C, H, W)
        info, n_ng, n_g = {}, 0, 1
        if isinstance(self.model, FPDM):
            n_ng, n_g = draw_iterations(self.cfg, self.gen)
            info = {"n_no_grad": n_ng, "n_grad": n_g}
        # label dropout is drawn here for the whole global batch, so that every rank agrees on it
        rate = self.model.config.class_dropout
        drop = shard(torch.rand((Bg,), generator=self.gen) < rate if rate > 0 else torch.zeros(Bg, dtype=torch.bool))

        residuals = []

        def model_fn(x_t, tt):
            out, residual = self.forward_module(x_t, tt, y, n_ng, n_g, drop.to(y.device))
            residuals.append(residual)
            return out

        with autocast(self.device, self.precision):
            loss, _ = self.diffusion.training_loss(model_fn, x0, t, noise)
        if isinstance(self.model, FPDM):  # the global batch's mean final relative residual of the no-grad phase
            res = residuals[0]
            info["fp_residual"] = None if res is None else \
                distributed.all_reduce_mean(res.mean().to(self.device), self.dist).item()
        return loss.float(), info

    def step(self) -> dict:
        cfg = self.cfg
        self.model.train()
        x0, y = self.batch()
        lr = cfg.lr * min(1.0, (self.step_count + 1) / max(1, cfg.warmup_steps))
        for g in self.opt.param_groups:
            g["lr"] = lr
        loss, info = self.loss(x0, y)
        global_loss = distributed.all_reduce_mean(loss.detach(), self.dist)  # the global batch's mean loss
        if not torch.isfinite(global_loss):
            raise FloatingPointError(f"loss is {global_loss.item()} at step {self.step_count}: lower --lr, raise "
                                     f"--warmup-steps or use --precision fp32; the last checkpoint is untouched")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages the gradients over ranks here
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        ema_update(self.ema, self.model, ema_decay(cfg, self.step_count))
        self.step_count += 1
        return {"step": self.step_count, "loss": global_loss.item(), "grad_norm": float(grad_norm), "lr": lr, **info}

    # ---------------------------------------------------------------- persistence
    def save(self, path: str | Path, elapsed_s: float = 0.0) -> None:
        data = {"dataset": self.cfg.dataset, "num_images": len(self.x), "seed": self.cfg.seed}
        if self.cfg.dataset == "latents":  # what decoding samples needs: the VAE and the latent scale
            info = read_latents_info(self.cfg.data_dir)
            data["latents"] = {k: info.get(k) for k in ("vae", "vae_subfolder", "scale", "size", "posterior")}
        meta = {"train": self.cfg.to_meta(), "step": self.step_count, "elapsed_s": elapsed_s, "data": data,
                "torch": torch.__version__, "precision": self.precision, "world_size": self.dist.world_size}
        save_checkpoint(path, model=self.model, diffusion=self.cfg.diffusion, ema=self.ema, optimizer=self.opt,
                        meta=meta, rng={"train": self.gen.get_state()})

    def resume(self, path: str | Path) -> float:
        """Restore everything from a checkpoint; return the wall time already spent."""
        check_resumable(path)  # a weights-only file: one CheckpointError line, not a KeyError
        ckpt = load_checkpoint(path)
        try:
            saved = TrainConfig.from_meta(ckpt.meta)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path} has an unreadable training config: {e}") from e
        for key in ("model", "model_overrides", "diffusion", "dataset", "batch_size", "gradient", "seed", "subset",
                    "timestep_cond_pre_post"):
            if getattr(saved, key) != getattr(self.cfg, key):
                raise CheckpointError(f"cannot resume: {key} is {getattr(self.cfg, key)!r} but the checkpoint used "
                                      f"{getattr(saved, key)!r}")
        rng = restore_training(ckpt, self.model, self.ema, self.opt)
        self.gen.set_state(rng["train"])
        self.step_count = ckpt.meta["step"]
        return float(ckpt.meta.get("elapsed_s", 0.0))


def write_samples(trainer: Trainer, out_dir: Path, tag: str) -> None:
    """A grid of EMA samples (one column per class) and a residual plot for FPDM."""
    import matplotlib

    matplotlib.use("Agg")

    nc = trainer.ema.config.num_classes or 1
    labels = torch.arange(nc).repeat(2) if trainer.ema.config.num_classes else torch.zeros(16, dtype=torch.long)
    images, record = sample(trainer.ema, trainer.diffusion, labels, SamplerConfig(steps=20, iterations=6),
                            generator=torch.Generator().manual_seed(0), device=trainer.device)
    save_grid(images, out_dir / f"samples_{tag}.png", nrow=nc)
    if record.kind == "fpdm":
        fig = residual_curves(record)
        fig.savefig(out_dir / f"residuals_{tag}.png", dpi=100)
        matplotlib.pyplot.close(fig)


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False, progress: bool = True) -> Trainer:
    """Train until max_steps or max_minutes, logging to run_dir; returns the trainer.

    Under torchrun this joins the job (see `distributed.setup`): rank 0 logs, shows progress,
    samples and saves; every rank returns its trainer.
    """
    info, device = distributed.setup(cfg.device)
    try:
        trainer = _train(cfg, Path(run_dir), resume, progress, info, device)
    except BaseException:
        distributed.teardown(info, wait=False)  # the other ranks may be stuck in a collective: do not wait
        raise
    distributed.teardown(info)
    return trainer


def _train(cfg: TrainConfig, run_dir: Path, resume: bool, progress: bool, info: distributed.DistInfo,
           device: torch.device) -> Trainer:
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, run_dir, dist=info, device=device)
    main_rank = info.is_main
    ckpt_path = run_dir / CHECKPOINT_NAME
    elapsed = 0.0
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        elapsed = trainer.resume(ckpt_path)
    elif ckpt_path.exists():
        raise FileExistsError(f"{ckpt_path} exists: pass --resume to continue that run, or choose another --run-dir")
    if main_rank:
        (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    max_steps = cfg.max_steps if cfg.max_steps is not None else sys.maxsize
    deadline = time.monotonic() + cfg.max_minutes * 60 if cfg.max_minutes is not None else math.inf
    start, last_save = time.monotonic(), trainer.step_count
    bar = tqdm(total=None if max_steps == sys.maxsize else max_steps, initial=trainer.step_count,
               disable=not (progress and main_rank), desc=cfg.model, dynamic_ncols=True)
    metrics_path = run_dir / "metrics.jsonl"
    if main_rank:  # keep only rows the checkpoint covers: steps logged after the last save are logged again
        old = metrics_path.read_text().splitlines() if resume and metrics_path.exists() else []
        kept = [line for line in old if line.strip() and json.loads(line).get("step", 0) <= trainer.step_count]
        metrics_path.write_text("".join(line + "\n" for line in kept))
    log = open(metrics_path, "a") if main_rank else None
    try:
        # rank 0's clock decides when time is up, so every rank runs the same number of steps
        while trainer.step_count < max_steps and not (
                deadline < math.inf and distributed.rank0_decides(time.monotonic() >= deadline, info, trainer.device)):
            row = trainer.step()
            if not main_rank:
                continue
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            if trainer.step_count % cfg.log_every == 0 or trainer.step_count == 1:
                row["elapsed_s"] = round(elapsed + time.monotonic() - start, 2)
                log.write(json.dumps(row) + "\n")
                log.flush()
            if trainer.step_count % cfg.save_every == 0:
                trainer.save(ckpt_path, elapsed + time.monotonic() - start)
                last_save = trainer.step_count
            # latents need the VAE to become images: sample them with `python -m fpdm_core.latents sample`
            if cfg.sample_every and cfg.dataset != "latents" and trainer.step_count % cfg.sample_every == 0:
                write_samples(trainer, run_dir, f"{trainer.step_count:07d}")
    finally:
        if log is not None:
            log.close()
    bar.close()
    if main_rank and (trainer.step_count != last_save or not ckpt_path.exists()):
        trainer.save(ckpt_path, elapsed + time.monotonic() - start)
    return trainer


def model_override(text: str) -> tuple[str, object]:
    """`KEY=VALUE` -> (key, value) with VALUE read as JSON (2, 0.5, true); checked by TrainConfig."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. pre_depth=2), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"{text!r}: the value must be a number or true/false") from None


def build_parser() -> argparse.ArgumentParser:
    """The flags: the run's own, one per declared field of `TrainConfig` and `DiffusionConfig`, and the
    overrides and iteration ranges (their shapes are not a single value)."""
    p = cli.ArgumentParser(prog="python -m fpdm_core.train", description=__doc__,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run-dir", required=True, help="folder for checkpoint, metrics and samples")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir exactly where it stopped")
    p.add_argument("--force", action="store_true",
                   help="start a new run in a --run-dir that holds an earlier one (deletes its checkpoint and metrics)")
    p.add_argument("--threads", type=cli.threads_type(), default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    g = options.add_arguments(p, TrainConfig, title="training (fpdm_core.train_config.TrainConfig)")
    g.add_argument("--model-override", dest="model_overrides", action="append", type=model_override,
                   metavar="KEY=VALUE", help="replace a field of the preset, e.g. --model-override pre_depth=2 "
                                             "(repeatable)")
    g.add_argument("--no-grad-iters", type=int, nargs=2, default=TrainConfig.no_grad_iters, metavar=("A", "B"),
                   help="n_no_grad ~ U{A..B}")
    g.add_argument("--grad-iters", type=int, nargs=2, default=TrainConfig.grad_iters, metavar=("C", "D"),
                   help="n_grad ~ U{C..D}")
    options.add_arguments(p, DiffusionConfig, title="diffusion process (stored in the checkpoint: sampling uses it)")
    return p


def parse_args(argv=None) -> tuple[TrainConfig, argparse.Namespace]:
    """The run's config and the parsed flags; a bad flag or config ends in one stderr line and exit code 2."""
    p = build_parser()
    a = p.parse_args(argv)
    if a.resume and a.force:
        p.error("--resume continues the run in --run-dir, --force replaces it: give one of them")
    declared = {name: getattr(a, name) for name in options.options_of(TrainConfig)}
    try:
        cfg = TrainConfig(**declared, diffusion=options.from_args(DiffusionConfig, a),
                          model_overrides=dict(a.model_overrides or []),
                          no_grad_iters=tuple(a.no_grad_iters), grad_iters=tuple(a.grad_iters))
    except ValueError as e:
        p.error(str(e))
    return cfg, a


def prepare_run_dir(run_dir: str | Path, *, resume: bool, force: bool) -> None:
    """Before any data is loaded: a usable --run-dir, never an earlier run's history lost by accident.

    A folder with a checkpoint or metrics needs --resume (checked to be a training checkpoint) or
    --force (which deletes them); temporary files of interrupted saves are removed (one log line).
    """
    run_dir = cli.check_out_dir(run_dir, flag="--run-dir")
    ckpt = run_dir / CHECKPOINT_NAME
    history = [name for name in (CHECKPOINT_NAME, "metrics.jsonl") if (run_dir / name).exists()]
    if resume and ckpt.exists():
        check_resumable(ckpt)
    elif history and not resume and not force:
        raise cli.OutputError(f"--run-dir {run_dir} holds an earlier run ({', '.join(history)}): pass --resume to "
                              f"continue it, --force to start over (deletes them), or choose another --run-dir")
    elif force:
        for name in history:
            (run_dir / name).unlink(missing_ok=True)
    remove_stale_temp_files(ckpt)


def main(argv: list[str] | None = None) -> int:
    cfg, a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    env = distributed.from_env()
    rank = env[0] if env else 0
    try:
        prepare_run_dir(a.run_dir, resume=a.resume, force=a.force)
        trainer = train(cfg, a.run_dir, resume=a.resume, progress=not a.no_progress)
    except (OSError, CheckpointError, ValueError, FloatingPointError) as e:  # OutputError is a ValueError
        return cli.fail(f"{f'(rank {rank}) ' if env else ''}{e}")
    if rank == 0:
        print(f"saved {Path(a.run_dir) / CHECKPOINT_NAME} at step {trainer.step_count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
