"""Data-parallel training helpers: torchrun detection, process group set-up, batch sharding, reductions.

`python -m torch.distributed.run --nproc_per_node N -m fpdm_core.train ...` (the same as `torchrun`)
sets RANK, WORLD_SIZE and LOCAL_RANK; `setup()` reads them, picks the device (cuda:LOCAL_RANK
on GPUs, else the CPU) and initialises the process group with NCCL on CUDA and Gloo on the CPU.
Without those variables everything here is a no-op for one process, so the training code has
one path. Every rank draws the same global quantities from the same seeded generator and keeps
its own slice (`DistInfo.shard`), so a run on N processes follows a one-process run with the
same global batch up to float rounding.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .devices import pick_device

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job; `world_size == 1` is a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # "nccl" | "gloo" | None (single process)
    owns_group: bool = False  # True when setup() created the process group (teardown() destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_size(self, global_size: int) -> int:
        if global_size % self.world_size:
            raise ValueError(f"the global batch size {global_size} is not divisible by the {self.world_size} "
                             f"processes; choose a multiple of {self.world_size}")
        return global_size // self.world_size

    def shard(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch along dim 0: (B, ...) -> (B / world_size, ...)."""
        n = self.local_size(x.shape[0])
        return x[self.rank * n: (self.rank + 1) * n]


def from_env(environ=None) -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) from torchrun's variables, or None when they are not all set."""
    environ = os.environ if environ is None else environ
    if not all(k in environ for k in ENV_VARS):
        return None
    try:
        rank, world, local = (int(environ[k]) for k in ENV_VARS)
    except ValueError as e:
        raise ValueError(f"torchrun variables must be integers, got {[environ[k] for k in ENV_VARS]}") from e
    if not (0 <= rank < world and 0 <= local):
        raise ValueError(f"inconsistent torchrun variables RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    return rank, world, local


def setup(device: str = "auto") -> tuple[DistInfo, torch.device]:
    """Read torchrun's environment, pick this rank's device and initialise the process group.

    device: as `devices.pick_device`; under torchrun `auto` and `cuda` mean cuda:LOCAL_RANK.
    Returns (DistInfo, device). Outside torchrun (or with WORLD_SIZE=1) no group is created.
    """
    env = from_env()
    if env is None or env[1] == 1:
        return DistInfo(), pick_device(device)
    rank, world, local = env
    if device in ("auto", "cuda") and torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs are visible: "
                             f"use --nproc_per_node <= {torch.cuda.device_count()}")
        dev = torch.device("cuda", local)
    else:
        dev = pick_device("cpu" if device == "auto" else device)
    if dev.type == "mps":
        raise ValueError("distributed training on MPS is not supported by PyTorch; use --device cpu or one process")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    elif dist.get_world_size() != world:
        raise RuntimeError(f"a process group of size {dist.get_world_size()} exists but WORLD_SIZE={world}")
    return DistInfo(rank, world, local, dist.get_backend(), owns), dev


def teardown(info: DistInfo, wait: bool = True) -> None:
    """Wait for every rank (unless `wait` is False, e.g. after an error), then destroy the group setup() made."""
    if info.enabled and dist.is_initialized():
        if wait:
            dist.barrier()
        if info.owns_group:
            dist.destroy_process_group()


def all_reduce_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of `x` over ranks (a new tensor; `x` itself is left alone)."""
    if not info.enabled:
        return x
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / info.world_size


def rank0_decides(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """Rank 0's value of `flag` on every rank (e.g. "the time limit has passed"), so all stop together."""
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())

