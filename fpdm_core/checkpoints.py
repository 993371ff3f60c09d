"""Checkpoints as one safetensors file: tensors grouped by prefix, JSON metadata; never pickle.

Groups: `model.*` weights, `ema.*` EMA weights, `optim.*` AdamW state, `rng.*` generator
states. The metadata entry "fpdm" holds JSON: format, model config, training config, step,
data and seed info. Writes go to a temporary file that is renamed over the target, so an
interrupted save leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .models import DiT, FPDM, ModelConfig, build_model

FORMAT = "fpdm-kit/1"
CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"  # shipped with the kit
SHIPPED = {"fpdm": CHECKPOINT_DIR / "fpdm-fm-m.safetensors", "dit": CHECKPOINT_DIR / "dit-fm-m.safetensors"}


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint of this kit."""


@dataclass
class Checkpoint:
    meta: dict  # JSON metadata ("model" holds the ModelConfig fields)
    tensors: dict[str, torch.Tensor]

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.meta["model"])

    def group(self, name: str) -> dict[str, torch.Tensor]:
        prefix = name + "."
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], list]:
    tensors = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value)
    return tensors, state["param_groups"]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], param_groups: list) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": param_groups}


def atomic_save(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> None:
    """safetensors `save_file` to a temporary file in the same folder, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(path: str | Path, *, model: DiT | FPDM, meta: dict | None = None, ema: torch.nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, rng: dict[str, torch.Tensor] | None = None,
                    dtype: torch.dtype | None = None) -> None:
    """Save weights (and optionally EMA, optimizer, RNG states) with JSON metadata, atomically.

    dtype: cast floating weights (e.g. torch.float16 for a small shipped file).
    """
    def weights(m, prefix):
        return {f"{prefix}.{k}": (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
                for k, v in m.state_dict().items()}

    tensors = weights(model, "model")
    meta = {**(meta or {}), "format": FORMAT, "model": model.config.to_dict()}
    if ema is not None:
        tensors.update(weights(ema, "ema"))
    if optimizer is not None:
        opt_tensors, groups = _flatten_optimizer(optimizer.state_dict())
        tensors.update(opt_tensors)
        meta["optimizer_param_groups"] = groups
    for name, state in (rng or {}).items():
        tensors[f"rng.{name}"] = state
    atomic_save(tensors, path, {"fpdm": json.dumps(meta)})


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint to CPU tensors; a missing, corrupt, truncated or foreign file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        tensors = load_file(path)
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            raw = (f.metadata() or {}).get("fpdm")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint (corrupt, truncated or another format, "
                              f"e.g. a pickle from torch.save): {e}") from e
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file but not an FPDM-kit checkpoint (no 'fpdm' metadata)")
    try:
        meta = json.loads(raw)
        ModelConfig.from_dict(meta["model"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has unreadable metadata: {e}") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return Checkpoint(meta, tensors)


def load_model(path: str | Path, *, weights: str = "ema", device: str | torch.device = "cpu") -> DiT | FPDM:
    """Build the model a checkpoint describes and load its `ema` (default) or `model` weights in float32."""
    ckpt = load_checkpoint(path)
    state = ckpt.group(weights) or (ckpt.group("model") if weights == "ema" else {})
    if not state:
        raise CheckpointError(f"{path} holds no '{weights}' weights")
    model = build_model(ckpt.model_config)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the stored model config: {e}") from e
    return model.to(device).eval()


def restore_training(ckpt: Checkpoint, model: torch.nn.Module, ema: torch.nn.Module | None,
                     optimizer: torch.optim.Optimizer | None) -> dict[str, torch.Tensor]:
    """Load model, EMA and optimizer state in place; return the saved RNG states."""
    model.load_state_dict(ckpt.group("model"))
    if ema is not None:
        ema.load_state_dict(ckpt.group("ema"))
    if optimizer is not None:
        optimizer.load_state_dict(_unflatten_optimizer(ckpt.group("optim"), ckpt.meta["optimizer_param_groups"]))
    return ckpt.group("rng")


def export_weights(src: str | Path, dst: str | Path, *, dtype: torch.dtype = torch.float16, extra_meta: dict | None = None) -> None:
    """Write a small release file: the EMA weights of `src` (cast to `dtype`) and its metadata, no optimizer/RNG."""
    ckpt = load_checkpoint(src)
    model = load_model(src, weights="ema")
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("format", "model", "optimizer_param_groups")}
    meta.update(extra_meta or {}, exported_from=str(src), weights="ema")
    save_checkpoint(dst, model=model, meta=meta, dtype=dtype)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(prog="python -m fpdm_core.checkpoints", description="Export a training checkpoint's EMA weights.")
    p.add_argument("src", help="training checkpoint (run folder's checkpoint.safetensors)")
    p.add_argument("dst", help="release file to write")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    a = p.parse_args()
    export_weights(a.src, a.dst, dtype=getattr(torch, a.dtype))
    print(f"wrote {a.dst} ({Path(a.dst).stat().st_size / 1e6:.1f} MB)")
