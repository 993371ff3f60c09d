"""Precision: bf16 vs fp32 sampling of the shipped FPDM and DiT, every metric's paired difference with its 95% CI.

Each model samples the same labels from the same noise twice (float32, then bfloat16 autocast;
the headline sampler settings of `SamplerConfig()` otherwise), so the images pair up one to one
and every metric of `fpdm_core.scores` (both feature spaces) gets a paired interval of bf16 - fp32.
The residual curves and the images are compared directly as well. Verdict per model: "same
within CI" only when every metric's interval contains 0, otherwise "moved" naming the metrics.
This is a quality run, not a timing: the seconds it records are only for planning.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..devices import cpu_has_fast_bf16, resolve_precision
from ..sampling import SamplerConfig, balanced_labels, per_image_costs, sample_many
from ..scores import METRICS, score, summarize
from .harness import Context, finding, is_smoke, load_checkpoint_model, log, pyplot, save_figure, write_result
from .points import BATCH, Evaluator, metric_info

NAME = "precision"
TITLE = "bf16 vs fp32 sampling: the same quality?"
CLAIMS = ["Not a claim of the paper: sampling in bfloat16 autocast gives the same images and quality as float32 "
          "(every metric's paired 95% interval of bf16 - fp32 contains 0)."]
PRECISIONS = ("fp32", "bf16")
DISPLAY = {"fpdm": "FPDM", "dit": "DiT"}
SETTINGS = {"full": dict(n=1000, budget_dit_steps=5, n_boot=1000),  # n as the headline DDIM condition
            "quick": dict(n=100, budget_dit_steps=5, n_boot=200),
            "tiny": dict(n=20, budget_dit_steps=2, n_boot=20)}


def sampler_config(kind: str, budget_dit_steps: int, dit_depth: int, precision: str) -> SamplerConfig:
    """The headline settings at one budget: DiT takes that many steps; FPDM spends the same block evaluations
    through the timestep-smoothing rule."""
    if kind == "dit":
        return SamplerConfig(steps=budget_dit_steps, precision=precision)
    return SamplerConfig(budget=budget_dit_steps * dit_depth, precision=precision)


def residual_curve(records) -> np.ndarray:
    """(batches, iterations over all steps) batch-mean relative residuals, in sampling order; empty for DiT."""
    return np.array([[v for s in r.steps for v in s.rel_trace] for r in records], dtype=np.float64)


def compare_model(ev: Evaluator, kind: str, model, cfgs: dict[str, SamplerConfig], n: int, seed: int) -> dict:
    """Sample and score n images in each precision (same labels and noise); their paired differences."""
    labels = balanced_labels(n, model.config.num_classes)  # (n,)
    images, scored, curves, rows = {}, {}, {}, {}
    for p, cfg in cfgs.items():
        log(f"precision: {kind} in {p}, n = {n}")
        start = time.perf_counter()
        images[p], records = sample_many(model, ev.diffusion, labels, cfg, seed=seed, batch_size=BATCH,
                                         device=ev.ctx.device)  # (n, C, H, W)
        seconds = time.perf_counter() - start
        scored[p] = score(images[p].to(ev.ctx.device), labels, ev.classifier, ev.ref)
        curves[p] = residual_curve(records)
        block_evals, flops = per_image_costs(records, n, BATCH)
        metrics = summarize(scored[p], ev.ref, n_boot=ev.n_boot, seed=seed)
        rows[p] = {"seconds": seconds, "block_evals": block_evals, "flops": flops,
                   "steps": records[0].plan["steps"], "iterations": records[0].plan["iterations"],
                   "diagnostics": metrics.pop("diagnostics"), "metrics": metrics,
                   "residual_curve": curves[p].mean(0) if curves[p].size else []}
    gap = (images["bf16"] - images["fp32"]).abs()  # (n, C, H, W)
    curve_gap = np.abs(curves["bf16"] - curves["fp32"]) if curves["fp32"].size else None
    return {"kind": kind, "n": n, "config": cfgs["fp32"].to_dict() | {"precision": list(cfgs)}, "rows": rows,
            "diff": ev.compare(scored["bf16"], scored["fp32"], seed),
            "image_mean_abs_diff": float(gap.mean()), "image_max_abs_diff": float(gap.max()),
            "residual_max_abs_diff": None if curve_gap is None else float(curve_gap.max()),
            "residual_max_rel_diff": None if curve_gap is None else float((curve_gap / curves["fp32"]).max())}


def run(ctx: Context) -> Path:
    started, st = time.perf_counter(), SETTINGS[ctx.scale.name]
    models = {kind: load_checkpoint_model(ctx, kind) for kind in ("fpdm", "dit")}
    depth = models["dit"][0].config.depth
    ev = Evaluator(ctx, st["n_boot"])
    results = {"metrics": metric_info(), "models": {k: str(path) for k, (_, path) in models.items()},
               "comparisons": []}
    for kind, (model, _) in models.items():
        cfgs = {p: sampler_config(kind, st["budget_dit_steps"], depth, p) for p in PRECISIONS}
        results["comparisons"].append(compare_model(ev, kind, model, cfgs, st["n"], ctx.seed))
    plot(ctx, results)
    settings = {**st, "seed": ctx.seed, "batch": BATCH, "device": str(ctx.device),
                "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_has_amx": cpu_has_fast_bf16(),
                "auto_precision_here": resolve_precision("auto", ctx.device),
                "sampler": SamplerConfig().to_dict(),
                "residual": "batch-mean relative residual ||f(z)-z|| / (||f(z)|| + 1e-9) of every iteration"}
    return write_result(ctx, NAME, settings, results, started)


def moved(c: dict) -> list[str]:
    """Metrics whose paired 95% interval of bf16 - fp32 excludes 0."""
    return [m for m, d in c["diff"].items() if not d["lo"] <= 0 <= d["hi"]]


def relative_shift(c: dict, metric: str) -> float:
    """|bf16 - fp32| as a fraction of the half-width of the fp32 metric's own 95% interval."""
    m = c["rows"]["fp32"]["metrics"][metric]
    half = (m["hi"] - m["lo"]) / 2
    shift = abs(c["diff"][metric]["value"])
    return shift / half if half > 0 else (0.0 if shift == 0 else float("inf"))


def plot(ctx: Context, r: dict) -> None:
    plt = pyplot()
    names = list(r["metrics"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for j, c in enumerate(r["comparisons"]):
        half = [(c["rows"]["fp32"]["metrics"][m]["hi"] - c["rows"]["fp32"]["metrics"][m]["lo"]) / 2 or float("nan")
                for m in names]  # a metric whose fp32 interval has no width (e.g. accuracy 0 everywhere) is not drawn
        d = [c["diff"][m] for m in names]
        y = np.arange(len(names)) + 0.15 * (j - 0.5)
        axes[0].errorbar([x["value"] / h for x, h in zip(d, half)], y, fmt="o", capsize=3, label=c["kind"],
                         xerr=[[(x["value"] - x["lo"]) / h for x, h in zip(d, half)],
                               [(x["hi"] - x["value"]) / h for x, h in zip(d, half)]])
    axes[0].axvline(0, color="k", lw=0.8)
    axes[0].set_yticks(range(len(names)), names, fontsize=8)
    axes[0].set_xlabel("bf16 - fp32 [95% CI], in half-widths of the fp32 metric's CI")
    axes[0].legend(fontsize=8)
    fpdm = next((c for c in r["comparisons"] if c["residual_max_abs_diff"] is not None), None)
    if fpdm is not None:
        for p, ls in (("fp32", "-"), ("bf16", ":")):
            axes[1].semilogy(fpdm["rows"][p]["residual_curve"], ls=ls, label=p)
        axes[1].set_xlabel("fixed-point iteration (all steps in sampling order)")
        axes[1].set_ylabel("relative residual (batch mean)")
        axes[1].set_title(f"FPDM, {fpdm['rows']['fp32']['steps']} steps", fontsize=9)
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    save_figure(ctx, NAME, fig)


def verdicts(data: dict) -> list[dict]:
    st, out = data["settings"], []
    for c in data["results"]["comparisons"]:
        shifted = moved(c)
        status = "same within CI" if not shifted else "moved"
        largest = max(METRICS, key=lambda m: relative_shift(c, m))
        sentence = (f"{DISPLAY[c['kind']]}, n = {c['n']}, {st['budget_dit_steps']} DiT-step budget: "
                    + ("every metric's paired 95% interval of bf16 - fp32 contains 0" if not shifted else
                       "the interval of bf16 - fp32 excludes 0 for " + ", ".join(shifted))
                    + f"; the largest shift is {relative_shift(c, largest):.2f} half-widths of the fp32 interval "
                    f"({largest}); images differ by {c['image_mean_abs_diff']:.2g} on average "
                    f"(max {c['image_max_abs_diff']:.2g}, pixel range 2)"
                    + ("" if c["residual_max_abs_diff"] is None else
                       f"; residual curves by at most {c['residual_max_abs_diff']:.2g} "
                       f"({100 * c['residual_max_rel_diff']:.0f}% relative)") + ".")
        out.append(finding(status, f"bf16 sampling keeps {DISPLAY[c['kind']]}'s quality", sentence))
    if not is_smoke(data):
        same = all(not moved(c) for c in data["results"]["comparisons"])
        out.append(finding("measured", "default sampling precision",
                           "No metric moved, so `SamplerConfig.precision` can be 'auto' (here: "
                           f"{st['auto_precision_here']}; bf16 where bf16 matmuls are fast)." if same else
                           "A metric moved, so `SamplerConfig.precision` stays 'fp32'."))
    return out


def _ci(d: dict) -> str:
    fmt = ".4f" if abs(d["value"]) < 10 else ".2f"
    return f"{d['value']:{fmt}} [{d['lo']:{fmt}}, {d['hi']:{fmt}}]"


def section(data: dict) -> str:
    r, st = data["results"], data["settings"]
    lines = [f"Shipped models ({', '.join(f'`{Path(p).name}`' for p in r['models'].values())}, EMA), DDIM and the "
             f"other `SamplerConfig()` settings, {st['budget_dit_steps']} DiT-step budget, n = {st['n']} per model "
             f"and precision, the same labels and noise in both; CPU capability {st['cpu_capability']}, AMX "
             f"{'yes' if st['cpu_has_amx'] else 'no'} (`auto` = {st['auto_precision_here']} here). Intervals: "
             f"paired bootstrap, {st['n_boot']} resamples.", ""]
    for c in r["comparisons"]:
        rows = c["rows"]
        lines += [f"### {DISPLAY[c['kind']]}: {rows['fp32']['steps']} steps, {rows['fp32']['block_evals']:.0f} block "
                  f"evaluations per image", "",
                  "| metric | fp32 [95% CI] | bf16 [95% CI] | bf16 - fp32 [95% CI] | contains 0 | shift / fp32 "
                  "half-width |", "|---|---:|---:|---:|---|---:|"]
        for m, info in r["metrics"].items():
            d = c["diff"][m]
            lines.append(f"| {info['label']} | {_ci(rows['fp32']['metrics'][m])} | {_ci(rows['bf16']['metrics'][m])} "
                         f"| {_ci(d)} | {'yes' if d['lo'] <= 0 <= d['hi'] else '**no**'} | "
                         f"{relative_shift(c, m):.2f} |")
        res = ("-" if c["residual_max_abs_diff"] is None else
               f"{c['residual_max_abs_diff']:.2g} ({100 * c['residual_max_rel_diff']:.0f}% of the fp32 value)")
        lines += ["", f"Images: mean abs difference {c['image_mean_abs_diff']:.2g}, max {c['image_max_abs_diff']:.2g} "
                  f"(pixels in [-1, 1]); residual curves: max abs difference {res}; sampling took "
                  f"{rows['fp32']['seconds']:.0f} s (fp32) and {rows['bf16']['seconds']:.0f} s (bf16) on a shared "
                  "machine (not a timing).", ""]
    return "\n".join(lines)
