"""The convention every `python -m fpdm_core.X` follows: `main(argv) -> int`; bad input ends in ONE line
on stderr and exit code 2, never a traceback.

`ArgumentParser` prints argparse's own errors as one line; the `*_in` types check numbers while the
flags are parsed, so nothing starts before a bad value is refused; `fail(err)` prints any error as
one `error: ...` line and returns 2; `check_output_file` / `check_out_dir` refuse overwrites and
unwritable places before the work starts.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from .options import Option

EXIT_BAD_INPUT = 2
MAX_SEED = 2**32 - 1  # torch's CPU generator keeps the low 32 bits: seeds 0 and 2**32 draw the same noise


class OutputError(ValueError):
    """An output path that must not or cannot be written."""


def one_line(text) -> str:
    """`text` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


def fail(err: BaseException | str) -> int:
    """Print `error: <err>` as one line on stderr; return the bad-input exit code (2)."""
    print(f"error: {one_line(err)}", file=sys.stderr)
    return EXIT_BAD_INPUT


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, `prog: error: message (usage: prog --help)`, exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {one_line(message)} (usage: {self.prog} --help)\n")


def int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer in lo..hi (hi None: no upper limit); the check is `options.Option`'s."""
    return Option("", lo=lo, hi=hi, type=int).argparse_type()


def float_in(lo: float, hi: float = math.inf, *, lo_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite number in [lo, hi] ((lo, hi] with lo_open); the check is `options.Option`'s."""
    return Option("", lo=lo, hi=None if hi == math.inf else hi, lo_open=lo_open, type=float).argparse_type()


def threads_type() -> Callable[[str], int]:
    """argparse type for --threads: 1..the number of CPUs of this machine."""
    return int_in(1, os.cpu_count() or 1)


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable_folder(folder: Path, what: str) -> None:
    """The folder (or the nearest part of it that exists) is a folder we can create files in."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise OutputError(f"{what} {folder} cannot be created: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise OutputError(f"{what} {folder} is not writable ({e.strerror or e}): choose another place") from e


def check_output_file(path: str | Path, *, force: bool = False, sources: Iterable[str | Path] = ()) -> Path:
    """Refuse to write `path` over one of `sources` (ever), over an existing file (unless force), or where it
    cannot be written."""
    path = Path(path)
    for src in sources:
        src = Path(src)
        same = path.exists() and src.exists() and os.path.samefile(path, src)
        if same or path.resolve() == src.resolve():
            raise OutputError(f"output {path} is the input file itself: write to another path")
    if path.is_dir():
        raise OutputError(f"output {path} is a folder: give a file name")
    if path.exists() and not force:
        raise OutputError(f"output {path} exists: pass --force to replace it, or choose another path")
    _check_writable_folder(path.parent, "the folder of")
    return path


def check_out_dir(folder: str | Path, outputs: Iterable[str] = (), *, force: bool = False,
                  flag: str = "--out-dir") -> Path:
    """An output folder that is (or can become) a writable folder, holding none of `outputs` unless force."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{flag} {folder} is a file, not a folder")
    _check_writable_folder(folder, flag)
    present = [name for name in outputs if (folder / name).exists()]
    if present and not force:
        raise OutputError(f"{flag} {folder} already holds {', '.join(present)}: pass --force to replace them, "
                          f"or choose another {flag}")
    return folder
