"""FPDM explorer: sample a Fixed Point Diffusion Model live, see every fixed-point residual, compare with DiT.

    python app/main.py                       # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / _PORT honoured)
    python app/main.py --checkpoint-dir DIR  # or FPDM_APP_CHECKPOINT_DIR=DIR

The page is built by `build_demo()`; the handlers below are thin wrappers over
`fpdm_core.explore` and can be called directly (tests do). Invalid requests are answered
in the status box; per-request state lives in the handler's generator.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import time
import uuid
from pathlib import Path

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no phoning home

import gradio as gr  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from fpdm_core import explore as ex  # noqa: E402
from fpdm_core.budget import ALLOCATIONS  # noqa: E402
from fpdm_core.data import FASHION_MNIST_CLASSES  # noqa: E402

log = logging.getLogger("fpdm_app")

CLASS_CHOICES = [ex.ALL_CLASSES, *FASHION_MNIST_CLASSES, ex.UNCONDITIONAL]
SOLVER_CHOICES = [("Picard", "picard"), ("Anderson", "anderson")]
CSS = """
.pixel-grid img { image-rendering: pixelated; }
#run-status { min-height: 2.5em; }
"""
INTRO = """# Fixed Point Diffusion Models: explorer
FPDM (Bai & Melas-Kyriazi, CVPR 2024) replaces the middle of a diffusion transformer with one
weight-tied block solved as a fixed point `z* = f(z*)`. Choose how many sampling steps and
fixed-point iterations to spend, watch the images form, and see the residual of every iteration
at every timestep. The DiT baseline runs with the same budget in block evaluations."""


def theme() -> gr.themes.Base:
    return gr.themes.Default(primary_hue="indigo")  # local fonts only: nothing fetched from the internet


# ----------------------------------------------------------------------------- handlers
def page_image(grid, settings: "ex.Settings", model: str):
    """A grid as a PIL image whose PNG text chunks carry the settings and a fresh id.

    Gradio stores an output image under the hash of its bytes and rewrites that file in place,
    so two users producing the same image at once could each read a half-written file. A unique
    id per image gives every output its own file (and downloads keep their settings).
    """
    if grid is None:
        return None
    img = Image.fromarray(grid)
    img.info.update({"fpdm-model": model, "fpdm-settings": json.dumps(vars(settings)), "fpdm-image-id": uuid.uuid4().hex})
    return img


def _status(kind: str, text: str) -> str:
    icon = {"error": "**Cannot run:**", "busy": "**Sampling:**", "done": "**Done:**"}[kind]
    return f"{icon} {text}"


def generate(folder: str, device: str, fpdm_choice, fpdm_upload, dit_choice, dit_upload, weights, budget_mode, steps,
             iterations, budget, allocation, reuse, solver, tol, damping, class_choice, cfg_scale, seed, num_images, method,
             progress=gr.Progress()):
    """Stream (FPDM grid, DiT grid, residual heatmap, iterations bar, summary, status, caption) while sampling."""
    start = time.perf_counter()
    try:
        settings = ex.settings_from_ui(
            budget_mode=budget_mode, steps=steps, iterations=iterations, budget=budget, allocation=allocation,
            reuse=reuse, solver=solver, tol=tol, damping=damping, class_choice=class_choice, cfg_scale=cfg_scale,
            seed=seed, num_images=num_images, method=method)
        fpdm = ex.load_slot("fpdm", folder, fpdm_choice, fpdm_upload, device, weights)
        dit, dit_note = None, None
        try:
            dit = ex.load_slot("dit", folder, dit_choice, dit_upload, device, weights).model
        except ex.ExploreError as e:
            dit_note = f"No DiT baseline: {e}"
        caption = ex.label_caption(settings, fpdm.model.config)
        for u in ex.explore(fpdm.model, dit, settings, device=device, dit_note=dit_note):
            progress(u.progress, desc=u.message)
            images = page_image(u.fpdm_grid, settings, "fpdm"), page_image(u.dit_grid, settings, "dit")
            if u.stage != "done":
                yield *images, None, None, "", _status("busy", u.message), caption
            else:
                took = time.perf_counter() - start
                yield (*images, ex.residual_figure(u.fpdm_record), ex.iterations_figure(u.fpdm_record),
                       u.summary, _status("done", f"{fpdm.path.name}: {len(u.fpdm_record.steps)} FPDM steps"
                                                  f"{f', {len(u.dit_record.steps)} DiT steps' if u.dit_record else ''}"
                                                  f" in {took:.1f} s"), caption)
    except ex.ExploreError as e:
        yield None, None, None, None, "", _status("error", str(e)), ""
    except Exception as e:  # keep serving; say what happened
        log.exception("generate failed")
        yield None, None, None, None, "", _status("error", f"unexpected {type(e).__name__}: {e}"), ""


def refresh(folder: str, device: str, fpdm_choice=None, dit_choice=None, weights="ema"):
    """Re-scan the checkpoint folder: (FPDM dropdown, DiT dropdown, checkpoint status markdown)."""
    names = ex.list_checkpoints(folder)

    def pick(kind, current):
        if current in names:
            return current
        default = ex.DEFAULT_NAMES[kind]
        return default if default in names else None

    fpdm_value, dit_value = pick("fpdm", fpdm_choice), pick("dit", dit_choice)
    try:
        status = ex.checkpoint_status(folder, fpdm_value, dit_value, device, weights)
    except ex.ExploreError as e:
        status = f"**Cannot load:** {e}"
    return gr.Dropdown(choices=names, value=fpdm_value), gr.Dropdown(choices=names, value=dit_value), status


# ----------------------------------------------------------------------------- page
def build_demo(checkpoint_dir: str | Path | None = None, device: str = "cpu") -> gr.Blocks:
    """The whole page; `checkpoint_dir` defaults to $FPDM_APP_CHECKPOINT_DIR, else the kit's checkpoints/."""
    folder = str(ex.checkpoint_dir(checkpoint_dir))
    names = ex.list_checkpoints(folder)
    d = ex.Settings()
    with gr.Blocks(title="FPDM explorer", delete_cache=(1800, 3600)) as demo:  # drop cached outputs after 1 h
        gr.Markdown(INTRO)
        ckpt_status = gr.Markdown(ex.checkpoint_status(folder, device=device), elem_id="checkpoint-status")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                run = gr.Button("Generate", variant="primary", elem_id="generate")
                mode = gr.Radio(list(ex.BUDGET_MODES), value=d.budget_mode, label="Budget mode",
                                info="fix steps x iterations, or fix a budget in block evaluations per image")
                steps = gr.Slider(1, 100, value=d.steps, step=1, precision=0, label="Sampling steps",
                                  info="unused in 'budget (timestep smoothing)'", elem_id="steps")
                iterations = gr.Slider(1, 30, value=d.iterations, step=1, precision=0,
                                       label="Fixed-point iterations per step", info="used in 'steps x iterations'",
                                       elem_id="iterations")
                budget = gr.Number(d.budget, precision=0, minimum=1, maximum=ex.MAX_BUDGET,
                                   label="Budget (block evaluations per image)", info="used in the budget modes",
                                   elem_id="budget")
                allocation = gr.Radio(list(ALLOCATIONS), value=d.allocation, label="Allocation across timesteps",
                                      info="increasing = more iterations at high noise; adaptive needs a tolerance")
                reuse = gr.Checkbox(d.reuse, label="Solution reuse (start each step at the previous fixed point)",
                                    elem_id="reuse")
                with gr.Row():
                    solver = gr.Radio(SOLVER_CHOICES, value=d.solver, label="Solver")
                    tol = gr.Number(d.tol, minimum=0, maximum=1, label="Tolerance (0 = fixed count)", elem_id="tol")
                class_choice = gr.Dropdown(CLASS_CHOICES, value=d.class_choice, label="Class")
                cfg_scale = gr.Slider(0, 10, value=d.cfg_scale, step=0.5, label="Guidance scale (1 = none)")
                with gr.Row():
                    seed = gr.Number(d.seed, precision=0, minimum=0, label="Seed", elem_id="seed")
                    num_images = gr.Slider(1, ex.MAX_IMAGES, value=d.num_images, step=1, precision=0,
                                           label="Images", elem_id="num-images")
                with gr.Accordion("Advanced", open=False):
                    damping = gr.Slider(0.1, 1.0, value=d.damping, step=0.05, label="Picard damping")
                    method = gr.Radio(["ddim", "ddpm"], value=d.method, label="Sampler")
                with gr.Accordion("Checkpoints", open=False):
                    fpdm_choice = gr.Dropdown(names, value=ex.DEFAULT_NAMES["fpdm"] if ex.DEFAULT_NAMES["fpdm"] in names
                                              else None, label="FPDM checkpoint (from the checkpoints folder)")
                    fpdm_upload = gr.File(file_types=[".safetensors"], type="filepath",
                                          label="or upload an FPDM checkpoint (.safetensors)", height=170)
                    dit_choice = gr.Dropdown(names, value=ex.DEFAULT_NAMES["dit"] if ex.DEFAULT_NAMES["dit"] in names
                                             else None, label="DiT baseline checkpoint")
                    dit_upload = gr.File(file_types=[".safetensors"], type="filepath",
                                         label="or upload a DiT checkpoint (.safetensors)", height=170)
                    weights = gr.Radio([("EMA weights", "ema"), ("raw training weights", "model")], value="ema",
                                       label="Weights", info="EMA needs many training steps to settle: a young training checkpoint "
                                                             "samples better with its raw weights (release files hold "
                                                             "EMA weights only)")
                    rescan = gr.Button("Re-scan checkpoint folder", size="sm")
            with gr.Column(scale=2):
                status = gr.Markdown("Press **Generate**.", elem_id="run-status")
                with gr.Row():
                    fpdm_img = gr.Image(label="FPDM (x0 prediction while sampling)", format="png", interactive=False,
                                        elem_id="fpdm-images", elem_classes="pixel-grid", height=360)
                    dit_img = gr.Image(label="DiT at the same budget", format="png", interactive=False,
                                       elem_id="dit-images", elem_classes="pixel-grid", height=360)
                caption = gr.Markdown(elem_id="caption")
                summary = gr.Markdown(elem_id="summary")
                with gr.Row():
                    heatmap = gr.Plot(label="Relative residual per timestep x iteration", elem_id="residual-plot")
                    bars = gr.Plot(label="Iterations per timestep", elem_id="iterations-plot")

        inputs = [fpdm_choice, fpdm_upload, dit_choice, dit_upload, weights, mode, steps, iterations, budget, allocation,
                  reuse,
                  solver, tol, damping, class_choice, cfg_scale, seed, num_images, method]
        outputs = [fpdm_img, dit_img, heatmap, bars, summary, status, caption]
        run.click(functools.partial(generate, folder, device), inputs, outputs, api_name="generate",
                  show_progress="full", show_progress_on=[status])
        do_refresh = functools.partial(refresh, folder, device)
        refresh_io = [fpdm_choice, dit_choice, weights], [fpdm_choice, dit_choice, ckpt_status]
        rescan.click(do_refresh, *refresh_io, api_name="refresh")
        weights.change(do_refresh, *refresh_io, api_name=False)
        demo.load(do_refresh, *refresh_io, api_name=False, show_progress="hidden")
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint-dir", default=None,
                   help=f"folder of *.safetensors checkpoints (default ${ex.CHECKPOINT_DIR_ENV}, "
                        "else the kit's checkpoints/)")
    p.add_argument("--host", default=None, help="server address (default $GRADIO_SERVER_NAME, else 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="server port (default $GRADIO_SERVER_PORT, else 7860)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: CPU cores // concurrency, so parallel requests do not oversubscribe)")
    p.add_argument("--concurrency", type=int, default=2, help="requests sampled at the same time")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting at most")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // max(1, args.concurrency)))
    demo = build_demo(args.checkpoint_dir, args.device)  # also loads (and caches) the default checkpoints
    demo.queue(default_concurrency_limit=args.concurrency, max_size=args.max_queue)
    demo.launch(server_name=args.host, server_port=args.port, theme=theme(), css=CSS, ssr_mode=False, share=False)


if __name__ == "__main__":
    main()
