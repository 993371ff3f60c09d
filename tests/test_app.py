"""The Gradio app: handlers called directly (no server), then the real server driven by eight gradio clients at once."""
from __future__ import annotations

import importlib.util
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from fpdm_core import explore as ex
from fpdm_core.checkpoints import load_checkpoint, save_checkpoint
from fpdm_core.models import build_model

ROOT = Path(__file__).resolve().parent.parent


def load_app_module(name: str):
    """app/ is a folder of scripts, not a package: load app/<name>.py by path."""
    key = f"fpdm_app_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "app" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod
        spec.loader.exec_module(mod)
    return sys.modules[key]


main = load_app_module("main")
launcher = load_app_module("launcher")

# Small and fast: tiny models, 4 images, 4 steps x 2 iterations.
BASE = dict(fpdm_choice=None, fpdm_upload=None, dit_choice=None, dit_upload=None, weights="ema",
            budget_mode=ex.MODE_STEPS, steps=4, iterations=2, budget=20, allocation="uniform", reuse=True,
            solver="picard", tol=0, damping=1.0,
            class_choice=ex.ALL_CLASSES, cfg_scale=1.0, seed=0, num_images=4, method="ddim")


def write_nan_checkpoint(src: Path, dst: Path) -> None:
    """The FPDM checkpoint with NaN in the fixed-point projection: the solver's residual is not finite."""
    ckpt = load_checkpoint(src)
    model = build_model(ckpt.model_config)
    model.load_state_dict({k: v.float() for k, v in ckpt.group("ema").items()})
    with torch.no_grad():
        model.block_fixed_point_projection_fc1.weight.fill_(float("nan"))
    save_checkpoint(dst, model=model, meta={"step": 0})


@pytest.fixture(scope="module")
def ckpt_dir(tiny_checkpoints, tmp_path_factory) -> Path:
    """The tiny checkpoints under the shipped names, plus a corrupt, a diverging and a classifier file."""
    d = tmp_path_factory.mktemp("app_ckpts")
    shutil.copy(tiny_checkpoints["fpdm"], d / ex.DEFAULT_NAMES["fpdm"])
    shutil.copy(tiny_checkpoints["dit"], d / ex.DEFAULT_NAMES["dit"])
    (d / "broken.safetensors").write_bytes(b"\x00" * 64)
    (d / ex.CLASSIFIER_FILE).write_bytes(b"not offered")
    write_nan_checkpoint(d / ex.DEFAULT_NAMES["fpdm"], d / "nan-fpdm.safetensors")
    return d


def as_arrays(update):
    """Images of an update (PIL, as the page gets them) as uint8 arrays."""
    return tuple(np.asarray(x) if hasattr(x, "info") else x for x in update)


def run(folder, **overrides):
    """All updates of one direct handler call."""
    return [as_arrays(u) for u in main.generate(str(folder), "cpu", **{**BASE, **overrides})]


def final(folder, **overrides):
    return run(folder, **overrides)[-1]


# ----------------------------------------------------------------------------- handlers, no server
def test_valid_settings_give_images_figures_and_budget(ckpt_dir):
    updates = run(ckpt_dir)
    assert len(updates) >= 4 + 1, "the handler streams while sampling"
    assert all(u[0] is not None for u in updates), "FPDM grid shown from the first update on"
    fpdm_img, dit_img, heat, bars, summary, status, caption = updates[-1]
    assert status.startswith("**Done:**"), status
    assert fpdm_img.dtype == np.uint8 and fpdm_img.shape == dit_img.shape
    assert fpdm_img.shape == (32 * ex.GRID_SCALE, 122 * ex.GRID_SCALE)  # 1 row of 4 images of 28 px, 2 px padding
    z = np.asarray(heat.data[0].z, dtype=float)
    assert z.shape == (4, 2) and np.isfinite(z).all()
    assert list(bars.data[0].y) == [2, 2, 2, 2]
    # FPDM-tiny: 1 pre + 2 iterations + 1 post = 4 block evaluations per step; DiT-tiny depth 4 -> 4 steps.
    assert "| **FPDM** | 4 | 2-2 (uniform) | 16 of 16 |" in summary
    assert "| **DiT** | 4 | - (depth 4) | 16 of 16 |" in summary
    assert "GFLOPs" in summary and "DiT-step equivalent" in summary
    assert caption == "Classes, row by row: T-shirt/top, Trouser, Pullover, Dress"


def test_budget_modes_and_allocations(ckpt_dir):
    u = final(ckpt_dir, budget_mode=ex.MODE_BUDGET_STEPS, steps=4, budget=30, allocation="increasing")
    assert u[5].startswith("**Done:**"), u[5]
    its = list(u[3].data[0].y)
    assert sum(its) == 30 - 4 * 2 and its[0] > its[-1]
    u = final(ckpt_dir, budget_mode=ex.MODE_BUDGET, budget=24, steps=None, allocation="adaptive", tol=0.05,
              solver="anderson")
    assert u[5].startswith("**Done:**"), u[5]
    assert "timestep smoothing" in u[4] and "converged" in u[4]


@pytest.mark.parametrize("overrides, expect", [
    (dict(budget_mode=ex.MODE_BUDGET_STEPS, steps=10, budget=5), "below"),
    (dict(budget_mode=ex.MODE_BUDGET, budget=3), "below one step"),
    (dict(num_images=ex.MAX_IMAGES + 1), "number of images"),
    (dict(num_images=0), "number of images"),
    (dict(class_choice="Unicorn"), "unknown class"),
    (dict(allocation="adaptive", tol=0), "tolerance"),
    (dict(allocation="sideways"), "unknown allocation"),
    (dict(solver="newton"), "unknown solver"),
    (dict(steps=2.5), "whole number"),
    (dict(seed=None), "seed"),
    (dict(tol=float("nan")), "finite"),
    (dict(cfg_scale=-1), "guidance"),
    (dict(damping=0), "damping"),
    (dict(fpdm_choice="broken.safetensors"), "could not load"),
    (dict(fpdm_choice=ex.CLASSIFIER_FILE), "not one of the checkpoints"),
    (dict(fpdm_choice="../../etc/passwd"), "not one of the checkpoints"),
    (dict(fpdm_choice=str(ROOT / "pyproject.toml")), "not one of the checkpoints"),
    (dict(fpdm_choice=ex.DEFAULT_NAMES["dit"]), "the FPDM slot needs a FPDM checkpoint"),
    (dict(fpdm_upload=str(ROOT / "pyproject.toml")), "not a .safetensors"),
    (dict(fpdm_choice="nan-fpdm.safetensors"), "diverged"),
    (dict(weights="/etc/passwd"), "unknown weights"),
])
def test_invalid_input_gives_a_message(ckpt_dir, overrides, expect):
    updates = run(ckpt_dir, **overrides)
    fpdm_img, dit_img, heat, bars, summary, status, caption = updates[-1]
    assert status.startswith("**Cannot run:**"), status
    assert expect in status, status
    assert fpdm_img is None and heat is None


def test_uploaded_checkpoint_and_raw_weights(ckpt_dir, tmp_path):
    upload = tmp_path / "uploaded.safetensors"  # what gr.File hands the handler: a path in gradio's upload cache
    shutil.copy(ckpt_dir / ex.DEFAULT_NAMES["fpdm"], upload)
    from_upload, listed = final(ckpt_dir, fpdm_upload=str(upload)), final(ckpt_dir)
    assert from_upload[5].startswith("**Done:** uploaded.safetensors") and np.array_equal(from_upload[0], listed[0])
    raw = final(ckpt_dir, weights="model")
    assert raw[5].startswith("**Done:**") and not np.array_equal(raw[0], listed[0])


def test_missing_checkpoint_says_how_to_train(tmp_path):
    status = final(tmp_path / "empty")[5]
    assert "No FPDM checkpoint `fpdm-fm-m.safetensors`" in status and "python -m fpdm_core.train" in status
    md = ex.checkpoint_status(tmp_path / "empty")
    assert "fpdm-fm-m.safetensors" in md and "dit-fm-m.safetensors" in md and "Train one" in md


def test_missing_or_too_small_dit_still_shows_fpdm(ckpt_dir, tmp_path):
    solo = tmp_path / "solo"
    solo.mkdir()
    shutil.copy(ckpt_dir / ex.DEFAULT_NAMES["fpdm"], solo / ex.DEFAULT_NAMES["fpdm"])
    u = final(solo)
    assert u[5].startswith("**Done:**") and u[0] is not None and u[1] is None
    assert "No DiT baseline" in u[4] and "nominal DiT depth 8" in u[4]
    u = final(ckpt_dir, steps=1, iterations=1)  # 3 block evaluations < one DiT-tiny step (depth 4)
    assert u[5].startswith("**Done:**") and u[1] is None
    assert "below one DiT step" in u[4]


def test_reuse_state_not_shared_between_interleaved_calls(ckpt_dir):
    a_kw = dict(seed=1, iterations=3, reuse=True)
    b_kw = dict(seed=2, iterations=2, reuse=True, class_choice="Bag", solver="anderson")
    alone_a, alone_b = final(ckpt_dir, **a_kw), final(ckpt_dir, **b_kw)
    ga = main.generate(str(ckpt_dir), "cpu", **{**BASE, **a_kw})
    gb = main.generate(str(ckpt_dir), "cpu", **{**BASE, **b_kw})
    last_a = last_b = None
    while True:  # one step of a, one step of b, ...
        na, nb = (as_arrays(u) if u else None for u in (next(ga, None), next(gb, None)))
        if na is None and nb is None:
            break
        last_a, last_b = na or last_a, nb or last_b
    for mixed, alone in ((last_a, alone_a), (last_b, alone_b)):
        assert np.array_equal(mixed[0], alone[0]) and np.array_equal(mixed[1], alone[1])
        assert mixed[4] == alone[4]
        assert np.array_equal(np.asarray(mixed[2].data[0].z, dtype=float), np.asarray(alone[2].data[0].z, dtype=float),
                              equal_nan=True)


def test_settings_and_checkpoint_listing(ckpt_dir, monkeypatch, tmp_path):
    s = ex.settings_from_ui(budget_mode=ex.MODE_STEPS, steps=10.0, iterations=3.0, budget=None, allocation="uniform",
                            reuse=1, solver="Picard", tol=None)
    assert (s.steps, s.iterations, s.solver, s.tol) == (10, 3, "picard", 0.0)
    assert s.sampler_config().iterations == 3
    names = ex.list_checkpoints(ckpt_dir)
    assert ex.CLASSIFIER_FILE not in names and "fpdm-fm-m.safetensors" in names
    with pytest.raises(ex.ExploreError):
        ex.resolve_checkpoint("fpdm", ckpt_dir, "../" + ckpt_dir.name + "/fpdm-fm-m.safetensors")
    monkeypatch.setenv(ex.CHECKPOINT_DIR_ENV, str(tmp_path))
    assert ex.checkpoint_dir() == tmp_path and ex.checkpoint_dir("/x") == Path("/x")
    fpdm_dd, dit_dd, md = main.refresh(str(ckpt_dir), "cpu")
    assert fpdm_dd.value == "fpdm-fm-m.safetensors" and dit_dd.value == "dit-fm-m.safetensors"
    assert "hidden 32" in md


def test_build_demo_has_the_controls(ckpt_dir):
    import gradio as gr

    demo = main.build_demo(ckpt_dir)
    assert isinstance(demo, gr.Blocks)
    api = [d.get("api_name") for d in demo.config["dependencies"]]
    assert "generate" in api and "refresh" in api
    ids = {c.get("props", {}).get("elem_id") for c in demo.config["components"]}
    assert {"steps", "iterations", "reuse", "generate", "fpdm-images", "dit-images", "residual-plot"} <= ids
    sliders = [c["props"] for c in demo.config["components"]
               if c["type"] == "slider" and c["props"].get("elem_id") == "steps"]
    assert sliders and sliders[0]["step"] == 1 and sliders[0]["precision"] == 0


# ----------------------------------------------------------------------------- the real server
def png_array(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im)
    return arr[..., 0] if arr.ndim == 3 else arr


def test_server_eight_simultaneous_clients(ckpt_dir, tmp_path):
    from gradio_client import Client

    requests = [dict(seed=s, iterations=it, reuse=r, steps=2, num_images=2)
                for s, it, r in ((0, 2, True), (1, 3, False), (2, 1, True))]
    expected = [final(ckpt_dir, **kw) for kw in requests]
    n_clients = 8
    results: dict[tuple[int, int], tuple] = {}
    errors: list[BaseException] = []

    # one torch thread, as this process (conftest): the same numbers as the direct calls
    with launcher.running_app(ckpt_dir, extra_args=["--threads", "1"]) as url:
        def client_thread(c):
            try:
                client = Client(url, verbose=False, analytics_enabled=False, download_files=str(tmp_path / f"c{c}"))
                for j in range(len(requests)):
                    k = (c + j) % len(requests)  # clients ask in different orders
                    results[c, k] = client.predict(**{**BASE, **requests[k]}, api_name="/generate")
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=client_thread, args=(c,)) for c in range(n_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(150)
        assert not any(t.is_alive() for t in threads), "clients did not finish in time"
        assert not errors, errors
        # an invalid request is answered in the page, and the server keeps serving
        client = Client(url, verbose=False, analytics_enabled=False, download_files=str(tmp_path / "last"))
        bad = client.predict(**{**BASE, "budget_mode": ex.MODE_BUDGET_STEPS, "steps": 10, "budget": 5}, api_name="/generate")
        assert bad[5].startswith("**Cannot run:**") and bad[0] is None
        again = client.predict(**BASE, api_name="/generate")
        assert again[5].startswith("**Done:**")

    assert len(results) == n_clients * len(requests)
    for (c, k), got in results.items():
        want = expected[k]
        assert got[5].startswith("**Done:**"), got[5]
        for i in (0, 1):  # FPDM and DiT grids, lossless PNG
            img = png_array(got[i])
            assert img.shape == want[i].shape
            assert np.abs(img.astype(int) - want[i].astype(int)).max() <= 1, f"client {c}, request {k}, image {i}"
        assert got[4] == want[4], f"client {c}, request {k}: summary differs"
        assert got[2]["type"] == "plotly" and "heatmap" in got[2]["plot"]
    # same settings, different users: each answer has its own image files (no shared, rewritten cache file)
    paths = [results[c, 0][0] for c in range(n_clients)]
    assert len({Path(p).parent.name for p in paths}) == n_clients
