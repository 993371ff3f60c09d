"""Which checkpoints the app offers, and loading them: listed files in one folder (cached per file, device and
weights) or an upload held in memory by one session. Messages name files, never server folders. No Gradio in here.
"""
from __future__ import annotations

import functools
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from . import assets
from .app_settings import ExploreError, short_repr
from .checkpoints import SHIPPED, CheckpointError, load_model, stored_diffusion
from .diffusion import DiffusionConfig
from .models import DiT, FPDM

CHECKPOINT_DIR_ENV = assets.ENV_VAR
CLASSIFIER_FILE = "fmnist-classifier.safetensors"  # a judge, not a generator: never offered
DEFAULT_NAMES = {kind: path.name for kind, path in SHIPPED.items()}
KIND_NAMES = {"fpdm": "FPDM", "dit": "DiT"}
WEIGHTS = ("ema", "model")  # EMA weights (what a finished run should be sampled with) or the raw training weights
TRAIN_PRESETS = {"fpdm": "FPDM-FM-M", "dit": "DiT-FM-M"}
MAX_UPLOAD_MB = 64  # a checkpoint upload; the shipped files are 5 and 11 MB
SLOT_LABELS = {"fpdm_choice": "FPDM checkpoint", "dit_choice": "DiT checkpoint", "weights": "weights"}


def _weights(weights) -> None:
    if not isinstance(weights, str) or weights not in WEIGHTS:
        raise ExploreError(f"unknown weights {short_repr(weights)}; choose one of: {', '.join(WEIGHTS)}")


def checkpoint_dir(explicit: str | Path | None = None) -> Path:
    """`explicit`, else $FPDM_CHECKPOINT_DIR, else the kit's shipped checkpoints (`assets.checkpoint_dir`)."""
    return assets.checkpoint_dir(explicit)


def list_checkpoints(folder: str | Path) -> list[str]:
    """File names of `*.safetensors` in `folder` (not the classifier); the only names a user may pick."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.glob("*.safetensors") if p.is_file() and p.name != CLASSIFIER_FILE)


def missing_help(kind: str) -> str:
    name, preset = DEFAULT_NAMES[kind], TRAIN_PRESETS[kind]
    return (f"No {KIND_NAMES[kind]} checkpoint `{name}` in the app's checkpoint folder. Train one with "
            f"`python -m fpdm_core.train --run-dir runs/{preset} --model {preset} --max-minutes 90`, then copy "
            f"`runs/{preset}/checkpoint.safetensors` there as `{name}` (or start the app with "
            f"`--checkpoint-dir` / ${CHECKPOINT_DIR_ENV} pointing at your checkpoints), or pick or upload another "
            f"checkpoint under *Checkpoints*.")


def resolve_checkpoint(kind: str, folder: str | Path, choice: str | None = None) -> Path:
    """The file to load for slot `kind` ("fpdm" or "dit"): a name that `list_checkpoints(folder)` lists.

    No other server path can be reached, and messages name files, never folders.
    """
    key = f"{kind}_choice"
    if choice is not None and not isinstance(choice, str):
        raise ExploreError(f"{SLOT_LABELS[key]} must be a file name from the list, got {short_repr(choice)}")
    folder = Path(folder)
    name = choice or DEFAULT_NAMES[kind]
    listed = list_checkpoints(folder)
    if name not in listed:
        if name == DEFAULT_NAMES[kind]:
            raise ExploreError(missing_help(kind))
        raise ExploreError(f"{SLOT_LABELS[key]} {short_repr(Path(name).name)} is not one of the checkpoints offered: "
                           f"{', '.join(listed) or 'there are none'}")
    return folder / name


@dataclass(frozen=True)
class Loaded:
    """A read-only model shared between requests (or held by one session), with its checkpoint's metadata."""

    model: DiT | FPDM
    meta: dict
    name: str  # the file's name, never its folder

    @property
    def diffusion(self) -> DiffusionConfig:
        """The process the model was trained with (`checkpoints.stored_diffusion`)."""
        return stored_diffusion(self.meta)

    def describe(self) -> str:
        c = self.model.config
        shape = f"{c.pre_depth} pre + fixed-point + {c.post_depth} post blocks" if c.kind == "fpdm" else f"depth {c.depth}"
        step = self.meta.get("step")
        trained = f", trained {step} steps" if step is not None else ""
        return (f"`{self.name}`: {KIND_NAMES[c.kind]}, hidden {c.hidden_size}, {shape}, "
                f"{c.num_tokens} tokens, {c.num_classes} classes{trained}")


_NAME_LIST = re.compile(r"\[(?:'[\w.]+'(?:, )?)+\]")  # ['blocks.0.attn.qkv.weight', ...]
_ABS_PATH = re.compile(r"(?:/[^\s'\"`:,()]+)+/([^\s'\"`:,()/]+)")


def public_message(error: Exception, name: str) -> str:
    """An error about checkpoint `name` without server paths or dumps of weight names, one line."""
    text = _ABS_PATH.sub(r"\1", str(error)).replace("\n", " ").removeprefix(f"{name}: ")
    dump = re.search(r"\s*[(:]?\s*(Error\(s\) in loading|Missing key|Unexpected key|size mismatch|missing \[|"
                     r"unexpected \[)", text)
    if dump:  # load_state_dict's lists of weight names
        text = text[:dump.start()] + " (its tensors do not fit the model its metadata describes)"
    text = _NAME_LIST.sub("[...]", text)
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"could not load checkpoint {name}: {text}"


def _load_file(path: Path, device: str, weights: str, name: str) -> Loaded:
    from safetensors import safe_open

    try:
        model = load_model(path, weights=weights, device=device).requires_grad_(False)
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("fpdm", "{}"))
    except FileNotFoundError:
        raise ExploreError(f"checkpoint {name} does not exist") from None
    except (CheckpointError, OSError, ValueError, RuntimeError, TypeError, KeyError) as e:
        raise ExploreError(public_message(e, name)) from None
    return Loaded(model, meta if isinstance(meta, dict) else {}, name)


_LOAD_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _load_listed(path: str, mtime_ns: int, size: int, device: str, weights: str) -> Loaded:
    return _load_file(Path(path), device, weights, Path(path).name)


def load_cached(path: str | Path, device: str = "cpu", weights: str = "ema") -> Loaded:
    """Load (once per path, mtime, size, device and weights) a listed checkpoint's model.

    weights: "ema" (falls back to the raw weights if the file has no EMA) or "model".
    """
    _weights(weights)
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        raise ExploreError(f"checkpoint {path.name} does not exist") from None
    with _LOAD_LOCK:
        return _load_listed(str(path.resolve()), st.st_mtime_ns, st.st_size, str(device), weights)


def disk_loads() -> int:
    """How many times this process has read a listed checkpoint from disk (the cache's misses)."""
    return _load_listed.cache_info().misses


def forget_loaded() -> None:
    """Drop every cached checkpoint model, so the next `load_cached` reads from disk (a fresh server)."""
    with _LOAD_LOCK:
        _load_listed.cache_clear()


def load_upload(kind: str, path: str | Path, name: str, device: str = "cpu") -> dict[str, Loaded]:
    """An uploaded checkpoint loaded into memory, both weight sets: {"ema": Loaded, "model": Loaded}.

    The caller deletes the file afterwards: the session keeps the models, not the upload.
    """
    path = Path(path)
    if not str(name).endswith(".safetensors"):
        raise ExploreError(f"the uploaded {KIND_NAMES[kind]} file {short_repr(name)} is not a .safetensors checkpoint")
    size = path.stat().st_size if path.is_file() else 0
    if size > MAX_UPLOAD_MB * 2**20:
        raise ExploreError(f"the uploaded {KIND_NAMES[kind]} file {name} is {size / 2**20:.0f} MB; "
                           f"the app takes checkpoints up to {MAX_UPLOAD_MB} MB")
    out = {w: _load_file(path, device, w, name) for w in WEIGHTS}
    found = out["ema"].model.config.kind
    if found != kind:
        raise ExploreError(f"{name} holds a {KIND_NAMES[found]} model, but the {KIND_NAMES[kind]} slot needs a "
                           f"{KIND_NAMES[kind]} checkpoint")
    return out


def load_slot(kind: str, folder: str | Path, choice: str | None = None, upload: dict | None = None,
              device: str = "cpu", weights: str = "ema") -> Loaded:
    """The model for slot `kind`: an upload held by the session (`load_upload`), else a listed checkpoint."""
    _weights(weights)
    loaded = upload[weights] if upload else load_cached(resolve_checkpoint(kind, folder, choice), device, weights)
    if loaded.model.config.kind != kind:
        raise ExploreError(f"{SLOT_LABELS[f'{kind}_choice']} {loaded.name} holds a "
                           f"{KIND_NAMES[loaded.model.config.kind]} model, but the {KIND_NAMES[kind]} slot needs a "
                           f"{KIND_NAMES[kind]} checkpoint")
    return loaded


def checkpoint_status(folder: str | Path, fpdm_choice: str | None = None, dit_choice: str | None = None,
                      device: str = "cpu", weights: str = "ema") -> str:
    """Markdown: what each slot would load, or why it cannot (missing checkpoint: how to train one)."""
    lines = []
    for kind, choice in (("fpdm", fpdm_choice), ("dit", dit_choice)):
        label = "FPDM" if kind == "fpdm" else "DiT baseline"
        try:
            lines.append(f"- **{label}**: {load_slot(kind, folder, choice, device=device, weights=weights).describe()}")
        except ExploreError as e:
            lines.append(f"- **{label}**: **missing or unusable.** {e}")
    return "\n".join(lines)

