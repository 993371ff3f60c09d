"""The notebooks: thin and well-formed as stored; executed with papermill (scripts/run_notebooks.py)
into a temporary folder, re-run by nbval (cells tagged NBVAL_CHECK_OUTPUT must print the same),
and reproducible (the second run writes the same results.json). Nothing is written into the repo.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from fpdm_core.data import fashion_mnist_dir

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
RUNNER = REPO / "scripts" / "run_notebooks.py"
HAVE_FMNIST = (fashion_mnist_dir() / "train-images-idx3-ubyte.gz").exists()
EXPECTED = ["01_fixed_points", "02_training", "03_convergence", "04_compute_reallocation", "05_fpdm_vs_dit"]


def _ids(paths):
    return [p.stem for p in paths]


def test_the_five_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


# ----------------------------------------------------------------------------- as stored
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_thin_and_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit notebooks without outputs"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged `parameters`"
    assert re.search(r'^figures_dir = "outputs/', params[0].source, re.M)
    assert re.search(r'^out_dir = "outputs/', params[0].source, re.M), "default outputs go to the gitignored notebooks/outputs/"
    source = "\n".join(c.source for c in code)
    assert re.search(r"^(from|import) fpdm_core", source, re.M)
    assert "sys.path" not in source and "os.chdir" not in source
    assert not re.search(r"""["'](/|[A-Za-z]:\\)\w""", source), "no absolute paths"
    assert not re.search(r"^\s*(class \w+\(nn\.Module\)|def solve\(|def fixed_point_map\()", source, re.M), "no pasted package code"
    assert sum("# NBVAL_CHECK_OUTPUT" in c.source for c in code) >= 1
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "Real run on a GPU" in markdown
    assert "--profile full" in markdown


def test_notebook_outputs_folder_is_gitignored():
    out = subprocess.run(["git", "check-ignore", "-q", "notebooks/outputs/x/results.json"], cwd=REPO)
    assert out.returncode == 0, "add notebooks/outputs/ to .gitignore"


def test_runner_merges_profile_file_and_command_line(tmp_path):
    extra = tmp_path / "params.yaml"
    extra.write_text(yaml.safe_dump({"seed": 5, "02_training": {"steps": 3}, "03_convergence": {"checkpoint": "ck.safetensors"}}))
    out = subprocess.run([sys.executable, str(RUNNER), "--dry-run", "--profile", "full", "--params-file", str(extra),
                          "-p", "02_training.steps", "4", "-p", "subset", "100", "--out", str(tmp_path / "o")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    plans = json.loads(out.stdout)
    assert list(plans) == EXPECTED
    assert plans["02_training"]["steps"] == 4 and plans["02_training"]["subset"] == 100  # command line wins
    assert plans["02_training"]["fpdm_model"] == "FPDM-FM-M"  # from the profile
    assert all(p["seed"] == 5 for p in plans.values())
    assert plans["03_convergence"]["checkpoint"] == str(tmp_path / "ck.safetensors")  # relative to where it ran
    assert plans["01_fixed_points"]["out_dir"] == str(tmp_path / "o" / "01_fixed_points")
    assert plans["05_fpdm_vs_dit"]["bench_dir"] == str(REPO / "figures" / "bench")  # defaults: from notebooks/
    bad = subprocess.run([sys.executable, str(RUNNER), "--dry-run", "-p", "stpes", "4"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode != 0 and "stpes" in bad.stderr


def test_full_profile_only_names_declared_parameters():
    profiles = yaml.safe_load((REPO / "notebooks" / "profiles.yaml").read_text())
    assert set(profiles) >= {"default", "full"}
    out = subprocess.run([sys.executable, str(RUNNER), "--dry-run", "--profile", "full"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    plans = json.loads(out.stdout)
    for stem, params in profiles["full"].items():
        if stem != "all":
            assert all(plans[stem][k] == v for k, v in params.items()), stem


# ----------------------------------------------------------------------------- executed
def _snapshot(*folders: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for f in folders if f.exists() for p in f.rglob("*")}


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Every notebook executed once with its stored defaults by scripts/run_notebooks.py, into a temp folder."""
    if not HAVE_FMNIST:
        pytest.skip("Fashion-MNIST not installed: `apt-get install dataset-fashion-mnist`")
    watched = (REPO / "notebooks", REPO / "figures" / "notebooks")
    before = _snapshot(*watched)
    root = tmp_path_factory.mktemp("notebooks")
    # CPU even where a GPU exists: CUDA kernels are not bit-reproducible, and these are the defaults' numbers
    run = subprocess.run([sys.executable, str(RUNNER), "--out", str(root / "run"), "--figures-dir", str(root / "figures"),
                          "-p", "device", "cpu"], cwd=root, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return {"root": root, "out": root / "run", "figures": root / "figures", "watched": watched, "before": before}


@pytest.mark.slow
def test_every_notebook_runs_and_writes_results_and_figures(executed):
    out = executed["out"]
    combined = json.loads((out / "results.json").read_text())
    assert list(combined) == EXPECTED
    for stem in EXPECTED:
        nb = nbformat.read(out / f"{stem}.ipynb", as_version=4)
        assert not any(o.output_type == "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
        assert combined[stem] == json.loads((out / stem / "results.json").read_text())
        assert list(executed["figures"].glob(f"{stem[:2]}_*.png")), f"{stem} saved no figure"
    r = combined["01_fixed_points"]
    assert r["reuse"]["warm_total"] < r["reuse"]["cold_total"]
    assert r["iterations_to_tol"]["anderson_c0.99"] < r["iterations_to_tol"]["picard_c0.99"]
    assert r["damping_iterations"]["expanding_a1.0"] == "diverged" and isinstance(r["damping_iterations"]["expanding_a0.5"], int)
    assert (out / "02_training" / "fpdm.safetensors").is_file() and (out / "02_training" / "dit.safetensors").is_file()
    mem = combined["02_training"]["memory"]["fpdm"]
    assert mem["full backprop K=8"] > mem["S-JFB (max n_g) K=8"] > mem["JFB (n_g = 1) K=8"]
    assert combined["05_fpdm_vs_dit"]["params"]["FPDM-XL/2"]["reduction_pct"] == pytest.approx(87.2, abs=0.1)


@pytest.mark.slow
def test_nbval_passes_on_the_executed_notebooks_and_results_reproduce(executed):
    """nbval re-runs each executed notebook (a second run with the same injected parameters):
    NBVAL_CHECK_OUTPUT cells must print what papermill's run printed, and results.json must not change."""
    out = executed["out"]
    first = {stem: (out / stem / "results.json").read_bytes() for stem in EXPECTED}
    for stem in EXPECTED:
        shutil.move(out / stem / "results.json", out / stem / "results.first.json")
    run = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q",
                          *[str(out / f"{stem}.ipynb") for stem in EXPECTED]],
                         cwd=executed["root"], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    for stem in EXPECTED:
        assert (out / stem / "results.json").read_bytes() == first[stem], f"{stem}: results.json differs between two runs"
    assert _snapshot(*executed["watched"]) == executed["before"], "running the notebooks wrote into the repository"
