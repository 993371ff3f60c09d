"""FPDM explorer: where your split of compute lands on the measured quality landscape, live FPDM sampling with
every fixed-point residual, DiT at the same budget, and one-click comparisons.

    python app/main.py                       # http://127.0.0.1:7860 (GRADIO_SERVER_NAME / _PORT honoured)
    python app/main.py --checkpoint-dir DIR  # or FPDM_CHECKPOINT_DIR=DIR

The page is built by `build_demo()`; the handlers below are thin wrappers over the app's back end
(`fpdm_core.app_settings`, `app_checkpoints`, `app_runs`, `app_figures`, `app_landscape`) and can be
called directly (tests do). Every sampler control is built from `SamplerConfig`'s declarations
(`app_settings.controls`), and the handlers receive the controls by name (`inputs_kwargs`), never by
position. The generate and compare endpoints take raw values (no Gradio preprocessing), so every bad
value is answered in the status box with a message naming its field, and logged as one line.
"""
from __future__ import annotations

import argparse
import contextlib
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
from gradio.components.plot import PlotData  # noqa: E402
from PIL import Image  # noqa: E402

from fpdm_core import app_checkpoints as ac  # noqa: E402
from fpdm_core import app_figures as af  # noqa: E402
from fpdm_core import app_landscape as al  # noqa: E402
from fpdm_core import app_runs as ar  # noqa: E402
from fpdm_core import app_settings as aps  # noqa: E402
from fpdm_core.budget import ALLOCATIONS  # noqa: E402

log = logging.getLogger("fpdm_app")

GENERATE_OUTPUTS = ("fpdm_img", "dit_img", "dit_note", "fpdm_strip", "dit_strip", "heatmap", "bars", "summary",
                    "status", "progress", "caption")
COMPARE_OUTPUTS = ("a_img", "b_img", "a_heatmap", "b_heatmap", "compare_summary", "compare_status", "compare_progress")
CSS = """
.pixel-grid img, .pixel-grid button img { image-rendering: pixelated; }
#fpdm-images img, #dit-images img, #compare-a img, #compare-b img { object-fit: contain; }
#run-status, #compare-status { min-height: 2.5em; }
"""
INTRO = """# Fixed Point Diffusion Models: explorer
FPDM (Bai & Melas-Kyriazi, CVPR 2024) replaces the middle of a diffusion transformer with one
weight-tied block solved as a fixed point `z* = f(z*)`. A budget of block evaluations per image can be
spent on more sampling steps or on more fixed-point iterations per step. Move the sliders to see where
your split lands on the measured quality landscape (no sampling needed), then **Generate** to watch the
images form, see the residual of every iteration at every timestep, and compare with DiT at the same budget."""


def theme() -> gr.themes.Base:
    return gr.themes.Default(primary_hue="indigo")  # local fonts only: nothing fetched from the internet


# ----------------------------------------------------------------------------- output helpers
def page_image(grid, settings: aps.Settings, model: str):
    """A grid as a PIL image whose PNG text chunks carry the settings and a fresh id.

    Gradio stores an output image under the hash of its bytes and rewrites that file in place,
    so two users producing the same image at once could each read a half-written file. A unique
    id per image gives every output its own file (and downloads keep their settings).
    """
    if grid is None:
        return None
    img = Image.fromarray(grid)
    img.info.update({"fpdm-model": model, "fpdm-settings": json.dumps(settings.to_dict()), "fpdm-image-id": uuid.uuid4().hex})
    return img


def plot(fig):
    """A plotly figure for gr.Plot without the toolbar (it covers titles)."""
    if fig is None:
        return None
    return PlotData(type="plotly", plot=json.dumps({**json.loads(fig.to_json()), "config": {"displayModeBar": False}}))


def _status(kind: str, text: str) -> str:
    icon = {"error": "**Cannot run:**", "busy": "**Sampling:**", "done": "**Done:**"}[kind]
    return f"{icon} {text}"


def progress_html(u: ar.Update | None = None, text: str | None = None) -> str:
    """A progress bar over the request's FLOPs, updated every timestep, with the measured time left."""
    if u is None:
        return f"<div class='fpdm-progress'>{text or ''}</div>"
    return (f"<div class='fpdm-progress'><progress value='{u.progress:.4f}' max='1' style='width:100%'></progress>"
            f"<div>{ar.progress_text(u)}</div></div>")


def strip(frames):
    return [(frame, caption) for frame, caption in frames] or None


def _reject(e: Exception, what: str) -> str:
    log.warning("rejected %s request: %s", what, e)  # one line, no traceback
    return _status("error", str(e))


# ----------------------------------------------------------------------------- handlers
def generate(folder: str, device: str, fpdm_upload=None, dit_upload=None, fpdm_choice=None, dit_choice=None,
             weights="ema", **controls):
    """Stream `GENERATE_OUTPUTS` while sampling: a progress bar every timestep, grids up to 20 times per model.

    fpdm_upload / dit_upload: the session's uploaded models (`ac.load_upload`), or None. `controls`: the
    values of `aps.controls` by name (a missing one takes the page's default).
    """
    start, work = time.perf_counter(), 0
    try:
        settings = aps.settings_from_ui(**controls)
        fpdm = ac.load_slot("fpdm", folder, fpdm_choice, fpdm_upload, device, weights)
        dit, dit_diffusion, dit_note = None, None, None
        try:
            dit_slot = ac.load_slot("dit", folder, dit_choice, dit_upload, device, weights)
            dit, dit_diffusion = dit_slot.model, dit_slot.diffusion
        except aps.ExploreError as e:
            dit_note = f"No DiT baseline: {e}"
        caption = af.label_caption(settings, fpdm.model.config)
        yield (None, None, dit_note or "", None, None, None, None, "", _status("busy", "starting"),
               progress_html(text="starting..."), caption)
        for u in ar.explore(fpdm.model, dit, settings, device=device, dit_note=dit_note,
                            diffusion_config=fpdm.diffusion, dit_diffusion_config=dit_diffusion):
            images = ((page_image(u.fpdm_grid, settings, "fpdm"), page_image(u.dit_grid, settings, "dit"))
                      if u.refreshed else (gr.skip(), gr.skip()))
            if u.stage != "done":
                yield (*images, u.dit_note, gr.skip(), gr.skip(), gr.skip(), gr.skip(), "",
                       _status("busy", u.message), progress_html(u), caption)
                continue
            took = time.perf_counter() - start
            work = settings.num_images * (u.fpdm_record.spent_block_evals
                                          + (u.dit_record.spent_block_evals if u.dit_record else 0))
            n_dit = f", {aps.plural(len(u.dit_record.steps), 'DiT step')}" if u.dit_record else ""
            yield (*images, u.dit_note, strip(u.fpdm_frames), strip(u.dit_frames), plot(af.residual_figure(u.fpdm_record)),
                   plot(af.iterations_figure(u.fpdm_record)), u.summary,
                   _status("done", f"{fpdm.name}: {aps.plural(len(u.fpdm_record.steps), 'FPDM step')}{n_dit} "
                                   f"in {took:.1f} s"), progress_html(u), caption)
    except aps.ExploreError as e:
        yield None, None, "", None, None, None, None, "", _reject(e, "generate"), "", ""
    except Exception as e:  # a bug: keep serving, say what happened
        log.exception("generate failed")
        yield None, None, "", None, None, None, None, "", _status("error", f"unexpected {type(e).__name__}: {e}"), "", ""
    finally:
        ar.release_memory(work)


def compare(folder: str, device: str, fpdm_upload=None, fpdm_choice=None, weights="ema",
            comparison=ar.COMPARE_REUSE, allocation_b="increasing", **controls):
    """Stream `COMPARE_OUTPUTS`: two FPDM runs (reuse on/off, or two allocations) at the same budget and seed."""
    work = 0
    try:
        settings = aps.settings_from_ui(**controls)
        variants = ar.comparison_variants(settings, comparison, allocation_b)
        fpdm = ac.load_slot("fpdm", folder, fpdm_choice, fpdm_upload, device, weights)
        settings.labels(fpdm.model.config)  # an unknown class is refused before any work
        for u in ar.compare(fpdm.model, variants, device=device, diffusion_config=fpdm.diffusion):
            images = ((page_image(u.fpdm_grid, variants[0][1], "fpdm"), page_image(u.dit_grid, variants[1][1], "fpdm"))
                      if u.refreshed else (gr.skip(), gr.skip()))
            if u.stage != "done":
                yield *images, gr.skip(), gr.skip(), "", _status("busy", u.message), progress_html(u)
                continue
            (la, _), (lb, _) = variants
            work = settings.num_images * (u.fpdm_record.spent_block_evals + u.dit_record.spent_block_evals)
            zrange = af.residual_range(u.fpdm_record, u.dit_record)  # one colour scale for both
            yield (*images, plot(af.residual_figure(u.fpdm_record, f"{la}: relative residual", zrange)),
                   plot(af.residual_figure(u.dit_record, f"{lb}: relative residual", zrange)), u.summary,
                   _status("done", f"{la} vs {lb}, {aps.plural(len(u.fpdm_record.steps), 'step')} each, "
                                   f"in {u.elapsed_s:.1f} s"), progress_html(u))
    except aps.ExploreError as e:
        yield None, None, None, None, "", _reject(e, "compare"), ""
    except Exception as e:  # a bug: keep serving, say what happened
        log.exception("compare failed")
        yield None, None, None, None, "", _status("error", f"unexpected {type(e).__name__}: {e}"), ""
    finally:
        ar.release_memory(work)


def landscape(path: str, metric=None, **controls):
    """(landscape plot, answer markdown) for the current controls (`al.LANDSCAPE_CONTROLS` by name); no sampling,
    never raises."""
    ls, problem = al.landscape_or_problem(path)
    fig, text = al.landscape_for_ui(ls, problem, metric, **controls)
    return plot(fig), text


def accept_upload(kind: str, device: str, file):
    """Load an uploaded checkpoint into the session and delete the file: (session models, message, file box)."""
    if not file:
        return None, "", None
    path = Path(file)
    try:
        loaded = ac.load_upload(kind, path, path.name, device)
        return loaded, f"Uploaded {loaded['ema'].describe()}: used until you clear the upload.", gr.skip()
    except aps.ExploreError as e:
        log.warning("rejected %s upload: %s", kind, e)
        return None, f"**Upload refused:** {e}", None
    finally:  # the session holds the models, not the file
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # gradio's folder for this upload, once empty


def fpdm_classes(folder: str, fpdm_choice, device: str, weights: str) -> list[str]:
    """The class control's choices for the chosen FPDM checkpoint (its classes), or the generic ones."""
    try:
        config = ac.load_slot("fpdm", folder, fpdm_choice, None, device, weights).model.config
    except aps.ExploreError:
        config = None
    return aps.class_choices(config)


def refresh(folder: str, device: str, fpdm_choice=None, dit_choice=None, weights="ema", class_choice=None):
    """Re-scan the checkpoint folder: (FPDM dropdown, DiT dropdown, checkpoint status markdown, class dropdown with
    the FPDM checkpoint's classes)."""
    names = ac.list_checkpoints(folder)

    def pick(kind, current):
        if current in names:
            return current
        default = ac.DEFAULT_NAMES[kind]
        return default if default in names else None

    fpdm_value, dit_value = pick("fpdm", fpdm_choice), pick("dit", dit_choice)
    try:
        status = ac.checkpoint_status(folder, fpdm_value, dit_value, device, weights)
    except aps.ExploreError as e:
        status = f"**Cannot load:** {e}"
    classes = fpdm_classes(folder, fpdm_value, device, weights if weights in ac.WEIGHTS else "ema")
    return (gr.Dropdown(choices=names, value=fpdm_value), gr.Dropdown(choices=names, value=dit_value), status,
            gr.Dropdown(choices=classes, value=class_choice if class_choice in classes else aps.ALL_CLASSES))


# ----------------------------------------------------------------------------- page
def widget(c: aps.Control) -> gr.components.Component:
    """The Gradio input for a derived control (`aps.controls`): its kind, bounds, choices, default and info."""
    kw = dict(label=c.label, info=c.info, elem_id=c.name.replace("_", "-"))
    if c.kind == "checkbox":
        return gr.Checkbox(c.value, **kw)
    if c.kind == "radio":
        return gr.Radio(list(c.choices), value=c.value, **kw)
    if c.kind == "dropdown":
        return gr.Dropdown(list(c.choices), value=c.value, **kw)
    precision = dict(precision=0) if c.integer else {}
    if c.kind == "slider":
        return gr.Slider(c.lo, c.hi, value=c.value, step=c.step, **kw, **precision)
    return gr.Number(c.value, minimum=c.lo, maximum=c.hi, **kw, **precision)


def build_demo(checkpoint_dir: str | Path | None = None, device: str = "cpu",
               landscape_file: str | Path | None = None) -> gr.Blocks:
    """The whole page; `checkpoint_dir` defaults to $FPDM_CHECKPOINT_DIR, else the kit's checkpoints;
    `landscape_file` to figures/bench/landscape.json."""
    folder = str(ac.checkpoint_dir(checkpoint_dir))
    landscape_path = str(landscape_file or al.LANDSCAPE_FILE)
    names = ac.list_checkpoints(folder)
    specs = aps.controls(fpdm_classes(folder, None, device, "ema"))
    ls, _ = al.landscape_or_problem(landscape_path)
    metric_choices = [(info["label"], name) for name, info in ls.metrics.items()] if ls else []
    with gr.Blocks(title="FPDM explorer", delete_cache=(600, 1800)) as demo:  # cached outputs dropped after 30 min
        fpdm_state = gr.State(None, time_to_live=3600)  # an uploaded FPDM (models in memory, no file kept)
        dit_state = gr.State(None, time_to_live=3600)
        gr.Markdown(INTRO)
        ckpt_status = gr.Markdown(ac.checkpoint_status(folder, device=device), elem_id="checkpoint-status")
        with gr.Row():
            with gr.Column(scale=1, min_width=340):
                run = gr.Button("Generate", variant="primary", elem_id="generate")
                controls = {name: widget(c) for name, c in specs.items() if c.place == "main"}
                gr.Markdown(aps.WORK_NOTE[:1].upper() + aps.WORK_NOTE[1:] + ".")
                with gr.Accordion("Advanced", open=False):
                    controls.update({name: widget(c) for name, c in specs.items() if c.place == "advanced"})
                with gr.Accordion("Checkpoints", open=False):
                    fpdm_choice = gr.Dropdown(names, value=ac.DEFAULT_NAMES["fpdm"] if ac.DEFAULT_NAMES["fpdm"] in names
                                              else None, label="FPDM checkpoint (from the checkpoints folder)")
                    fpdm_upload = gr.File(file_types=[".safetensors"], type="filepath", height=120,
                                          label=f"or upload an FPDM checkpoint (.safetensors, up to {ac.MAX_UPLOAD_MB} MB)")
                    dit_choice = gr.Dropdown(names, value=ac.DEFAULT_NAMES["dit"] if ac.DEFAULT_NAMES["dit"] in names
                                             else None, label="DiT baseline checkpoint")
                    dit_upload = gr.File(file_types=[".safetensors"], type="filepath", height=120,
                                         label=f"or upload a DiT checkpoint (.safetensors, up to {ac.MAX_UPLOAD_MB} MB)")
                    upload_msg = gr.Markdown(elem_id="upload-status")
                    weights = gr.Radio([("EMA weights", "ema"), ("raw training weights", "model")], value="ema",
                                       label="Weights", info="EMA needs many training steps to settle: a young training "
                                                             "checkpoint samples better with its raw weights (release "
                                                             "files hold EMA weights only)")
                    rescan = gr.Button("Re-scan checkpoint folder", size="sm")
            with gr.Column(scale=2):
                gr.Markdown("### Where your split lands: measured quality over steps x iterations")
                metric = gr.Dropdown(metric_choices, value=metric_choices[0][1] if metric_choices else None,
                                     label="Metric", elem_id="metric", visible=bool(metric_choices))
                landscape_plot = gr.Plot(show_label=False, elem_id="landscape-plot")
                landscape_text = gr.Markdown(elem_id="landscape-answer")
        with gr.Tabs():
            with gr.Tab("Sample", id="sample"):
                status = gr.Markdown("Press **Generate**.", elem_id="run-status")
                progress = gr.HTML(elem_id="progress")
                with gr.Row():
                    fpdm_img = gr.Image(label="FPDM (x0 prediction while sampling)", format="png", interactive=False,
                                        elem_id="fpdm-images", elem_classes="pixel-grid", show_label=True)
                    with gr.Column():
                        dit_img = gr.Image(label="DiT at the same budget", format="png", interactive=False,
                                           elem_id="dit-images", elem_classes="pixel-grid")
                        dit_note = gr.Markdown(elem_id="dit-note")
                caption = gr.Markdown(elem_id="caption")
                gr.Markdown(f"**The denoising itself**: the x0 prediction of the first {ar.STRIP_IMAGES} images at "
                            "every step (left to right, one frame per step; K = fixed-point iterations), FPDM then DiT. "
                            "Click a frame to step through them.")
                fpdm_strip = gr.Gallery(label="FPDM: x0 prediction per step", columns=10, height=160, format="png",
                                        fit_columns=False,
                                        elem_id="fpdm-strip", elem_classes="pixel-grid", object_fit="contain",
                                        allow_preview=True)
                dit_strip = gr.Gallery(label="DiT: x0 prediction per step", columns=10, height=160, format="png",
                                       fit_columns=False,
                                       elem_id="dit-strip", elem_classes="pixel-grid", object_fit="contain",
                                       allow_preview=True)
                summary = gr.Markdown(elem_id="summary")
                with gr.Row():
                    heatmap = gr.Plot(show_label=False, elem_id="residual-plot")
                    bars = gr.Plot(show_label=False, elem_id="iterations-plot")
            with gr.Tab("Compare", id="compare"):
                gr.Markdown("Two FPDM runs with the settings on the left, the same budget, seed and noise, differing "
                            "in one thing.")
                with gr.Row():
                    comparison = gr.Radio(list(ar.COMPARISONS), value=ar.COMPARE_REUSE, label="Compare",
                                          elem_id="comparison")
                    allocation_b = gr.Radio(list(ALLOCATIONS), value="increasing", elem_id="allocation-b",
                                            label="Second allocation (the first is the one on the left)")
                    compare_btn = gr.Button("Compare", variant="primary", elem_id="compare-button")
                compare_status = gr.Markdown(elem_id="compare-status")
                compare_progress = gr.HTML(elem_id="compare-progress")
                with gr.Row():
                    with gr.Column():
                        a_img = gr.Image(label="first run", format="png", interactive=False, elem_id="compare-a",
                                         elem_classes="pixel-grid")
                        a_heatmap = gr.Plot(show_label=False, elem_id="compare-a-plot")
                    with gr.Column():
                        b_img = gr.Image(label="second run", format="png", interactive=False, elem_id="compare-b",
                                         elem_classes="pixel-grid")
                        b_heatmap = gr.Plot(show_label=False, elem_id="compare-b-plot")
                compare_summary = gr.Markdown(elem_id="compare-summary")

        slots = dict(fpdm_choice=fpdm_choice, dit_choice=dit_choice, weights=weights)
        run.click(functools.partial(generate, folder, device), [fpdm_state, dit_state],
                  [fpdm_img, dit_img, dit_note, fpdm_strip, dit_strip, heatmap, bars, summary, status, progress,
                   caption], inputs_kwargs={**slots, **controls}, api_name="generate", preprocess=False,
                  show_progress="hidden")
        compare_btn.click(functools.partial(compare, folder, device), [fpdm_state],
                          [a_img, b_img, a_heatmap, b_heatmap, compare_summary, compare_status, compare_progress],
                          inputs_kwargs=dict(fpdm_choice=fpdm_choice, weights=weights, comparison=comparison,
                                             allocation_b=allocation_b, **controls),
                          api_name="compare", preprocess=False, show_progress="hidden")
        landscape_inputs = dict(metric=metric, **{name: controls[name] for name in al.LANDSCAPE_CONTROLS})
        do_landscape = functools.partial(landscape, landscape_path)
        for control in landscape_inputs.values():
            control.change(do_landscape, None, [landscape_plot, landscape_text], inputs_kwargs=landscape_inputs,
                           api_visibility="private", queue=False, show_progress="hidden", trigger_mode="always_last",
                           preprocess=False)
        for kind, upload, state in (("fpdm", fpdm_upload, fpdm_state), ("dit", dit_upload, dit_state)):
            upload.upload(functools.partial(accept_upload, kind, device), [upload], [state, upload_msg, upload],
                          api_visibility="private")
            upload.clear(lambda: (None, ""), None, [state, upload_msg], api_visibility="private")
        do_refresh = functools.partial(refresh, folder, device)
        class_choice = controls["class_choice"]
        refresh_io = [fpdm_choice, dit_choice, weights, class_choice], [fpdm_choice, dit_choice, ckpt_status, class_choice]
        rescan.click(do_refresh, *refresh_io, api_name="refresh")
        weights.change(do_refresh, *refresh_io, api_visibility="private")
        demo.load(do_refresh, *refresh_io, api_visibility="private", show_progress="hidden")
        demo.load(do_landscape, None, [landscape_plot, landscape_text], inputs_kwargs=landscape_inputs,
                  api_visibility="private", show_progress="hidden", preprocess=False)
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint-dir", default=None,
                   help=f"folder of *.safetensors checkpoints (default ${ac.CHECKPOINT_DIR_ENV}, "
                        "else the kit's shipped checkpoints)")
    p.add_argument("--landscape", default=None, help="quality landscape JSON (default figures/bench/landscape.json)")
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // max(1, args.concurrency)))
    demo = build_demo(args.checkpoint_dir, args.device, args.landscape)  # also loads (and caches) the default checkpoints
    demo.queue(default_concurrency_limit=args.concurrency, max_size=args.max_queue)
    demo.launch(server_name=args.host, server_port=args.port, theme=theme(), css=CSS, ssr_mode=False, share=False,
                max_file_size=f"{ac.MAX_UPLOAD_MB}mb")


if __name__ == "__main__":
    main()
