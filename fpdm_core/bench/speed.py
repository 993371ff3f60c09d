"""Speed: matmul peaks, one fixed-point iteration vs one DiT block, training steps/s, sampling images/s
in fp32 and bf16, torch.compile, the app's latency and memory.

Not a claim of the paper: what an iteration, a training step, a sampled image and an app request
cost here. Every "of peak" fraction is against the matmul peak of the precision the row ran in.
`run` calls one `measure_*` function per part of `results`; add a part with a function and one line
in `run` (and a table in `section`). A training before/after table comes from
`scripts/train_speed.py` (its JSON is carried into speed.json).
"""
from __future__ import annotations

import copy
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from ..budget import CostModel
from ..devices import resolve_precision
from ..models import build_model
from ..sampling import SamplerConfig, sample
from ..train import TrainConfig, Trainer
from .app_latency import measure_app
from .harness import (Context, PAPER, bench_diffusion, finding, load_checkpoint_model, log, mib, pyplot, result_path,
                      save_figure, spread, sync, timed, write_result)

NAME = "speed"
TITLE = "Speed"
CLAIMS = ["Not a claim of the paper: what an iteration, a training step and a sampled image cost here."]


def train_step_flops(cost: CostModel, batch: int, n_no_grad: int = 0, n_grad: int = 0) -> float:
    """FLOPs of one training step: forward of everything, backward (2x forward) of the graph-carrying part."""
    with_grad = cost.step_flops(n_grad)
    return batch * (3 * with_grad + n_no_grad * cost.iteration_flops)


def matmul_peaks(sizes: tuple[int, ...], repeats: int, device: torch.device) -> dict:
    """GFLOP/s of square matmuls in float32 and bfloat16."""
    out = {}
    for dtype in ("fp32", "bf16"):
        dt = torch.float32 if dtype == "fp32" else torch.bfloat16
        per_size = {}
        for n in sizes:
            a, b = torch.randn(n, n, device=device).to(dt), torch.randn(n, n, device=device).to(dt)
            flops = 2 * n**3
            inner = max(1, int(1e9 // flops))
            secs = timed(lambda: torch.mm(a, b), max(repeats, 3), inner=inner, device=device)
            per_size[str(n)] = spread([flops / s / 1e9 for s in secs])
        out[dtype] = {"by_size": per_size, "peak_gflops": max(v["median"] for v in per_size.values())}
    return out


def measure_block(ctx: Context, fpdm, dit) -> dict:
    """Time of one fixed-point iteration vs one DiT block on the same (B, N, D) input (float32, no grad)."""
    sc, dev = ctx.scale, ctx.device
    B, N, D = sc.train_batch, fpdm.config.num_tokens, fpdm.config.hidden_size
    g = torch.Generator().manual_seed(ctx.seed)
    z, inj = (torch.randn(B, N, D, generator=g).to(dev) for _ in range(2))  # (B, N, D)
    c = torch.randn(B, D, generator=g).to(dev)  # (B, D)
    cost = CostModel.of(fpdm.config)
    with torch.no_grad():
        t_block = timed(lambda: dit.blocks[0](z, c), ctx.repeats, inner=5, warmup=3, device=dev)
        t_iter = timed(lambda: fpdm.fixed_point_map(z, inj, c), ctx.repeats, inner=5, warmup=3, device=dev)
    return {"batch": B, "tokens": N, "hidden": D, "precision": "fp32", "dit_block_s": spread(t_block),
            "fp_iteration_s": spread(t_iter), "ratio": statistics.median(t_iter) / statistics.median(t_block),
            "flop_ratio": cost.iteration_flops / cost.block_flops, "prototype_ratio": PAPER["iteration_vs_block"]}


def measure_training(ctx: Context, preset: str, peaks: dict) -> dict:
    """Training steps/s of one preset through `train.Trainer` (the mode's batch, `--precision`)."""
    sc, dev = ctx.scale, ctx.device
    cfg = TrainConfig(model=preset, batch_size=sc.train_batch, max_steps=1, precision=ctx.precision,
                      device=str(dev), seed=ctx.seed, sample_every=0, dataset=sc.dataset, subset=sc.data_subset)
    trainer = Trainer(cfg)
    cost = CostModel.of(trainer.model.config)
    trainer.step()  # warm-up
    secs, flops, draws = [], [], []
    for _ in range(ctx.repeats):
        start, total = time.perf_counter(), 0.0
        for _ in range(sc.train_steps):
            row = trainer.step()
            n_ng, n_g = row.get("n_no_grad", 0), row.get("n_grad", 0)
            total += train_step_flops(cost, sc.train_batch, n_ng, n_g)
            draws.append([n_ng, n_g])
        sync(dev)
        secs.append(time.perf_counter() - start)
        flops.append(total)
    precision = resolve_precision(ctx.precision, trainer.device)
    gflops = spread([f / s / 1e9 for f, s in zip(flops, secs)])
    return {"kind": cost.kind, "batch": sc.train_batch, "precision": precision, "steps_per_repeat": sc.train_steps,
            "steps_per_s": spread([sc.train_steps / s for s in secs]), "gflops_per_s": gflops,
            "fraction_of_peak": gflops["median"] / peaks[precision], "draws": draws,
            "params": sum(p.numel() for p in trainer.model.parameters())}


SAMPLING_PRECISIONS = ("fp32", "bf16")
BEFORE_AFTER = "train_before_after"  # <out>/bench/<this>.json from scripts/train_speed.py, carried into speed.json
MAX_SAMPLING_REPEATS = 3  # each repeat samples every budget in both precisions: the bulk of the full run


def sampling_repeats(ctx: Context) -> int:
    """Repeats of the sampling and compile rows (at most MAX_SAMPLING_REPEATS; the mode's for training)."""
    return min(ctx.repeats, MAX_SAMPLING_REPEATS)


def measure_sampling(ctx: Context, models: dict, dit_depth: int, peaks: dict) -> tuple[list[dict], list[dict]]:
    """Images/s of the trained models at each budget (DiT-step equivalents) in fp32 and bf16, side by side.

    Every repeat samples the same images in both precisions, alternating which goes first, so the
    bf16 speed-up is a ratio within each repeat. Returns (one row per model x budget x precision,
    one comparison per model x budget: the speed-up and the largest differences of FPDM's per-step
    final relative residual and of the images).
    """
    sc, dev = ctx.scale, ctx.device
    diffusion = bench_diffusion(ctx)  # the trained models'
    rows, comparisons = [], []
    for kind, model in models.items():
        labels = torch.arange(sc.sample_batch) % max(model.config.num_classes, 1)
        for precision in SAMPLING_PRECISIONS:  # warm-up
            sample(model, diffusion, labels[:2], SamplerConfig(budget=dit_depth, steps=1, precision=precision),
                   generator=torch.Generator().manual_seed(0), device=dev)
        for k in sc.speed_budgets:
            budget = k * dit_depth
            log(f"speed: sampling {kind} at {k} DiT steps ({budget} block evaluations), fp32 and bf16")
            secs, out = {p: [] for p in SAMPLING_PRECISIONS}, {}
            for r in range(sampling_repeats(ctx)):
                for p in SAMPLING_PRECISIONS[:: 1 if r % 2 == 0 else -1]:
                    start = time.perf_counter()
                    out[p] = sample(model, diffusion, labels, SamplerConfig(budget=budget, steps=k, precision=p),
                                    generator=torch.Generator().manual_seed(ctx.seed), device=dev)
                    sync(dev)
                    secs[p].append(time.perf_counter() - start)
            for p in SAMPLING_PRECISIONS:
                record = out[p][1]
                gflops = spread([record.spent_flops * len(labels) / s / 1e9 for s in secs[p]])
                rows.append({"kind": kind, "budget_dit_steps": k, "budget": budget, "batch": len(labels),
                             "precision": p, "block_evals_per_image": record.spent_block_evals,
                             "gflop_per_image": record.spent_flops / 1e9,
                             "images_per_s": spread([len(labels) / s for s in secs[p]]), "gflops_per_s": gflops,
                             "fraction_of_peak": gflops["median"] / peaks[p]})
            (x32, r32), (x16, r16) = out["fp32"], out["bf16"]
            res32, res16 = ([s.rel_trace[-1] for s in r.steps if s.rel_trace] for r in (r32, r16))
            diffs = [abs(a - b) for a, b in zip(res32, res16)]
            comparisons.append({"kind": kind, "budget_dit_steps": k, "budget": budget, "batch": len(labels),
                                "bf16_speedup": spread([a / b for a, b in zip(secs["fp32"], secs["bf16"])]),
                                "residual_fp32": res32, "residual_bf16": res16,
                                "residual_max_abs_diff": max(diffs) if diffs else None,
                                "image_max_abs_diff": float((x32 - x16).abs().max()),
                                "image_mean_abs_diff": float((x32 - x16).abs().mean())})
    return rows, comparisons


def explicit_blocks(model) -> list[torch.nn.Module]:
    """Every transformer block a sampling step runs: DiT's blocks; FPDM's pre, fixed-point and post blocks."""
    if model.config.kind == "dit":
        return list(model.blocks)
    return [*model.blocks_pre, model.block_fixed_point, *model.blocks_post]


def measure_compile(ctx: Context, models: dict, dit_depth: int) -> list[dict]:
    """torch.compile for sampling (fp32): compile seconds apart, images/s eager vs compiled, side by side.

    A copy of each model gets `Module.compile` on every block (FPDM's projection MLP stays eager)
    and samples at the middle budget, with the compile caches off so that each model's compile time
    is a cold one (FPDM's and DiT's blocks share shapes). Inductor builds C++ for minutes on a small
    CPU, so the tiny mode uses the "aot_eager" backend (no code generation: a smoke test of the
    path). A backend that fails here is reported in the row, not raised.
    """
    sc, dev = ctx.scale, ctx.device
    backend = "aot_eager" if sc.name == "tiny" else "inductor"
    k = sc.speed_budgets[len(sc.speed_budgets) // 2]
    diffusion = bench_diffusion(ctx)  # the trained models'
    rows = []
    for kind, model in models.items():
        labels = torch.arange(sc.sample_batch) % max(model.config.num_classes, 1)
        config = SamplerConfig(budget=k * dit_depth, steps=k, precision="fp32")

        def run(m):
            generator = torch.Generator().manual_seed(ctx.seed)
            images = sample(m, diffusion, labels, config, generator=generator, device=dev)[0]  # (B, C, H, W)
            sync(dev)
            return images

        torch._dynamo.reset()  # blocks of equal shapes would otherwise reuse the previous model's compiled code
        compiled = copy.deepcopy(model)
        for block in explicit_blocks(compiled):
            block.compile(backend=backend)
        row = {"kind": kind, "backend": backend, "compiled": "every transformer block", "budget_dit_steps": k,
               "batch": len(labels), "precision": "fp32"}
        log(f"speed: torch.compile ({backend}) of {kind}'s blocks, sampling at {k} DiT steps")
        eager_images = run(model)  # warm-up
        start = time.perf_counter()
        try:
            with torch._inductor.config.patch(force_disable_caches=True), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")  # what we asked for
                compiled_images = run(compiled)  # compiles
        except Exception as e:  # noqa: BLE001 - a backend that cannot build here is a result to report
            rows.append({**row, "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"})
            continue
        first_s = time.perf_counter() - start
        secs = {"eager": [], "compiled": []}
        for r in range(sampling_repeats(ctx)):
            for name in ("eager", "compiled")[:: 1 if r % 2 == 0 else -1]:
                start = time.perf_counter()
                run(model if name == "eager" else compiled)
                secs[name].append(time.perf_counter() - start)
        rows.append({**row, "compile_s": first_s - statistics.median(secs["compiled"]),
                     "eager_images_per_s": spread([len(labels) / s for s in secs["eager"]]),
                     "compiled_images_per_s": spread([len(labels) / s for s in secs["compiled"]]),
                     "speedup": spread([a / b for a, b in zip(secs["eager"], secs["compiled"])]),
                     "image_max_abs_diff": float((eager_images - compiled_images).abs().max())})
    return rows


def run(ctx: Context) -> Path:
    started, sc, dev = time.perf_counter(), ctx.scale, ctx.device
    results: dict = {}
    log("speed: matmul peaks")
    results["matmul"] = matmul_peaks(sc.matmul_sizes, ctx.repeats, dev)
    peaks = {k: v["peak_gflops"] for k, v in results["matmul"].items()}
    log("speed: one fixed-point iteration vs one DiT block")
    torch.manual_seed(ctx.seed)
    fpdm, dit = build_model(sc.fpdm).to(dev).eval(), build_model(sc.dit).to(dev).eval()
    results["block"] = measure_block(ctx, fpdm, dit)
    results["train"] = {}
    for preset in (sc.fpdm, sc.dit):
        log(f"speed: training steps/s of {preset}")
        results["train"][preset] = measure_training(ctx, preset, peaks)
    trained = {kind: load_checkpoint_model(ctx, kind)[0] for kind in ("fpdm", "dit")}
    results["sample"], results["precision"] = measure_sampling(ctx, trained, trained["dit"].config.depth, peaks)
    results["compile"] = measure_compile(ctx, trained, trained["dit"].config.depth)
    results["app"] = measure_app(ctx)
    before_after = result_path(ctx.out, BEFORE_AFTER)
    if before_after.is_file():  # measured by scripts/train_speed.py (old and new code side by side)
        results[BEFORE_AFTER] = json.loads(before_after.read_text())
    plot(ctx, results)
    return write_result(ctx, NAME, {"fpdm": sc.fpdm, "dit": sc.dit, "device": str(dev),
                                    "threads": torch.get_num_threads(), "train_precision": ctx.precision,
                                    "sampling_models": "the trained --fpdm/--dit checkpoints (EMA), guidance and "
                                                       "the other sampler settings at their defaults",
                                    "auto_precision_here": resolve_precision("auto", dev),
                                    "flops": "budget.CostModel (multiply-add = 2 FLOPs; backward = 2x forward)"},
                        results, started)


def _errbar(stats: list[dict]):
    return [[s["median"] - s["min"] for s in stats], [s["max"] - s["median"] for s in stats]]


def plot(ctx: Context, r: dict) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    names = list(r["train"])
    stats = [r["train"][n]["steps_per_s"] for n in names]
    axes[0].bar(names, [s["median"] for s in stats], yerr=_errbar(stats), color=["#2a7ab9", "#888"], capsize=4)
    axes[0].set_ylabel("training steps / s")
    axes[0].set_title(f"training (batch {ctx.scale.train_batch})", fontsize=9)
    for kind, color in (("fpdm", "#2a7ab9"), ("dit", "#888")):
        for precision, ls in (("fp32", "-"), ("bf16", ":")):
            rows = [s for s in r["sample"] if s["kind"] == kind and s["precision"] == precision]
            axes[1].errorbar([s["budget_dit_steps"] for s in rows], [s["images_per_s"]["median"] for s in rows],
                             yerr=_errbar([s["images_per_s"] for s in rows]), marker="o", color=color, ls=ls,
                             label=f"{kind} {precision}", capsize=3)
    axes[1].set_xlabel("budget (DiT-step equivalents)")
    axes[1].set_ylabel("images / s")
    axes[1].set_title("sampling", fontsize=9)
    axes[1].legend(fontsize=8)
    b = r["block"]
    st = [b["dit_block_s"], b["fp_iteration_s"]]
    axes[2].bar(["DiT block", "FP iteration"], [s["median"] * 1e3 for s in st],
                yerr=np.array(_errbar(st)) * 1e3, color=["#888", "#2a7ab9"], capsize=4)
    axes[2].set_ylabel("ms per call")
    axes[2].set_title(f"iteration / block = {b['ratio']:.2f}x (FLOPs {b['flop_ratio']:.2f}x)", fontsize=9)
    labels = [f"train {n}" for n in names] + [f"sample {s['kind']} k={s['budget_dit_steps']} {s['precision']}"
                                              for s in r["sample"]]
    values = ([r["train"][n]["gflops_per_s"]["median"] for n in names]
              + [s["gflops_per_s"]["median"] for s in r["sample"]])
    axes[3].barh(labels, values, color="#2a7ab9")
    for dtype, ls in (("fp32", "--"), ("bf16", ":")):
        axes[3].axvline(r["matmul"][dtype]["peak_gflops"], color="k", ls=ls, label=f"{dtype} matmul peak")
    axes[3].set_xlabel("achieved GFLOP/s")
    axes[3].tick_params(axis="y", labelsize=7)
    axes[3].legend(fontsize=7)
    fig.tight_layout()
    save_figure(ctx, NAME, fig)




def verdicts(data: dict) -> list[dict]:
    r = data["results"]
    b = r["block"]
    out = [finding("measured", "cost of one fixed-point iteration",
                   f"One fixed-point iteration takes {b['ratio']:.2f}x the time of one DiT block (FLOP model "
                   f"{b['flop_ratio']:.2f}x; the prototype measured {b['prototype_ratio']:.2f}x): at an equal count of "
                   f"block evaluations FPDM spends about {b['ratio']:.2f}x DiT's time per evaluation.")]
    tr = r["train"]
    f, dt = (next(v for v in tr.values() if v["kind"] == k) for k in ("fpdm", "dit"))
    out.append(finding("measured", "training throughput",
                       f"S-JFB training runs at {f['steps_per_s']['median']:.2f} steps/s vs DiT's "
                       f"{dt['steps_per_s']['median']:.2f} (batch {f['batch']}, {f['precision']}; "
                       f"{100 * f['fraction_of_peak']:.0f}% and {100 * dt['fraction_of_peak']:.0f}% of the "
                       f"{f['precision']} matmul peak of {r['matmul'][f['precision']]['peak_gflops']:.0f} GFLOP/s)."))
    a = r.get("app")
    if a:
        met = all(a[k]["median"] < v for k, v in a["targets"].items())
        out.append(finding("measured", "app latency (default request)",
                           f"The app's default request shows its first image after {a['first_image_s']['median']:.2g} s "
                           f"and completes after {a['complete_s']['median']:.2g} s (targets "
                           f"{a['targets']['first_image_s']} and {a['targets']['complete_s']} s: "
                           f"{'met' if met else 'missed'}; load average "
                           f"{', '.join(map(str, data['machine']['load_average'] or []))} on "
                           f"{data['machine']['cores']} cores); a {a['large_images']}-image request leaves the process "
                           f"at {mib(a['large']['rss_after_release'])} after `release_memory` "
                           f"({mib(a['rss_before_large'])} before it)."))
    comparisons = r.get("precision", [])
    if comparisons:
        speedups = [c["bf16_speedup"]["median"] for c in comparisons]
        curves = [c for c in comparisons if c["residual_max_abs_diff"] is not None]
        floor = {p: min((v for c in curves for v in c[f"residual_{p}"]), default=float("nan"))
                 for p in SAMPLING_PRECISIONS}
        largest = max((c["residual_max_abs_diff"] for c in curves), default=float("nan"))
        auto = data["settings"].get("auto_precision_here", "?")
        out.append(finding("measured", "bf16 sampling",
                           f"bf16 autocast samples at {min(speedups):.2f}-{max(speedups):.2f}x the images/s of fp32 "
                           f"here (medians per model and budget, side by side); FPDM's per-step final relative "
                           f"residual differs by at most {largest:.2g} and bottoms out at {floor['bf16']:.2g} in bf16 "
                           f"(fp32: {floor['fp32']:.2g}; bf16's rounding unit is 2^-8 = 0.0039), so tolerances below "
                           f"that are never met in bf16; "
                           f"precision 'auto' chooses {auto} on this machine."))
    return out


def _stat(s, scale=1.0, fmt=".3g"):
    """'median (min-max, spread x%)' of a `spread` dict."""
    return (f"{s['median'] * scale:{fmt}} ({s['min'] * scale:{fmt}}-{s['max'] * scale:{fmt}}, "
            f"spread {s['spread_pct']:.0f}%)")


def app_table(a: dict | None) -> list[str]:
    """Markdown lines of the app's default request: latency, where the time goes, memory of a large request."""
    if not a:
        return []
    st, big = a["settings"], a["large"]
    lines = ["", f"The app's default request through the back end ({st['num_images']} images, "
             f"{st['sampler']['steps']} steps x {st['sampler']['iterations']} iterations, then DiT at the same budget, "
             f"precision {a['precision']}; {len(a['warm'])} requests after a cold first one):", "",
             "| request | first live image (s) | complete (s) | target first / complete (s) |", "|---|---:|---:|---:|",
             f"| cold (loads the checkpoints) | {a['cold']['first_image_s']:.3g} | {a['cold']['complete_s']:.3g} | |",
             f"| default | {_stat(a['first_image_s'])} | {_stat(a['complete_s'])} | "
             f"{a['targets']['first_image_s']} / {a['targets']['complete_s']} |", "",
             "Where the time of a default request goes (medians, s): "
             + "; ".join(f"{k} {v['median']:.3g}" for k, v in a["stages_s"].items())
             + f"; one FPDM step {a['per_step_s']['fpdm']:.3g} s, one DiT step {a['per_step_s']['dit']:.3g} s. "
             + (f"At these rates at most {a['steps_within_target']} FPDM steps (and DiT at their budget) complete "
                f"within {a['targets']['complete_s']} s." if a["steps_within_target"] else
                f"Not even one FPDM step completes within {a['targets']['complete_s']} s at these rates."), "",
             f"Memory (process RSS): {mib(a['rss_before_large'])} before a {a['large_images']}-image request "
             f"({big['complete_s']:.3g} s), {mib(big['rss_after_request'])} after it, "
             f"{mib(big['rss_after_release'])} after `release_memory`."]
    return lines


def before_after_table(ba: dict | None) -> list[str]:
    """Markdown lines of scripts/train_speed.py's result: training steps/s of the old and new code, side by side."""
    if not ba:
        return []
    lines = ["", f"Training before/after (`{ba['command']}`, code at `{ba['before']}` vs `{ba['machine']['git_commit']}`, "
             f"their steps alternating in one process, {ba['repeats']} repeats of {ba['steps']} steps each, "
             f"{ba['precision']}, "
             f"{ba['machine']['torch_threads']} threads, load average "
             f"{', '.join(map(str, ba['machine']['load_average'] or []))}; fp32 matmul peak "
             f"{ba['fp32_peak_gflops']:.0f} GFLOP/s measured in the same run):", "",
             "| model | batch | before steps/s | after steps/s | speed-up (old / new time of each pair of steps) | "
             "of fp32 peak before / after |", "|---|---:|---:|---:|---:|---:|"]
    for row in ba["rows"]:
        b, a = row["before"], row["after"]
        lines.append(f"| {row['preset']} | {row['batch']} | {_stat(b['steps_per_s'])} | {_stat(a['steps_per_s'])} | "
                     f"{_stat(row['speedup'])} | {100 * b['fraction_of_fp32_peak']:.0f}% / "
                     f"{100 * a['fraction_of_fp32_peak']:.0f}% |")
    return lines


def section(data: dict) -> str:
    r = data["results"]
    lines = ["| matmul | peak GFLOP/s |", "|---|---:|"]
    lines += [f"| {k} | {v['peak_gflops']:.0f} |" for k, v in r["matmul"].items()]
    b = r["block"]
    lines += ["", f"One DiT block: {_stat(b['dit_block_s'], 1e3)} ms; one fixed-point iteration: "
              f"{_stat(b['fp_iteration_s'], 1e3)} ms (batch {b['batch']}, {b['tokens']} tokens, hidden {b['hidden']}); "
              f"ratio {b['ratio']:.2f}x, FLOP ratio {b['flop_ratio']:.2f}x.", "",
              "| training | batch | precision | steps/s median (min-max) | GFLOP/s | of peak |",
              "|---|---:|---|---:|---:|---:|"]
    for name, t in r["train"].items():
        lines.append(f"| {name} | {t['batch']} | {t['precision']} | {_stat(t['steps_per_s'])} | "
                     f"{t['gflops_per_s']['median']:.1f} | {100 * t['fraction_of_peak']:.0f}% |")
    lines += ["", "| sampling | budget (DiT steps) | precision | block evals/image | GFLOP/image | "
              "images/s median (min-max) | GFLOP/s | of its matmul peak |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for s in r["sample"]:
        lines.append(f"| {s['kind']} | {s['budget_dit_steps']} | {s['precision']} | {s['block_evals_per_image']} | "
                     f"{s['gflop_per_image']:.2f} | {_stat(s['images_per_s'])} | {s['gflops_per_s']['median']:.1f} | "
                     f"{100 * s['fraction_of_peak']:.0f}% |")
    lines += ["", f"bf16 vs fp32 sampling, side by side in each repeat (`auto` resolves to "
              f"{data['settings'].get('auto_precision_here', '?')} here):", "",
              "| model | budget (DiT steps) | bf16 speed-up median (min-max) | residual curve max abs diff | "
              "image mean / max abs diff |", "|---|---:|---:|---:|---:|"]
    for c in r.get("precision", []):
        res = "-" if c["residual_max_abs_diff"] is None else f"{c['residual_max_abs_diff']:.2g}"
        lines.append(f"| {c['kind']} | {c['budget_dit_steps']} | {_stat(c['bf16_speedup'])} | {res} | "
                     f"{c['image_mean_abs_diff']:.2g} / {c['image_max_abs_diff']:.2g} |")
    lines += before_after_table(r.get(BEFORE_AFTER)) + app_table(r.get("app"))
    compiled = r.get("compile", [])
    if compiled:
        lines += ["", "| torch.compile (sampling, fp32) | backend | compile s | eager images/s | compiled images/s | "
                  "speed-up |", "|---|---|---:|---:|---:|---:|"]
        for c in compiled:
            if "error" in c:
                lines.append(f"| {c['kind']} | {c['backend']} | failed: {c['error']} | | | |")
            else:
                lines.append(f"| {c['kind']} k={c['budget_dit_steps']} | {c['backend']} | {c['compile_s']:.1f} | "
                             f"{_stat(c['eager_images_per_s'])} | {_stat(c['compiled_images_per_s'])} | "
                             f"{_stat(c['speedup'])} |")
    return "\n".join(lines)


