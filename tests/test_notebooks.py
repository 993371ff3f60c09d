"""The notebooks: thin and well-formed as stored; executed with papermill (scripts/run_notebooks.py) into a
temporary folder and checked against the committed reference numbers (notebooks/reference.json, with
tolerances); the committed notebooks re-run by nbval, whose checked cells must print what is stored in them;
figures reproducible and offline; and a deliberately broken solver caught. Nothing is written into the repo.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
import yaml

from conftest import HAVE_FMNIST
from fpdm_core import toy_problems, tutorial
from fpdm_core.diffusion import DiffusionConfig
from fpdm_core.options import options_of
from fpdm_core.sampling import SamplerConfig
from fpdm_core.solvers import NonFiniteError

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
RUNNER = REPO / "scripts" / "run_notebooks.py"
REFERENCE = REPO / "notebooks" / "reference.json"
EXPECTED = ["01_fixed_points", "02_training", "03_convergence", "04_compute_reallocation", "05_fpdm_vs_dit"]
CHECK = "# NBVAL_CHECK_OUTPUT"
WIDGET_TEXT = tutorial._Controls.TEXT
CPU_ONLY = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # CUDA kernels are not bit-reproducible; the references are CPU numbers


def _ids(paths):
    return [p.stem for p in paths]


def test_the_five_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


# ----------------------------------------------------------------------------- as stored
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_thin_and_stores_only_its_checked_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    for c in code:  # nbval's references: text of the checked cells, nothing else (no images, no stale state)
        checked = c.source.lstrip().startswith(CHECK)
        assert all(o.output_type == "stream" for o in c.outputs), "stored outputs are text only"
        assert bool(c.outputs) == checked == (c.execution_count is not None), \
            f"cell {c.get('id')}: store outputs exactly for {CHECK} cells " \
            "(python scripts/run_notebooks.py -p device cpu --store-checked-outputs)"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged `parameters`"
    assert re.search(r'^figures_dir = "outputs/', params[0].source, re.M)
    assert re.search(r'^out_dir = "outputs/', params[0].source, re.M), "default outputs go to the gitignored notebooks/outputs/"
    assert re.search(r'^device = "auto"', params[0].source, re.M), "the device parameter picks CUDA when present"
    source = "\n".join(c.source for c in code)
    assert re.search(r"^(from|import) fpdm_core", source, re.M)
    assert "sys.path" not in source and "os.chdir" not in source
    assert not re.search(r"""["'](/|[A-Za-z]:\\)\w""", source), "no absolute paths"
    assert not re.search(r"^\s*(class \w+\(nn\.Module\)|def (solve|fixed_point_map|load_or_train|tanh_map|linear_map)\()",
                         source, re.M), "no pasted package code"
    assert 'include_plotlyjs="cdn"' not in source, "plotly HTML must work offline (plots.write_html)"
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "$$" in markdown, "the maths, in LaTeX"
    assert "Real run on a GPU" in markdown and "--profile gpu" in markdown
    assert source.count("**What this shows.**") >= 2, "interpretation cells after the results"


def test_notebook_outputs_folder_is_gitignored():
    out = subprocess.run(["git", "check-ignore", "-q", "notebooks/outputs/run/results.json"], cwd=REPO)
    assert out.returncode == 0, "add notebooks/outputs/ to .gitignore"


def _dry_run(*args, cwd=REPO):
    out = subprocess.run([sys.executable, str(RUNNER), "--dry-run", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_runner_merges_profile_file_and_command_line(tmp_path):
    extra = tmp_path / "params.yaml"
    extra.write_text(yaml.safe_dump({"seed": 5, "02_training": {"steps": 3}, "03_convergence": {"checkpoint": "ck.safetensors"}}))
    plans = _dry_run("--profile", "gpu", "--params-file", str(extra), "-p", "02_training.steps", "4", "-p", "subset", "100",
                     "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert list(plans) == EXPECTED
    assert plans["02_training"]["steps"] == 4 and plans["02_training"]["subset"] == 100  # command line wins
    assert plans["02_training"]["fpdm_model"] == "FPDM-FM-M"  # from the profile
    assert all(p["seed"] == 5 for p in plans.values())
    assert plans["03_convergence"]["checkpoint"] == str(tmp_path / "ck.safetensors")  # relative to where it ran
    assert plans["01_fixed_points"]["out_dir"] == str(tmp_path / "o" / "01_fixed_points")
    bad = subprocess.run([sys.executable, str(RUNNER), "--dry-run", "-p", "stpes", "4"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode != 0 and "stpes" in bad.stderr


def test_runner_writes_tracked_figures_only_when_asked():
    default = _dry_run()["01_fixed_points"]
    assert default["figures_dir"] == str(REPO / "notebooks" / "outputs" / "run" / "figures")  # gitignored
    assert _dry_run("--update-figures")["01_fixed_points"]["figures_dir"] == str(REPO / "figures" / "notebooks")


def test_gpu_profile_only_names_declared_parameters():
    profiles = yaml.safe_load((REPO / "notebooks" / "profiles.yaml").read_text())
    assert set(profiles) >= {"default", "gpu"}
    plans = _dry_run("--profile", "gpu")
    assert all(p["device"] == "auto" for p in plans.values())
    for stem, params in profiles["gpu"].items():
        if stem != "all":
            assert all(plans[stem][k] == v for k, v in params.items()), stem


def test_reference_file_states_a_tolerance_rule_for_every_number():
    reference = json.loads(REFERENCE.read_text())
    assert set(reference) - {"_about"} == set(EXPECTED)
    for stem, entries in reference.items():
        if stem.startswith("_"):
            continue
        assert len(entries) >= 5, f"{stem}: too few reference numbers to catch a regression"
        for key, entry in entries.items():
            assert set(entry) <= {"value", "abs", "rel"} and "value" in entry, (stem, key)


# ----------------------------------------------------------------------------- the shared helpers
def test_check_reference_applies_the_stated_tolerances():
    ref = {"a.n": {"value": 30, "abs": 2}, "a.x": {"value": 1.0, "rel": 0.1}, "b": {"value": "diverged"}, "c": {"value": [1, 2]}}
    assert tutorial.check_reference({"a": {"n": 32, "x": 1.09}, "b": "diverged", "c": [1, 2]}, ref) == []
    failures = tutorial.check_reference({"a": {"n": 33, "x": 0.8}, "b": "converged"}, ref)
    assert [f.split(":")[0] for f in failures] == ["a.n", "a.x", "b", "c"]
    assert "missing" in failures[-1]


@pytest.mark.parametrize("spectrum", ["mixed", "positive", "negative"])
def test_a_diverging_toy_map_reads_diverged_never_converged(spectrum):
    fig, sentence = toy_problems.toy_figure(contraction=1.5, spectrum=spectrum, anderson=False, dim=16)
    assert sentence.startswith("picard: diverged"), sentence
    lo, hi = toy_problems.SPECTRA[spectrum]
    f, z_star = toy_problems.linear_map(16, 0.5 * lo, 0.5 * hi)
    out = toy_problems.toy_outcome(f, torch.zeros(1, 16, dtype=torch.float64), max_iter=200, tol=1e-10)
    assert out.status == "converged"
    assert toy_problems.toy_outcome(f, torch.zeros(1, 16, dtype=torch.float64), max_iter=3, tol=1e-10).status == "not converged"


def test_live_figure_shows_a_picture_a_sentence_and_no_widget_repr():
    widgets = pytest.importorskip("ipywidgets")
    slider = widgets.FloatSlider(value=0.5)
    calls = []

    def draw(x):
        calls.append(x)
        if x > 1:
            raise NonFiniteError("the iterates overflowed")
        return toy_problems.toy_figure(contraction=x, dim=8)

    shown = tutorial.live_figure(draw, {"x": slider})
    assert shown["values"] == {"x": 0.5} and "converged" in shown["sentence"]
    bundle = tutorial._Controls(widgets.HBox([slider]))._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert data["text/plain"] == WIDGET_TEXT and "application/vnd.jupyter.widget-view+json" in data
    assert tutorial.safe_draw(draw, {"x": 2.0}) == (None, "**Could not draw these settings:** the iterates overflowed")
    slider.value = 2.0  # a live change redraws through the display handles, and an error becomes a sentence
    assert calls[-1] == 2.0 and shown == {"values": {"x": 2.0}, "sentence": "**Could not draw these settings:** the iterates overflowed"}


@pytest.mark.parametrize("tol", [False, True])
def test_explorer_controls_offer_the_declared_choices_inside_the_declared_limits(tol):
    pytest.importorskip("ipywidgets")
    opts = options_of(SamplerConfig)
    c = tutorial.explorer_controls(mode=tutorial.EXPLORER_MODES[2], budget=60, max_budget=640, steps=10,
                                   iterations=4, tol=tol)
    assert list(c) == ["mode", "budget", "steps", "iterations", "allocation", "reuse", "solver"] + ["tol"] * tol
    for name in ("allocation", "reuse", "solver"):
        assert c[name].value == opts[name].default, name
    assert tuple(c["solver"].options) == opts["solver"].choices
    assert tuple(c["allocation"].options) == tuple(a for a in opts["allocation"].choices if tol or a != "adaptive")
    for name in ("budget", "steps", "iterations"):
        assert opts[name].problem(c[name].min) is None and opts[name].problem(c[name].max) is None, name
    values = {name: w.value for name, w in c.items()}
    assert tutorial.explorer_config(**values) == SamplerConfig(steps=10, iterations=4)  # the kit's defaults otherwise


def test_write_html_is_offline_and_byte_stable(tmp_path):
    import plotly.graph_objects as go

    from fpdm_core.plots import write_html

    fig = go.Figure(go.Bar(x=[1, 2], y=[3, 4]))
    first = write_html(fig, tmp_path / "a.html", div_id="fig-a").read_bytes()
    assert write_html(fig, tmp_path / "a.html", div_id="fig-a").read_bytes() == first
    assert b'src="plotly.min.js"' in first and b"cdn.plot.ly" not in first and b'id="fig-a"' in first
    assert (tmp_path / "plotly.min.js").stat().st_size > 1e6


@pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed")
def test_load_or_train_falls_back_to_a_tiny_model_and_says_so(tmp_path, capsys):
    process = DiffusionConfig(num_timesteps=500, beta_schedule="cosine", prediction="v")
    model, diffusion, source = tutorial.load_or_train("dit", tmp_path / "missing.safetensors",
                                                      {"max_steps": 2, "subset": 64, "diffusion": process})
    assert source == "DiT-tiny trained 2 steps (fallback)" and not model.training
    assert diffusion.config == process  # sampled with the process it was trained with
    assert "does not exist" in capsys.readouterr().out
    with pytest.raises(ValueError, match="kind"):
        tutorial.load_or_train("unet")


# ----------------------------------------------------------------------------- executed
def _snapshot(*folders: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for f in folders if f.exists() for p in f.rglob("*")}


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Every notebook executed once with its stored defaults by scripts/run_notebooks.py (CPU), reference-checked."""
    if not HAVE_FMNIST:
        pytest.skip("Fashion-MNIST not installed: `apt-get install dataset-fashion-mnist`")
    watched = (REPO / "notebooks", REPO / "figures" / "notebooks")
    before = _snapshot(*watched)
    root = tmp_path_factory.mktemp("notebooks")
    run = subprocess.run([sys.executable, str(RUNNER), "--out", str(root / "run"), "-p", "device", "cpu", "--check-reference"],
                         cwd=root, capture_output=True, text=True, timeout=900, env=CPU_ONLY)
    return {"run": run, "root": root, "out": root / "run", "figures": root / "run" / "figures", "watched": watched,
            "before": before}


@pytest.mark.slow
def test_every_notebook_runs_and_matches_the_reference_numbers(executed):
    run = executed["run"]
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
    assert "reference check: ok" in run.stdout
    out = executed["out"]
    combined = json.loads((out / "results.json").read_text())
    assert list(combined) == EXPECTED
    for stem in EXPECTED:
        nb = nbformat.read(out / f"{stem}.ipynb", as_version=4)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        assert not any(o.output_type == "error" for o in outputs)
        assert not any("interactive(children=" in str(o.get("data", {}).get("text/plain", "")) for o in outputs)
        assert list(executed["figures"].glob(f"{stem[:2]}_*.png")), f"{stem} saved no figure"
    assert (out / "02_training" / "fpdm.safetensors").is_file() and (out / "02_training" / "dit.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("stem", ["01_fixed_points", "04_compute_reallocation"])
def test_widgets_degrade_to_a_picture_for_the_defaults(executed, stem):
    nb = nbformat.read(executed["out"] / f"{stem}.ipynb", as_version=4)
    for cell in (c for c in nb.cells if c.cell_type == "code" and "live_figure(" in c.source):
        kinds = [set(o.get("data", {})) for o in cell.outputs if o.output_type == "display_data"]
        assert kinds[0] >= {"application/vnd.jupyter.widget-view+json", "text/plain"}
        assert any("image/png" in k for k in kinds[1:]), "a static figure for the default values"
        assert cell.outputs[0]["data"]["text/plain"] == WIDGET_TEXT


@pytest.mark.slow
def test_plotly_figures_work_offline_with_fixed_ids(executed):
    pages = sorted(executed["figures"].glob("*.html"))
    assert [p.name for p in pages] == ["03_residual_heatmaps.html", "04_iterations_per_timestep.html"]
    for page in pages:
        text = page.read_text()
        assert 'src="plotly.min.js"' in text and "cdn.plot.ly" not in text
        assert f'id="fpdm-{page.stem[:2]}-' in text
    assert (executed["figures"] / "plotly.min.js").is_file()
    assert (executed["figures"] / "03_denoising.gif").stat().st_size > 1000


@pytest.mark.slow
def test_nbval_on_the_committed_notebooks_and_figures_reproduce(executed, tmp_path):
    """nbval runs the committed notebooks (stored defaults) in a copy; every `# NBVAL_CHECK_OUTPUT` cell must print
    the text committed with it. Its results and figures must equal the papermill run's, byte for byte."""
    copy = tmp_path / "nb"
    copy.mkdir()
    for path in NOTEBOOKS:
        shutil.copy(path, copy / path.name)
    run = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q",
                          *[str(copy / p.name) for p in NOTEBOOKS]], cwd=copy, capture_output=True, text=True,
                         timeout=900, env=CPU_ONLY)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    for stem in EXPECTED:
        again = json.loads((copy / "outputs" / stem / "results.json").read_text())
        assert again == json.loads((executed["out"] / stem / "results.json").read_text()), f"{stem}: results differ"
    first = {p.name: p.read_bytes() for p in executed["figures"].iterdir()}
    second = {p.name: p.read_bytes() for p in (copy / "outputs" / "figures").iterdir()}
    assert first.keys() == second.keys()
    changed = [name for name in first if first[name] != second[name]]
    assert not changed, f"figures change between two runs with the same seeds: {changed}"
    assert _snapshot(*executed["watched"]) == executed["before"], "running the notebooks wrote into the repository"


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed")
def test_a_broken_solver_fails_the_reference_check(tmp_path):
    """Anderson with a history of 1 has nothing to mix: it is plain Picard. The reference check must notice."""
    patch = tmp_path / "patch"
    patch.mkdir()
    (patch / "sitecustomize.py").write_text(
        "import functools\n"
        "import fpdm_core.solvers as s\n"
        "s.solve = functools.partial(s.solve, anderson_m=1)\n")
    env = {**CPU_ONLY, "PYTHONPATH": os.pathsep.join([str(patch), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, str(RUNNER), "--only", "01", "--out", str(tmp_path / "run"), "-p", "device", "cpu",
                          "--check-reference"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-2000:]
    assert "REFERENCE MISMATCH 01_fixed_points: iterations_to_tol.anderson_c0.9" in run.stdout
