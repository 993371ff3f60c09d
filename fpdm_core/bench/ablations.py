"""Ablations with models that learned something: S-JFB vs JFB vs full backprop, pre/post depth, and the
n_no_grad / n_grad ranges; every variant x seed trained for the same number of steps, then judged.

Each run trains `Scale.abl_steps` steps (capped at `abl_minutes` of wall time) and samples
`abl_n` images from its EMA weights with the same labels and noise as every other run, so
comparisons are paired image by image. A comparison whose models are not clearly above chance
(accuracy below scoring.MIN_ACCURACY) or whose n is below scoring.MIN_N is underpowered.
`--jobs N` trains N runs at once in worker processes (spawned; they share one GPU well, since
each run is small and launch-bound).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .. import classifier, metrics
from ..sampling import SamplerConfig
from ..stats import paired_diff_ci, verdict
from ..train import TrainConfig, Trainer
from .harness import Context, MiB, SMOKE, SMOKE_MODES, finding, log, mib, pyplot, save_figure, write_result
from .memory import estimate_step_memory
from .scoring import CHANCE, MIN_ACCURACY, MIN_N, power_problem, sample_and_score, summary

NAME = "ablations"
TITLE = "Ablations (equal training steps, 2 seeds)"
CLAIMS = ["S-JFB trains better than JFB (one gradient iteration) and than backprop through all iterations, "
          "which also costs memory.", "The paper's choices (1 pre + 1 post block; n_no_grad ~ U{0..10}, "
          "n_grad ~ U{1..12}) work at least as well as the alternatives."]

BASELINE = "S-JFB U{0..10}/U{1..12}"
VARIANTS: dict[str, tuple[dict, dict]] = {  # name: (TrainConfig.model_overrides, other TrainConfig fields)
    BASELINE: ({}, {}),
    "JFB (n_grad = 1)": ({}, dict(gradient="jfb")),
    "full backprop": ({}, dict(gradient="full")),
    "pre/post 2/2": (dict(pre_depth=2, post_depth=2), {}),
    "S-JFB U{0..4}/U{1..4}": ({}, dict(no_grad_iters=(0, 4), grad_iters=(1, 4))),
}
COMPARISONS = (  # (claim, variant claimed better, the other)
    ("S-JFB trains better than JFB", BASELINE, "JFB (n_grad = 1)"),
    ("S-JFB trains better than full backprop", BASELINE, "full backprop"),
    ("pre/post 2/2 trains better than 1/1", "pre/post 2/2", BASELINE),
    ("wide ranges U{0..10}/U{1..12} train better than U{0..4}/U{1..4}", BASELINE, "S-JFB U{0..4}/U{1..4}"),
)
SAMPLE_STEPS, BLOCKS_PER_STEP = 10, 8  # judged at 10 DDIM steps x 8 block evaluations (equal budget for all)
LOSS_POINTS = 100  # loss curve points kept per run


def worst_case_draw(cfg) -> tuple[int, int]:
    """The (n_no_grad, n_grad) of a TrainConfig's most memory-hungry step."""
    hi_ng, hi_g = cfg.no_grad_iters[1], cfg.grad_iters[1]
    return {"sjfb": (hi_ng, hi_g), "jfb": (hi_ng, 1), "full": (0, hi_ng + hi_g)}[cfg.gradient]


def run_specs(ctx: Context, classifier_path: Path | None) -> list[dict]:
    """One spec per variant x seed: everything a worker process needs (plain data, picklable)."""
    sc = ctx.scale
    threads = max(1, torch.get_num_threads() // ctx.jobs)  # the CPU threads shared out among the workers
    return [{"variant": name, "seed": ctx.seed + s, "eval_seed": ctx.seed, "model": sc.abl_model,
             "model_overrides": over, "train": train, "steps": sc.abl_steps,
             "minutes": ctx.minutes if ctx.minutes is not None else sc.abl_minutes, "batch": sc.abl_batch,
             "precision": ctx.precision, "device": str(ctx.device), "dataset": sc.dataset,
             "subset": sc.data_subset, "n": sc.abl_n, "real_n": sc.real_n, "threads": threads,
             "classifier": str(classifier_path) if classifier_path else None}
            for name, (over, train) in VARIANTS.items() for s in sc.abl_seeds]


def train_and_score(spec: dict) -> dict:
    """Train one variant with one seed, then sample and judge it (runs in a worker process with --jobs)."""
    torch.set_num_threads(spec["threads"])
    cfg = TrainConfig(model=spec["model"], model_overrides=spec["model_overrides"], batch_size=spec["batch"],
                      max_steps=spec["steps"], max_minutes=spec["minutes"], precision=spec["precision"],
                      device=spec["device"], seed=spec["seed"], sample_every=0, dataset=spec["dataset"],
                      subset=spec["subset"], **spec["train"])
    trainer = Trainer(cfg)
    device = trainer.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses, start = [], time.perf_counter()
    deadline = start + spec["minutes"] * 60
    while trainer.step_count < spec["steps"] and time.perf_counter() < deadline:
        losses.append(trainer.step()["loss"])
    seconds = time.perf_counter() - start
    c = trainer.model.config
    n_ng, n_g = worst_case_draw(cfg)
    mem = estimate_step_memory(c, spec["batch"], n_no_grad=n_ng, n_grad=n_g)
    row = {"variant": spec["variant"], "seed": spec["seed"], "pre_post": f"{c.pre_depth}/{c.post_depth}",
           "method": cfg.gradient, "no_grad_iters": cfg.no_grad_iters, "grad_iters": cfg.grad_iters,
           "params": mem["params"], "steps": len(losses), "target_steps": spec["steps"], "seconds": seconds,
           "steps_per_s": len(losses) / seconds, "final_loss": float(np.mean(losses[-max(1, len(losses) // 10):])),
           "loss_curve": _downsample(losses), "worst_case_draw": [n_ng, n_g],
           "worst_case_memory_bytes": mem["total_bytes"],
           "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}
    judge = classifier.load_classifier(spec["classifier"] or classifier.CLASSIFIER_PATH, device=device)
    sampler = SamplerConfig(budget=SAMPLE_STEPS * BLOCKS_PER_STEP, steps=SAMPLE_STEPS)
    scored = sample_and_score(trainer.ema, trainer.diffusion, sampler, judge, n=spec["n"],
                              seed=spec["eval_seed"], device=device)
    row.update(summary(scored, metrics.real_stats(judge, n=spec["real_n"])), sampler=sampler.to_dict())
    return {"row": row, "correct": scored.correct}


def train_all(specs: list[dict], jobs: int) -> list[dict]:
    """`train_and_score` of every spec, in order: in this process, or in `jobs` spawned worker processes."""
    if jobs == 1:
        return [train_and_score(spec) for spec in specs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(train_and_score, specs))


def _downsample(losses: list[float]) -> list[list[float]]:
    """[[step, mean loss over the steps since the previous point], ...] with at most LOSS_POINTS points."""
    edges = np.unique(np.linspace(0, len(losses), LOSS_POINTS + 1).astype(int))
    return [[int(b), float(np.mean(losses[a:b]))] for a, b in zip(edges[:-1], edges[1:])]


def compare(runs: dict[tuple[str, int], dict], better: str, other: str, seeds: list[int]) -> dict:
    """Paired accuracy difference pooled over seeds (same labels and noise in every run), and per seed."""
    a = np.concatenate([runs[better, s]["correct"] for s in seeds]).astype(float)
    b = np.concatenate([runs[other, s]["correct"] for s in seeds]).astype(float)
    diff, lo, hi = paired_diff_ci(a, b)
    per_seed = [float(runs[better, s]["correct"].mean() - runs[other, s]["correct"].mean()) for s in seeds]
    return {"metric": "accuracy", "diff": diff, "ci": [lo, hi], "n": len(a), "per_seed_diff": per_seed}


def run(ctx: Context) -> Path:
    started, sc = time.perf_counter(), ctx.scale
    specs = run_specs(ctx, ctx.classifier_path)
    log(f"ablations: {len(specs)} runs ({len(VARIANTS)} variants x {len(sc.abl_seeds)} seeds) of {sc.abl_model}, "
        f"{sc.abl_steps} steps each (cap {specs[0]['minutes']:.2f} min), {ctx.jobs} at a time on {ctx.device}")
    done = train_all(specs, ctx.jobs)
    runs = {(spec["variant"], spec["seed"]): d for spec, d in zip(specs, done)}
    for d in done:
        r = d["row"]
        log(f"ablations: {r['variant']} seed {r['seed']}: {r['steps']} steps in {r['seconds']:.0f} s, "
            f"accuracy {r['accuracy']:.3f}")
    seeds = [ctx.seed + s for s in sc.abl_seeds]
    rows = [d["row"] for d in done]
    comparisons = [{"claim": claim, "better": better, "other": other, **compare(runs, better, other, seeds)}
                   for claim, better, other in COMPARISONS]
    for c in comparisons:  # for readers of the JSON; the report judges the numbers again
        c["verdict"], c["why"] = (SMOKE, "") if sc.name in SMOKE_MODES else judge(c, rows)
    plot(ctx, rows)
    settings = {"model": sc.abl_model, "steps_each": sc.abl_steps, "minutes_cap": specs[0]["minutes"],
                "batch": sc.abl_batch, "seeds": seeds, "precision": ctx.precision, "device": str(ctx.device),
                "jobs": ctx.jobs, "dataset": sc.dataset + (f" (first {sc.data_subset})" if sc.data_subset else ""),
                "evaluation": f"EMA weights, {SAMPLE_STEPS} steps x {BLOCKS_PER_STEP} block evaluations, "
                              f"SamplerConfig defaults otherwise, n = {sc.abl_n} per run, same labels and noise "
                              f"in every run",
                "intervals": "95% paired bootstrap over images pooled across seeds (stats.py); per-seed "
                             "differences show the seed-to-seed spread",
                "min_n": MIN_N, "min_accuracy": MIN_ACCURACY, "chance": CHANCE,
                "memory": "analytic worst-case step (16 B/param + saved activations, meta device); CUDA: peak "
                          "allocated during training"}
    return write_result(ctx, NAME, settings, {"rows": rows, "comparisons": comparisons}, started)


def plot(ctx: Context, rows: list[dict]) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    cmap = plt.get_cmap("tab10")
    for i, v in enumerate(variants):
        for r in (r for r in rows if r["variant"] == v):
            steps, loss = zip(*r["loss_curve"]) if r["loss_curve"] else ((), ())
            axes[0].plot(steps, loss, color=cmap(i), lw=1, label=v if r["seed"] == rows[0]["seed"] else None)
    axes[0].set_xlabel("training step")
    axes[0].set_ylabel("training loss")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7)
    y = np.arange(len(variants))
    for j, key in enumerate(("accuracy", "fcd")):
        ax = axes[1 + j]
        for i, v in enumerate(variants):
            rs = [r for r in rows if r["variant"] == v]
            for k, r in enumerate(rs):
                off = (k - (len(rs) - 1) / 2) * 0.2
                err = None
                if key == "accuracy":
                    err = [[r["accuracy"] - r["accuracy_ci"][0]], [r["accuracy_ci"][1] - r["accuracy"]]]
                ax.errorbar([r[key]], [i + off], xerr=err, fmt="o", color=cmap(i), capsize=3)
        ax.set_yticks(y, variants if j == 0 else [""] * len(y), fontsize=8)
        ax.invert_yaxis()
    axes[1].axvline(MIN_ACCURACY, color="gray", ls="--", lw=0.8, label=f"powered above {MIN_ACCURACY}")
    axes[1].axvline(0.1, color="k", ls=":", lw=0.8, label="chance")
    axes[1].set_xlabel("class accuracy of samples (95% CI), one point per seed")
    axes[1].legend(fontsize=7, loc="lower right")
    axes[2].set_xlabel("FCD (lower is better)")
    mem = [max(r["worst_case_memory_bytes"] for r in rows if r["variant"] == v) / MiB for v in variants]
    axes[3].barh(y, mem, color=[cmap(i) for i in range(len(variants))])
    axes[3].set_yticks(y, [""] * len(y))
    axes[3].invert_yaxis()
    axes[3].set_xlabel("worst-case training step memory (MiB, analytic)")
    fig.suptitle(f"ablations: {rows[0]['target_steps']} training steps each, {ctx.scale.abl_model}", fontsize=10)
    fig.tight_layout()
    save_figure(ctx, NAME, fig)


def judge(c: dict, rows: list[dict]) -> tuple[str, str]:
    """(status, why) of one comparison: the CI rule; underpowered near chance or with few samples; seeds that
    must agree; a design that must be equal steps (every run reached its target) or equal time (the cap ended
    every run)."""
    runs = [r for r in rows if r["variant"] in (c["better"], c["other"])]
    problem = power_problem(c["n"], [r["accuracy"] for r in runs], [r["accuracy_ci"][0] for r in runs])
    status = verdict(*c["ci"], higher_is_better=True, powered=not problem)
    if problem:
        return status, problem
    capped = [r["steps"] < r["target_steps"] for r in runs]
    steps = ", ".join(f"{r['variant']} {r['steps']}" for r in runs)
    if any(capped) and not all(capped):
        return "inconclusive", f"some runs stopped at the time cap and others did not ({steps} steps)"
    design = f"equal training time: the time cap ended every run ({steps} steps)" if all(capped) else "equal steps"
    if status in ("reproduced", "not reproduced") and len({np.sign(d) for d in c["per_seed_diff"]}) > 1:
        return "inconclusive", f"{design}; the seeds disagree in sign"
    return status, design


def verdicts(data: dict) -> list[dict]:
    comps = data["results"].get("comparisons")
    if comps is None:  # results written before comparisons were recorded
        return [finding("inconclusive (underpowered)", claim, f"{claim}: this ablations.json has no paired "
                        "comparisons (an older format); rerun `python -m fpdm_core.bench ablations`.")
                for claim, _, _ in COMPARISONS]
    out = []
    for c in comps:
        status, why = judge(c, data["results"]["rows"])
        lo, hi = c["ci"]
        out.append(finding(status, c["claim"],
                           f"{c['better']} minus {c['other']}: accuracy {c['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] (95% "
                           f"CI, paired, n = {c['n']}; per seed "
                           f"{', '.join(f'{d:+.3f}' for d in c['per_seed_diff'])})"
                           + f"; {why}: {status}."))
    rows = data["results"]["rows"]
    mem = {v: max(r["worst_case_memory_bytes"] for r in rows if r["variant"] == v) for v in (BASELINE, "full backprop")}
    speed = {v: np.mean([r["steps_per_s"] for r in rows if r["variant"] == v]) for v in mem}
    out.append(finding("measured", "full backprop costs memory and time",
                       f"Backprop through all iterations needs {mem['full backprop'] / mem[BASELINE]:.1f}x S-JFB's "
                       f"worst-case step memory ({mib(mem['full backprop'])} vs {mib(mem[BASELINE])}, analytic) and "
                       f"runs at {speed['full backprop'] / speed[BASELINE]:.2f}x its steps/s."))
    return out


def section(data: dict) -> str:
    rows = data["results"]["rows"]
    if "variant" not in rows[0]:  # results written before variants x seeds
        return "(an older ablations.json: rerun `python -m fpdm_core.bench ablations` for this table)"
    lines = ["| variant | seed | pre/post | method | params | steps | s | steps/s | final loss | accuracy [95% CI] "
             "| FCD | worst-case step memory | CUDA peak |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lo, hi = r["accuracy_ci"]
        lines.append(f"| {r['variant']} | {r['seed']} | {r['pre_post']} | {r['method']} | {r['params'] / 1e6:.2f}M | "
                     f"{r['steps']} | {r['seconds']:.0f} | {r['steps_per_s']:.2f} | {r['final_loss']:.4f} | "
                     f"{r['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] | {r['fcd']:.2f} | "
                     f"{mib(r['worst_case_memory_bytes'])} | {mib(r['peak_memory_bytes'])} |")
    return "\n".join(lines)
