"""The app's latency and memory, measured through its back end for the speed benchmark (`bench speed`).

`measure_app` times the default request as the app's `generate` handler makes it (load both
checkpoints, FPDM then DiT through `app_runs.explore`, the result figures, `release_memory`): seconds
to the first live image and to completion, per stage, and the process RSS around a large request.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

from ..app_checkpoints import disk_loads, forget_loaded, load_slot
from ..app_figures import iterations_figure, residual_figure
from ..app_runs import RELEASE_AFTER_WORK, explore, release_memory
from ..app_settings import MAX_IMAGES, Settings
from ..devices import resolve_precision
from .harness import Context, load_checkpoint_model, log, spread


def rss_bytes() -> int | None:
    """Resident memory of this process (Linux /proc), None elsewhere."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def app_request(ctx: Context, settings, fpdm_path: Path, dit_path: Path) -> dict:
    """One request as the app's `generate` handler makes it: load both slots (cached after the first call),
    sample FPDM then DiT through `app_runs.explore`, draw the result figures, give memory back.

    Returns seconds to the first live image, to each update and to completion, how many checkpoints were read
    from disk, the work, and the RSS after the last update (before `release_memory`) and after it.
    """
    device = str(ctx.device)
    reads_before = disk_loads()
    start = time.perf_counter()
    fpdm = load_slot("fpdm", fpdm_path.parent, fpdm_path.name, None, device)
    dit_slot = load_slot("dit", dit_path.parent, dit_path.name, None, device)
    dit = dit_slot.model
    loaded = time.perf_counter() - start
    reads = disk_loads() - reads_before
    first, updates, last = None, [], None
    for u in explore(fpdm.model, dit, settings, device=device, diffusion_config=fpdm.diffusion,
                     dit_diffusion_config=dit_slot.diffusion):
        now = time.perf_counter() - start
        updates.append([u.stage, now])
        if first is None and u.fpdm_grid is not None:
            first = now
        last = u
    residual_figure(last.fpdm_record)
    iterations_figure(last.fpdm_record)
    done = time.perf_counter() - start
    work = settings.num_images * (last.fpdm_record.spent_block_evals
                                  + (last.dit_record.spent_block_evals if last.dit_record else 0))
    rss_after = rss_bytes()
    release_memory(work)
    return {"load_s": loaded, "disk_loads": reads, "first_image_s": first, "complete_s": done, "updates": updates, "work": work,
            "fpdm_steps": len(last.fpdm_record.steps), "dit_steps": len(last.dit_record.steps) if last.dit_record else 0,
            "fpdm_block_evals": last.fpdm_record.spent_block_evals, "dit_depth": dit.config.depth,
            "rss_after_request": rss_after, "rss_after_release": rss_bytes()}


APP_TARGETS = {"first_image_s": 0.3, "complete_s": 1.0}  # issue 14: the default request on an idle 2-core machine


def steps_within(a: dict, seconds: float) -> int | None:
    """The most FPDM steps (the default's iterations and images; DiT at the same budget) whose predicted
    completion, from the measured seconds per FPDM step, per DiT step and outside sampling, is below `seconds`;
    None if not even one step fits."""
    r, t = a["warm"][0], a["per_step_s"]
    outside = statistics.median(a["stages_s"]["load"]["values"]) + statistics.median(a["stages_s"]["finish"]["values"])
    evals_per_step = r["fpdm_block_evals"] / r["fpdm_steps"]
    fits = [s for s in range(1, r["fpdm_steps"] + 1)
            if outside + s * t["fpdm"] + int(s * evals_per_step // r["dit_depth"]) * t["dit"] < seconds]
    return max(fits) if fits else None


def measure_app(ctx: Context) -> dict:
    """The app's default request (`app_settings.Settings()`) through the back end: seconds to the first live image
    and to completion (the first, cold request apart: it loads the checkpoints), a breakdown per stage, and the
    process RSS before and after a request of `MAX_IMAGES` images and after `release_memory`."""
    paths = {kind: load_checkpoint_model(ctx, kind)[1] for kind in ("fpdm", "dit")}
    default = Settings()
    large = replace(default, num_images=MAX_IMAGES if ctx.scale.name != "tiny" else 2 * default.num_images)
    log(f"speed: the app's default request ({default.num_images} images), then one of {large.num_images}")
    forget_loaded()  # the cold request reads both files, as a fresh server's first one does
    cold = app_request(ctx, default, paths["fpdm"], paths["dit"])
    warm = [app_request(ctx, default, paths["fpdm"], paths["dit"]) for _ in range(max(ctx.repeats, 3))]
    release_memory(RELEASE_AFTER_WORK)  # what the bench's earlier parts left goes back first, as in a fresh server
    rss_before = rss_bytes()
    big = app_request(ctx, large, paths["fpdm"], paths["dit"])
    stages = {}
    for r in warm:  # seconds spent per stage: loading (cache), FPDM steps, DiT steps, figures and release
        marks = [("load", r["load_s"])] + [(stage, t) for stage, t in r["updates"]]
        ends = {stage: t for stage, t in marks}
        fpdm_end, dit_end = ends["fpdm"], ends.get("dit", ends["fpdm"])
        for name, value in (("load", r["load_s"]), ("fpdm", fpdm_end - r["load_s"]), ("dit", dit_end - fpdm_end),
                            ("finish", r["complete_s"] - dit_end)):
            stages.setdefault(name, []).append(value)
    out = {"settings": default.to_dict(), "large_images": large.num_images, "precision":
            resolve_precision(default.config.precision, ctx.device), "cold": cold, "warm": warm,
            "first_image_s": spread([r["first_image_s"] for r in warm]),
            "complete_s": spread([r["complete_s"] for r in warm]),
            "stages_s": {k: spread(v) for k, v in stages.items()},
            "per_step_s": {"fpdm": statistics.median(stages["fpdm"]) / warm[0]["fpdm_steps"],
                           "dit": statistics.median(stages["dit"]) / max(warm[0]["dit_steps"], 1)},
            "rss_before_large": rss_before, "large": big, "targets": APP_TARGETS}
    out["steps_within_target"] = steps_within(out, APP_TARGETS["complete_s"])
    return out
