"""Quality under a sampling budget: class accuracy and FCD of DiT and FPDM variants vs budget.

Variants at each budget (in DiT-step equivalents = block evaluations / DiT depth): DiT, FPDM as
trained, timestep smoothing, solution reuse, both, allocation schedules, adaptive and Anderson.
Needs the checkpoints and the classifier.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import classifier, metrics
from ..data import load_fashion_mnist
from ..sampling import SamplerConfig, plan_for
from ..stats import verdict
from .harness import (Context, PAPER, bench_diffusion, finding, load_checkpoint_model, load_judge, log, pyplot,
                      save_figure, write_result)
from .scoring import CHANCE, MIN_ACCURACY, MIN_N, paired_accuracy, power_problem, sample_and_score, summary

NAME = "quality"
TITLE = "Quality under a sampling budget"
CLAIMS = ["FPDM gives better images than DiT when sampling compute is limited (paper: 20 DiT steps = 560 block "
          "evaluations for XL/2).", "Timestep smoothing and solution reuse improve FPDM at an equal budget."]


def quality_variants(k: int) -> list[tuple[str, str, dict]]:
    """(name, model kind, SamplerConfig fields) at a budget of k DiT steps."""
    both = dict(reuse=True)
    return [
        ("DiT", "dit", dict(steps=k)),
        ("FPDM (as trained)", "fpdm", dict(steps=k, reuse=False)),
        ("FPDM + smoothing", "fpdm", dict(reuse=False)),
        ("FPDM + reuse", "fpdm", dict(steps=k, reuse=True)),
        ("FPDM + smoothing + reuse", "fpdm", both),
        ("FPDM + both, increasing", "fpdm", {**both, "allocation": "increasing"}),
        ("FPDM + both, decreasing", "fpdm", {**both, "allocation": "decreasing"}),
        ("FPDM + both, adaptive (tol 1e-3)", "fpdm", {**both, "allocation": "adaptive", "tol": 1e-3}),
        ("FPDM + both, Anderson", "fpdm", {**both, "solver": "anderson"}),
    ]


HEADLINE = "FPDM + smoothing + reuse"


def quality_reference(judge, n: int, seed: int, real_n: int = 10000) -> dict:
    """What real images score at the same n: the accuracy ceiling and the FCD floor (train vs test stats)."""
    x_test, y_test = load_fashion_mnist("test")
    x_train, _ = load_fashion_mnist("train")
    idx = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))[:n]
    mu, s = metrics.feature_stats(judge, x_train[idx])
    mu_r, s_r = metrics.real_stats(judge, n=real_n)
    return {"n": n, "accuracy": classifier.class_accuracy(judge, x_test[:n], y_test[:n]),
            "fcd": metrics.frechet_distance(mu, s, mu_r, s_r)}


COMPARISONS = (  # (claim, variant claimed better, baseline variant)
    ("better quality than DiT at limited compute", HEADLINE, "DiT"),
    ("timestep smoothing improves FPDM at equal budget", "FPDM + smoothing", "FPDM (as trained)"),
    ("solution reuse improves FPDM at equal budget", "FPDM + reuse", "FPDM (as trained)"),
)


def run(ctx: Context) -> Path:
    started, sc = time.perf_counter(), ctx.scale
    models = {kind: load_checkpoint_model(ctx, kind) for kind in ("fpdm", "dit")}
    judge = load_judge(ctx)
    real = metrics.real_stats(judge, n=sc.real_n)
    diffusion = bench_diffusion(ctx)
    depth = models["dit"][0].config.depth
    rows, comparisons = [], []
    for k in sc.budgets:
        budget, scored = k * depth, {}
        for name, kind, fields in quality_variants(k):
            row = {"variant": name, "kind": kind, "budget_dit_steps": k, "budget": budget}
            rows.append(row)
            cfg = SamplerConfig(budget=budget, **fields)
            try:
                plan = plan_for(models[kind][0], cfg, diffusion.num_timesteps)
            except ValueError as e:  # a budget too small for this variant
                row["skipped"] = str(e)
                continue
            log(f"quality: {name} at {k} DiT steps ({budget} block evaluations), n={sc.n_images}")
            scored[name] = sample_and_score(models[kind][0], diffusion, cfg, judge, n=sc.n_images,
                                            seed=ctx.seed, device=ctx.device)
            row.update(summary(scored[name], real), steps=plan.steps, iterations=plan.iterations,
                       sampler=cfg.to_dict())
        for claim, better, base in COMPARISONS:
            if better in scored and base in scored:
                comparisons.append({"claim": claim, "better": better, "baseline": base, "budget_dit_steps": k,
                                    "budget": budget, **paired_accuracy(scored[better], scored[base])})
    reference = quality_reference(judge, sc.n_images, ctx.seed, sc.real_n)
    plot(ctx, rows, reference)
    settings = {"fpdm": str(models["fpdm"][1]), "dit": str(models["dit"][1]), "n_images": sc.n_images,
                "budgets_dit_steps": list(sc.budgets), "dit_depth": depth,
                "sampler": f"SamplerConfig defaults (EMA weights): {SamplerConfig().to_dict()}",
                "classifier": str(ctx.classifier_path or classifier.CLASSIFIER_PATH), "headline_variant": HEADLINE,
                "intervals": "95% percentile bootstrap (stats.py); comparisons paired by label and seed",
                "min_n": MIN_N, "min_accuracy": MIN_ACCURACY, "chance": CHANCE}
    return write_result(ctx, NAME, settings, {"rows": rows, "comparisons": comparisons, "reference": reference},
                        started)


def plot(ctx: Context, rows: list[dict], reference: dict) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    cmap = plt.get_cmap("tab10")
    for i, v in enumerate(variants):
        rs = [r for r in rows if r["variant"] == v and r.get("fcd") is not None]
        if not rs:
            continue
        style = dict(marker="o", color="k" if v == "DiT" else cmap(i % 10), lw=2.2 if v in ("DiT", HEADLINE) else 1,
                     ls="-" if v in ("DiT", HEADLINE) or "both" not in v else ":", label=v)
        axes[0].plot([r["budget_dit_steps"] for r in rs], [r["fcd"] for r in rs], **style)
        err = [[r["accuracy"] - r["accuracy_ci"][0] for r in rs], [r["accuracy_ci"][1] - r["accuracy"] for r in rs]]
        axes[1].errorbar([r["budget_dit_steps"] for r in rs], [r["accuracy"] for r in rs], yerr=err, capsize=2,
                         **style)
        axes[2].plot([r["flops_per_image"] / 1e9 for r in rs], [r["fcd"] for r in rs], **style)
    axes[0].axhline(reference["fcd"], color="gray", ls="--", lw=0.8, label="real images (same n)")
    axes[1].axhline(reference["accuracy"], color="gray", ls="--", lw=0.8, label="real images")
    for ax, yl in zip(axes, ("FCD (lower is better)", "class accuracy (95% CI)", "FCD")):
        ax.set_ylabel(yl)
        ax.set_xscale("log")
    budgets = sorted({r["budget_dit_steps"] for r in rows})
    for ax in axes[:2]:
        if PAPER["dit_steps"] in budgets:
            ax.axvline(PAPER["dit_steps"], color="gray", lw=0.6)
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("budget (DiT-step equivalents = block evaluations / DiT depth)")
    axes[2].set_xlabel("GFLOPs per image (CostModel)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(ctx, NAME, fig)




def _row(rows: list[dict], variant: str, k: int) -> dict | None:
    """The evaluated quality row of a variant at a budget, or None."""
    return next((r for r in rows if r["variant"] == variant and r["budget_dit_steps"] == k
                 and r.get("fcd") is not None), None)


def judge_comparison(c: dict, rows: list[dict]) -> str:
    """stats.verdict on one paired comparison; underpowered when n is small or a model is near chance."""
    pair = [_row(rows, v, c["budget_dit_steps"]) for v in (c["better"], c["baseline"])]
    problem = power_problem(c["n"], [r["accuracy"] for r in pair], [r["accuracy_ci"][0] for r in pair])
    return verdict(*c["ci"], higher_is_better=True, powered=not problem)


def verdicts(data: dict) -> list[dict]:
    """Each claim judged at the paper's budget (20 DiT steps, else the largest below it) on class accuracy,
    paired over labels and seeds; the other budgets are listed."""
    rows, comps = data["results"]["rows"], data["results"].get("comparisons")
    if comps is None:  # results written before intervals were recorded
        return [finding("inconclusive (underpowered)", claim, f"{claim}: this quality.json holds no paired "
                        "intervals (an older format); rerun `python -m fpdm_core.bench quality`.")
                for claim, _, _ in COMPARISONS]
    out = []
    for claim, better, base in COMPARISONS:
        cs = sorted((c for c in comps if c["claim"] == claim), key=lambda c: c["budget_dit_steps"])
        if not cs:
            continue
        small = [c for c in cs if c["budget_dit_steps"] <= PAPER["dit_steps"]] or cs
        main = small[-1]
        status = judge_comparison(main, rows)
        b, a = (_row(rows, v, main["budget_dit_steps"]) for v in (better, base))
        lo, hi = main["ci"]
        out.append(finding(status, claim,
                           f"At {main['budget_dit_steps']} DiT steps of compute ({main['budget']} block evaluations), "
                           f"{better} vs {base}: accuracy {b['accuracy']:.3f} vs {a['accuracy']:.3f}, difference "
                           f"{main['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}] (95% CI, paired, n = {main['n']}); FCD "
                           f"{b['fcd']:.2f} vs {a['fcd']:.2f} (point values): {status}."))
        out.append(finding("measured", f"{claim}: every budget",
                           "Accuracy difference per budget (DiT steps): " + "; ".join(
                               f"{c['budget_dit_steps']}: {c['diff']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] "
                               f"{judge_comparison(c, rows)}" for c in cs) + "."))
    return out


def section(data: dict) -> str:
    rows = data["results"]["rows"]
    budgets = sorted({r["budget_dit_steps"] for r in rows})
    lines = ["FCD (class accuracy [95% CI]) per budget in DiT-step equivalents:", "",
             "| variant | " + " | ".join(str(b) for b in budgets) + " |", "|---|" + "---:|" * len(budgets)]
    for v in dict.fromkeys(r["variant"] for r in rows):
        cells = []
        for b in budgets:
            r = _row(rows, v, b)
            if r is None:
                cells.append("skipped")
                continue
            acc = f"{r['accuracy']:.2f}" + (f" [{r['accuracy_ci'][0]:.2f}, {r['accuracy_ci'][1]:.2f}]"
                                            if r.get("accuracy_ci") else "")
            cells.append(f"{r['fcd']:.2f} ({acc})")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    ref = data["results"]["reference"]
    lines.append(f"\nReal images at the same n = {ref['n']}: FCD {ref['fcd']:.2f} (train vs test), "
                 f"accuracy {ref['accuracy']:.2f}.")
    return "\n".join(lines)
