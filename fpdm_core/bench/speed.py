"""Speed: matmul peaks, one fixed-point iteration vs one DiT block, training steps/s, sampling images/s.

Not a claim of the paper: what an iteration, a training step and a sampled image cost here.
`run` calls one `measure_*` function per part of `results`; add a part with a function and one line
in `run` (and a table in `section`).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ..budget import CostModel
from ..models import build_model
from .harness import PAPER, Context, finding, log, pyplot, save_figure, spread, sync, timed, write_result

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
    from ..devices import resolve_precision
    from ..train import TrainConfig, Trainer

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


def measure_sampling(ctx: Context, model, preset: str, dit_depth: int, peaks: dict) -> list[dict]:
    """Images/s of one model at each of the mode's budgets (DiT-step equivalents), float32, reuse on."""
    from ..diffusion import GaussianDiffusion
    from ..sampling import SamplerConfig, sample

    sc, dev = ctx.scale, ctx.device
    diffusion = GaussianDiffusion().to(dev)
    labels = torch.arange(sc.sample_batch) % max(model.config.num_classes, 1)
    sample(model, diffusion, labels[:2], SamplerConfig(budget=dit_depth, steps=1),
           generator=torch.Generator().manual_seed(0), device=dev)  # warm-up
    rows = []
    for k in sc.speed_budgets:
        budget = k * dit_depth
        cfg = SamplerConfig(budget=budget, steps=k, reuse=True)
        log(f"speed: sampling {model.config.kind} at {k} DiT steps ({budget} block evaluations)")
        rec = {}

        def run_once():
            _, rec["r"] = sample(model, diffusion, labels, cfg, generator=torch.Generator().manual_seed(ctx.seed),
                                 device=dev)

        secs = timed(run_once, ctx.repeats, warmup=0, device=dev)
        flops = rec["r"].spent_flops * len(labels)
        gflops = spread([flops / s / 1e9 for s in secs])
        rows.append({"kind": model.config.kind, "preset": preset, "budget_dit_steps": k, "budget": budget,
                     "batch": len(labels), "precision": "fp32", "block_evals_per_image": rec["r"].spent_block_evals,
                     "gflop_per_image": rec["r"].spent_flops / 1e9, "images_per_s": spread([len(labels) / s for s in secs]),
                     "gflops_per_s": gflops, "fraction_of_peak": gflops["median"] / peaks["fp32"]})
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
    results["sample"] = [row for model, preset in ((fpdm, sc.fpdm), (dit, sc.dit))
                         for row in measure_sampling(ctx, model, preset, dit.config.depth, peaks)]
    plot(ctx, results)
    return write_result(ctx, NAME, {"fpdm": sc.fpdm, "dit": sc.dit, "device": str(dev),
                                    "threads": torch.get_num_threads(), "train_precision": ctx.precision,
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
        rows = [s for s in r["sample"] if s["kind"] == kind]
        axes[1].errorbar([s["budget_dit_steps"] for s in rows], [s["images_per_s"]["median"] for s in rows],
                         yerr=_errbar([s["images_per_s"] for s in rows]), marker="o", color=color, label=kind,
                         capsize=3)
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
    labels = [f"train {n}" for n in names] + [f"sample {s['kind']} k={s['budget_dit_steps']}" for s in r["sample"]]
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
    return out


def _stat(s, scale=1.0, fmt=".3g"):
    """'median (min-max, spread x%)' of a `spread` dict."""
    return (f"{s['median'] * scale:{fmt}} ({s['min'] * scale:{fmt}}-{s['max'] * scale:{fmt}}, "
            f"spread {s['spread_pct']:.0f}%)")


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
    lines += ["", "| sampling | budget (DiT steps) | block evals/image | GFLOP/image | images/s median (min-max) "
              "| GFLOP/s | of fp32 peak |", "|---|---:|---:|---:|---:|---:|---:|"]
    for s in r["sample"]:
        lines.append(f"| {s['preset']} | {s['budget_dit_steps']} | {s['block_evals_per_image']} | "
                     f"{s['gflop_per_image']:.2f} | {_stat(s['images_per_s'])} | {s['gflops_per_s']['median']:.1f} | "
                     f"{100 * s['fraction_of_peak']:.0f}% |")
    return "\n".join(lines)


