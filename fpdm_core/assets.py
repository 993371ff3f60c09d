"""Where the kit's shipped files are: the trained checkpoints, the Fashion-MNIST judge and their cards.

One lookup, first match wins:
1. an explicit folder (a `--checkpoint-dir` flag, a function argument);
2. the environment variable `FPDM_CHECKPOINT_DIR`;
3. the checkout's `checkpoints/` folder (a git clone, or an editable install of one);
4. the copy installed with the package (`pip install .`): the same folder, shipped in the wheel as the
   data-only package `fpdm_core.shipped` (see pyproject.toml).

Programs that write shipped files (`metrics train-classifier` by default, scripts/model_card.py) write into
the checkout's folder, `CHECKOUT_DIR`; training writes into its --run-dir, whose checkpoint is exported
there with `python -m fpdm_core.checkpoints RUN/checkpoint.safetensors checkpoints/NAME.safetensors`.
"""
from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

ENV_VAR = "FPDM_CHECKPOINT_DIR"
CHECKOUT_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
PACKAGE = "fpdm_core.shipped"  # pyproject.toml maps CHECKOUT_DIR to this package in the wheel
NAMES = {"fpdm": "fpdm-fm-m.safetensors", "dit": "dit-fm-m.safetensors", "dit16": "dit16-fm-m.safetensors",
         "classifier": "fmnist-classifier.safetensors"}


def in_checkout() -> bool:
    """True when this package runs from a source tree (its parent folder holds pyproject.toml and checkpoints/)."""
    return CHECKOUT_DIR.is_dir() and (CHECKOUT_DIR.parent / "pyproject.toml").is_file()


def installed_dir() -> Path | None:
    """The folder of the checkpoints installed with the package, or None when they were not installed."""
    try:
        folder = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError:
        return None
    return Path(str(folder))


def checkpoint_dir(explicit: str | Path | None = None) -> Path:
    """The folder of the shipped files: `explicit`, else $FPDM_CHECKPOINT_DIR, else the checkout's checkpoints/,
    else the installed copy (CHECKOUT_DIR, which does not exist, when there is none: messages then name it)."""
    if explicit:
        return Path(explicit)
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR])
    if in_checkout():
        return CHECKOUT_DIR
    return installed_dir() or CHECKOUT_DIR


def shipped(kind: str, folder: str | Path | None = None) -> Path:
    """The path of the shipped file `kind` (a key of NAMES) in `checkpoint_dir(folder)`; it may not exist."""
    if kind not in NAMES:
        raise ValueError(f"kind must be one of {sorted(NAMES)}, got {kind!r}")
    return checkpoint_dir(folder) / NAMES[kind]
