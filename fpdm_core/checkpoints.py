"""Checkpoints as one safetensors file: tensors grouped by prefix, JSON metadata; never pickle.

Groups: `model.*` weights, `ema.*` EMA weights, `optim.*` AdamW state, `rng.*` generator
states. The metadata entry "fpdm" holds JSON: format, model config, diffusion config (the process
the weights were trained with), training config, step, data and seed info.

Reading checks before it builds or allocates anything: the metadata's model config (types and
limits, `ModelConfig`), then the file's header against that config (the number of values, then
every name and shape, from a build on the meta device), so a small file claiming a huge model is
refused at once.
Writes go to a private temporary folder next to the target and are renamed over it, so an
interrupted save leaves the previous checkpoint intact; what a killed save leaves behind is removed
at the next save (`remove_stale_temp_files`, one log line).

    python -m fpdm_core.checkpoints SRC DST    # export SRC's EMA weights as a small release file
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from . import assets, cli
from .diffusion import DiffusionConfig, GaussianDiffusion
from .models import DiT, FPDM, ModelConfig, build_model

FORMAT = "fpdm-kit/1"
SHIPPED = {kind: assets.shipped(kind) for kind in ("fpdm", "dit")}  # the trained generators (found by fpdm_core.assets)
WEIGHT_GROUPS = ("model", "ema")
RESUME_NEEDS = ("model", "ema", "optim", "rng")  # tensor groups of a training checkpoint
log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint of this kit."""


@dataclass
class Checkpoint:
    meta: dict  # JSON metadata ("model" holds the ModelConfig fields)
    tensors: dict[str, torch.Tensor]
    path: str = ""  # where it was read from (for messages)

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.meta["model"])

    @property
    def diffusion_config(self) -> DiffusionConfig:
        return stored_diffusion(self.meta)

    def group(self, name: str) -> dict[str, torch.Tensor]:
        prefix = name + "."
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}


def stored_diffusion(meta: dict) -> DiffusionConfig:
    """A checkpoint's diffusion config (`meta["diffusion"]`); raises ValueError for a bad one.

    Files written before checkpoints stored one (the shipped ones among them) were all trained with
    the default, DiT's `DiffusionConfig()` (linear betas, T = 1000, epsilon), and get it.
    """
    return DiffusionConfig.from_dict(meta.get("diffusion", {}))


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


def _writer_tag() -> str:
    """`HOST-PID` of this process, so a later save can tell a live writer's temporary folder from a dead one's."""
    return f"{re.sub(r'[^A-Za-z0-9]', '-', socket.gethostname())}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _holds_kit_header(path: Path) -> bool:
    """The start of a file is the header of one of this kit's checkpoints (complete or not)."""
    try:
        with open(path, "rb") as f:
            return FORMAT.encode() in f.read(1 << 16)
    except OSError:
        return False


def stale_temp_files(path: str | Path) -> list[Path]:
    """What interrupted saves of `path` left next to it and no running process still writes.

    Ours: `.NAME.HOST-PID.XXXX.tmp` (a folder; a file from older versions, which had no HOST-PID)
    whose writer on this host has stopped. safetensors' own `.tmpXXXXXX` files, which older
    versions wrote next to the target, when they hold a header of this kit's format.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    ours = re.compile(rf"^\.{re.escape(path.name)}\.(?:(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)\.)?[A-Za-z0-9_]+\.tmp$")
    host = _writer_tag().rsplit("-", 1)[0]
    stale = []
    for entry in path.parent.iterdir():
        m = ours.match(entry.name)
        if m:
            if m["pid"] is None or (m["host"] == host and not _pid_alive(int(m["pid"]))):
                stale.append(entry)
        elif re.fullmatch(r"\.tmp[A-Za-z0-9]{6}", entry.name) and entry.is_file() and _holds_kit_header(entry):
            stale.append(entry)
    return sorted(stale)


def remove_stale_temp_files(path: str | Path) -> list[str]:
    """Delete `stale_temp_files(path)`, report them in one log line, return their names."""
    removed = []
    for entry in stale_temp_files(path):
        try:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        except OSError:  # gone already (another rank cleaned it) or not ours to delete: leave it
            continue
        removed.append(entry.name)
    if removed:
        log.warning("removed %d temporary file(s) of interrupted saves next to %s: %s", len(removed), path,
                    ", ".join(removed))
    return removed


def atomic_save(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> None:
    """safetensors `save_file` into a private folder next to `path`, fsync, then rename over `path`.

    safetensors' own temporary file lands in that folder too, so a killed save leaves one entry,
    `.NAME.HOST-PID.XXXX.tmp`, which the next save of `path` removes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_writer_tag()}.", suffix=".tmp", dir=path.parent))
    tmp = folder / path.name
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # temporary files are 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def save_checkpoint(path: str | Path, *, model: DiT | FPDM, diffusion: DiffusionConfig = DiffusionConfig(),
                    meta: dict | None = None, ema: torch.nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, rng: dict[str, torch.Tensor] | None = None,
                    dtype: torch.dtype | None = None) -> None:
    """Save weights (and optionally EMA, optimizer, RNG states) with JSON metadata, atomically.

    diffusion: the process the weights were trained with (stored as meta["diffusion"]).
    dtype: cast floating weights (e.g. torch.float16 for a small shipped file).
    """
    def weights(m, prefix):
        return {f"{prefix}.{k}": (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
                for k, v in m.state_dict().items()}

    tensors = weights(model, "model")
    meta = {**(meta or {}), "format": FORMAT, "model": model.config.to_dict(), "diffusion": diffusion.to_dict()}
    if ema is not None:
        tensors.update(weights(ema, "ema"))
    if optimizer is not None:
        opt_tensors, groups = _flatten_optimizer(optimizer.state_dict())
        tensors.update(opt_tensors)
        meta["optimizer_param_groups"] = groups
    for name, state in (rng or {}).items():
        tensors[f"rng.{name}"] = state
    atomic_save(tensors, path, {"fpdm": json.dumps(meta)})


def _shape(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """State-dict shapes of the model `config` describes, from a build on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = build_model(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def shape_mismatch(want: dict[str, tuple[int, ...]], have: dict[str, tuple[int, ...]]) -> str | None:
    """None when `have` has exactly the names and shapes of `want`, else what differs, in words."""
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        return (f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
                f"{extra[:3]}{'...' if len(extra) > 3 else ''}")
    bad = next((k for k in want if tuple(have[k]) != tuple(want[k])), None)
    return None if bad is None else f"{bad} has shape {_shape(have[bad])}, the config needs {_shape(want[bad])}"


def check_weight_shapes(config: ModelConfig, shapes: dict[str, tuple[int, ...]], where: str) -> None:
    """Every weight group in `shapes` (file names) has exactly the tensors and shapes `config` needs.

    Cheap checks first, so a small file claiming a large model costs no build: the positional
    table's shape, then the number of values against `ModelConfig.parameter_count()`; only a file
    that holds that many values gets the meta build that compares every name and shape.
    """
    for group in WEIGHT_GROUPS:
        names = {k[len(group) + 1:]: v for k, v in shapes.items() if k.startswith(group + ".")}
        if not names:
            continue
        want_pos = (1, config.num_tokens, config.hidden_size)
        if names.get("pos_embed") != want_pos:
            got = _shape(names["pos_embed"]) if "pos_embed" in names else "nothing"
            raise CheckpointError(f"{where}: the weights do not match the stored model config: {group}.pos_embed "
                                  f"is {got}, the config needs {_shape(want_pos)}")
        values = sum(math.prod(shape) for shape in names.values())
        need = config.parameter_count() + math.prod(want_pos)  # parameters and the positional table
        if values != need:
            raise CheckpointError(f"{where}: the weights do not match the stored model config: the {group} weights "
                                  f"hold {values:,} values, the config needs {need:,}")
        problem = shape_mismatch(expected_shapes(config), names)
        if problem:
            raise CheckpointError(f"{where}: the {group} weights do not match the stored model config: {problem}")


def read_header(path: str | Path) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """(metadata, tensor shapes) of a checkpoint, checked, without reading any tensor.

    Raises CheckpointError for a missing, corrupt or foreign file, bad metadata (naming the config
    field and its limit) or weights that do not fit the stored config.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(path, "pt") as f:
            raw = (f.metadata() or {}).get("fpdm")
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint (corrupt, truncated or another format, "
                              f"e.g. a pickle from torch.save): {cli.one_line(e)}") from e
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file but not an FPDM-kit checkpoint (no 'fpdm' metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} has unreadable metadata (not JSON: {e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path} has format {found!r}, expected {FORMAT!r}")
    if "model" not in meta:
        raise CheckpointError(f"{path} has unreadable metadata: no model config ('model')")
    try:
        config = ModelConfig.from_dict(meta["model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has an invalid model config: {e}") from e
    try:
        stored_diffusion(meta)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has an invalid diffusion config: {e}") from e
    check_weight_shapes(config, shapes, str(path))
    return meta, shapes


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint to CPU tensors, after `read_header` checked it; any problem raises CheckpointError."""
    meta, _ = read_header(path)
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint: {cli.one_line(e)}") from e
    return Checkpoint(meta, tensors, str(path))


class Pipeline(NamedTuple):
    """A checkpoint's model and the diffusion process it was trained with: what sampling needs."""

    model: DiT | FPDM
    diffusion: GaussianDiffusion


def load_model(path: str | Path, *, weights: str = "ema", device: str | torch.device = "cpu") -> DiT | FPDM:
    """Build the model a checkpoint describes and load its `ema` (default) or `model` weights in float32."""
    return _build_model(load_checkpoint(path), weights, device)


def load_pipeline(path: str | Path, *, weights: str = "ema", device: str | torch.device = "cpu") -> Pipeline:
    """`Pipeline(model, diffusion)`: the model as `load_model` builds it and the process it was trained with.

    Checkpoints written before files stored a diffusion config (the shipped ones among them) were
    all trained with the default, DiT's `DiffusionConfig()` (linear betas, T = 1000, epsilon), and get
    it (`stored_diffusion`).
    """
    ckpt = load_checkpoint(path)
    return Pipeline(_build_model(ckpt, weights, device),
                    GaussianDiffusion.from_config(ckpt.diffusion_config).to(device))


def _build_model(ckpt: Checkpoint, weights: str, device: str | torch.device) -> DiT | FPDM:
    """The model `ckpt` describes with its `weights` ("ema" falls back to "model"), float32, eval mode."""
    path = ckpt.path
    state = ckpt.group(weights) or (ckpt.group("model") if weights == "ema" else {})
    if not state:
        raise CheckpointError(f"{path} holds no '{weights}' weights")
    model = build_model(ckpt.model_config)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the stored model config: {cli.one_line(e)}") from e
    return model.to(device).eval()


def check_resumable(path: str | Path) -> None:
    """Raise CheckpointError unless `path` holds what `--resume` needs (read from the header alone)."""
    meta, shapes = read_header(path)
    missing = [g for g in RESUME_NEEDS if not any(k.startswith(g + ".") for k in shapes)]
    missing += [k for k in ("train", "step", "optimizer_param_groups") if k not in meta]
    if missing:
        raise CheckpointError(f"{path} cannot be resumed: it holds no {', '.join(missing)} (a weights-only file, e.g. "
                              f"an export or a shipped checkpoint); resume from the run folder's checkpoint, or start "
                              f"a new run")


def restore_training(ckpt: Checkpoint, model: torch.nn.Module, ema: torch.nn.Module | None,
                     optimizer: torch.optim.Optimizer | None) -> dict[str, torch.Tensor]:
    """Load model, EMA and optimizer state in place; return the saved RNG states.

    Shapes are compared first: a checkpoint of another model raises one CheckpointError line.
    """
    where = ckpt.path or "checkpoint"
    for group, module in (("model", model), ("ema", ema)):
        if module is None:
            continue
        state, want = ckpt.group(group), module.state_dict()
        if not state:
            raise CheckpointError(f"{where} holds no '{group}' weights: it cannot be resumed")
        if state.keys() != want.keys():
            raise CheckpointError(f"{where}: its {group} weights have other names than this run's model "
                                  f"(e.g. {sorted(set(state) ^ set(want))[:3]})")
        bad = next((k for k in want if state[k].shape != want[k].shape), None)
        if bad is not None:
            raise CheckpointError(f"{where}: {group}.{bad} has shape {_shape(state[bad].shape)}, this run's model "
                                  f"needs {_shape(want[bad].shape)}")
        module.load_state_dict(state)
    if optimizer is not None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        for name, value in ckpt.group("optim").items():
            idx, key = name.split(".", 1)
            if key != "step" and (int(idx) >= len(params) or value.shape != params[int(idx)].shape):
                raise CheckpointError(f"{where}: optimizer state {name} does not fit this run's parameters")
        optimizer.load_state_dict(_unflatten_optimizer(ckpt.group("optim"), ckpt.meta["optimizer_param_groups"]))
    return ckpt.group("rng")


def export_weights(src: str | Path, dst: str | Path, *, dtype: torch.dtype = torch.float16, extra_meta: dict | None = None) -> None:
    """Write a small release file: the EMA weights of `src` (cast to `dtype`) and its metadata, no optimizer/RNG."""
    if Path(dst).resolve() == Path(src).resolve():
        raise CheckpointError(f"export {dst} is its own source: write to another path")
    ckpt = load_checkpoint(src)
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("format", "model", "diffusion", "optimizer_param_groups")}
    meta.update(extra_meta or {}, exported_from=str(src), weights="ema")
    save_checkpoint(dst, model=_build_model(ckpt, "ema", "cpu"), diffusion=ckpt.diffusion_config, meta=meta,
                    dtype=dtype)


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m fpdm_core.checkpoints", description="Export a training checkpoint's EMA "
                           "weights as a small release file.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("src", help="training checkpoint (run folder's checkpoint.safetensors)")
    p.add_argument("dst", help="release file to write (never SRC itself)")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"], help="stored precision")
    p.add_argument("--force", action="store_true", help="replace DST if it exists")
    a = p.parse_args(argv)
    try:
        cli.check_output_file(a.dst, force=a.force, sources=[a.src])
        export_weights(a.src, a.dst, dtype=getattr(torch, a.dtype))
    except (CheckpointError, cli.OutputError, OSError) as e:
        return cli.fail(e)
    print(f"wrote {a.dst} ({Path(a.dst).stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
