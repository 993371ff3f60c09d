"""The kit installed as a new user would (`pip install .`, not editable) samples from its shipped checkpoint
in any folder: the checkpoints travel in the wheel and `fpdm_core.assets` finds them there.

The build runs on a copy of the files a wheel is built from (pyproject.toml names them), so it writes no
build/ or *.egg-info into the checkout; the venv borrows torch and the rest from this interpreter
(--system-site-packages) and pip works offline (--no-index, --no-deps, --no-build-isolation).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fpdm_core import assets

ROOT = Path(__file__).resolve().parent.parent
BUILD_FILES = ("pyproject.toml", "README.md", "LICENSE")
BUILD_FOLDERS = ("fpdm_core", "checkpoints")

pytestmark = pytest.mark.slow


def run(args: list, cwd: Path, env: dict) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def python_files(package: Path) -> list[str]:
    return sorted(str(p.relative_to(package)) for p in package.rglob("*.py") if p.parent.name != "shipped")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A venv with the kit installed non-editable from a copy of the checkout: its python, site-packages and env."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    for name in BUILD_FILES:
        shutil.copy2(ROOT / name, src / name)
    for name in BUILD_FOLDERS:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp / "venv"
    # no pip of its own: the system's pip and setuptools (from --system-site-packages) install into the venv
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", assets.ENV_VAR)}
    run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation", src], tmp, env)
    elsewhere = tmp / "elsewhere"  # outside the checkout, so nothing is imported from the current folder
    elsewhere.mkdir()
    package = Path(run([python, "-c", "import fpdm_core; print(fpdm_core.__file__)"], elsewhere, env).strip()).parent
    return {"python": python, "venv": venv, "package": package, "env": env, "cwd": elsewhere}


def test_the_installed_package_is_the_wheel_and_holds_every_module_and_shipped_file(installed):
    package = installed["package"]
    assert package.is_relative_to(installed["venv"]), f"imported {package}, not the venv's copy"
    assert python_files(package) == python_files(ROOT / "fpdm_core"), "pyproject.toml's packages miss a subpackage"
    shipped = {p.name for p in (ROOT / "checkpoints").iterdir() if p.suffix in (".safetensors", ".md", ".jsonl")}
    assert shipped <= {p.name for p in (package / "shipped").iterdir()}
    assert set(assets.NAMES.values()) <= shipped


def test_the_sample_cli_runs_from_any_folder_on_the_shipped_fpdm(installed):
    out = installed["cwd"] / "out"
    run([installed["python"], "-m", "fpdm_core.sample", "--n", "2", "--steps", "1", "--iterations", "1",
         "--no-progress", "--out-dir", out], installed["cwd"], installed["env"])
    assert {"samples.png", "samples.npz", "record.json"} <= {p.name for p in out.iterdir()}
    checkpoint = Path(json.loads((out / "record.json").read_text())["checkpoint"])
    assert checkpoint == installed["package"] / "shipped" / assets.NAMES["fpdm"]


def test_the_environment_variable_comes_before_the_installed_copy(installed, tmp_path):
    env = {**installed["env"], assets.ENV_VAR: str(tmp_path)}
    code = "from fpdm_core import assets; print(assets.shipped('fpdm'))"
    assert run([installed["python"], "-c", code], installed["cwd"], env).strip() == str(tmp_path / assets.NAMES["fpdm"])
