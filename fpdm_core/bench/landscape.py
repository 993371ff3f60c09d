"""Quality landscape: the shipped FPDM over timesteps S x fixed-point iterations per step K, and the best split per budget.

A step costs pre + K + post block evaluations, so a budget B is an iso-line S (pre + K + post) = B
through the grid. The grid, the timestep-smoothing rule at several `min_iterations`, and DiT at
each budget are all measured on the *selection* seed set; the best split per budget is chosen
there (lowest FCD) and the `headline` benchmark reports it on a disjoint seed set, so the choice
carries no selection bias into the reported numbers.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..sampling import SamplerConfig, plan_for
from .harness import Context, finding, load_checkpoint_model, log, pyplot, save_figure, write_result
from .points import SELECTION_SEED, Evaluator, metric_info

NAME = "landscape"
TITLE = "Quality landscape: timesteps x iterations"
CLAIMS = ["Timestep smoothing: at a fixed budget, more timesteps with fewer iterations each give better images."]
SELECT_BY = "fcd"  # metric the best split is chosen by (lower is better)
SETTINGS = {
    "full": dict(steps=(1, 2, 3, 5, 8, 12, 20, 32, 48), iterations=(1, 2, 3, 4, 6, 8, 12),
                 coarse_steps=(2, 5, 12, 32), coarse_iterations=(1, 2, 4, 8), budgets=(1, 2, 3, 4, 5, 7, 10, 20, 40),
                 rules=(1, 2, 3, 4, 6), n=500, n_boot=500),
    "quick": dict(steps=(1, 2, 5, 12), iterations=(1, 2, 4), coarse_steps=(2, 5), coarse_iterations=(1, 4),
                  budgets=(1, 2, 5, 10), rules=(1, 2, 4), n=100, n_boot=200),
    "tiny": dict(steps=(1, 2), iterations=(1, 2), coarse_steps=(1,), coarse_iterations=(1,), budgets=(1, 2),
                 rules=(1, 2), n=20, n_boot=20),
}
GRIDS = (("ddim-g3-reuse", dict(step="ddim", reuse=True), False),  # (name, sampler fields, coarse)
         ("ddpm-g3-reuse", dict(step="ddpm", reuse=True), True),
         ("ddim-g3-noreuse", dict(step="ddim", reuse=False), True))


def run(ctx: Context) -> Path:
    started, st = time.perf_counter(), SETTINGS[ctx.scale.name]
    fpdm, fpdm_path = load_checkpoint_model(ctx, "fpdm")
    dit, dit_path = load_checkpoint_model(ctx, "dit")
    ev = Evaluator(ctx, st["n_boot"])
    n, seed, cfg_scale = st["n"], SELECTION_SEED + ctx.seed, SamplerConfig().cfg_scale
    pre, post, depth = fpdm.config.pre_depth, fpdm.config.post_depth, dit.config.depth
    grids = []
    for name, fields, coarse in GRIDS:
        steps, iters = (st["coarse_steps"], st["coarse_iterations"]) if coarse else (st["steps"], st["iterations"])
        cells = []
        for s in steps:
            for k in iters:
                log(f"landscape {name}: {s} steps x {k} iterations, n={n}")
                _, row = ev.measure(fpdm, SamplerConfig(steps=s, iterations=k, **fields), n, seed)
                cells.append({**row, "steps": s, "iterations": k, "block_evals": s * (pre + k + post)})
        grids.append({"name": name, **fields, "cfg_scale": cfg_scale, "n": n, "steps": list(steps),
                      "iterations": list(iters), "cells": cells})
    rules, seen = [], {}
    for b in st["budgets"]:
        for m in st["rules"]:
            cfg = SamplerConfig(budget=b * depth, min_iterations=m)
            try:
                plan = plan_for(fpdm, cfg, ev.diffusion.num_timesteps)
            except ValueError as e:
                rules.append({"budget_dit_steps": b, "min_iterations": m, "skipped": str(e)})
                continue
            key = (plan.steps, tuple(plan.iterations))
            if key not in seen:
                log(f"landscape rule: budget {b} DiT steps, min_iterations {m} -> {plan.steps} steps")
                seen[key] = ev.measure(fpdm, cfg, n, seed)[1]
            rules.append({"budget_dit_steps": b, "budget": b * depth, "min_iterations": m, **seen[key]})
    dits = []
    for b in st["budgets"]:
        log(f"landscape DiT: {b} steps")
        _, row = ev.measure(dit, SamplerConfig(steps=b), n, seed)
        dits.append({"step": "ddim", "cfg_scale": cfg_scale, "block_evals": b * depth, **row})
    main = grids[0]
    best = best_splits(main["cells"], rules, st["budgets"], depth)
    results = {"metrics": metric_info(), "grids": grids, "rules": rules, "dit": dits, "best": best,
               "fpdm": {"pre_depth": pre, "post_depth": post}, "dit_depth": depth, "select_by": SELECT_BY}
    plot(ctx, results)
    settings = {"fpdm": str(fpdm_path), "dit": str(dit_path), **st, "seed_set": "selection", "seed": seed,
                "sampler": SamplerConfig().to_dict(), "select_by": SELECT_BY}
    return write_result(ctx, NAME, settings, results, started)


def _value(row: dict, metric: str = SELECT_BY) -> float:
    v = row["metrics"][metric]["value"]
    return np.inf if v is None else v


def best_splits(cells: list[dict], rules: list[dict], budgets, depth: int) -> list[dict]:
    """Per budget: the measured split (grid cell or rule) within the budget with the best SELECT_BY."""
    out = []
    for b in budgets:
        cands = [{"source": "grid", **c} for c in cells if c["block_evals"] <= b * depth]
        cands += [{"source": f"rule, min_iterations {r['min_iterations']}", **r} for r in rules
                  if r.get("budget_dit_steps") == b and "skipped" not in r]
        if not cands:
            out.append({"budget_dit_steps": b, "budget": b * depth, "best": None})
            continue
        win = min(cands, key=_value)
        rule2 = next((r for r in rules if r.get("budget_dit_steps") == b and r["min_iterations"] == 2
                      and "skipped" not in r), None)
        out.append({"budget_dit_steps": b, "budget": b * depth, "best": {
            "source": win["source"], "steps": win["steps"], "iterations": win["iterations"],
            "block_evals": win["block_evals"], "metrics": win["metrics"]},
            "rule_default": None if rule2 is None else {"steps": rule2["steps"], "metrics": rule2["metrics"]}})
    return out


def best_min_iterations(rules: list[dict], values) -> dict:
    """The timestep-smoothing `min_iterations` a default should use, judged over every budget by SELECT_BY.

    `best` minimises the mean relative regret (value / best value at that budget - 1), so a choice
    that fails badly at one budget pays for it; the mean rank, which ignores how large a loss is,
    is reported beside it.
    """
    ranks, regrets = {m: [] for m in values}, {m: [] for m in values}
    for b in sorted({r["budget_dit_steps"] for r in rules}):
        at = [r for r in rules if r["budget_dit_steps"] == b and "skipped" not in r]
        if len(at) < 2:
            continue
        order = sorted(at, key=_value)
        for r in at:
            ranks[r["min_iterations"]].append(order.index(r))
            regrets[r["min_iterations"]].append(_value(r) / _value(order[0]) - 1)
    mean_rank = {m: float(np.mean(v)) for m, v in ranks.items() if v}
    mean_regret = {m: float(np.mean(v)) for m, v in regrets.items() if v}
    return {"mean_rank": mean_rank, "mean_regret": mean_regret,
            "best_by_rank": min(mean_rank, key=lambda m: (mean_rank[m], m)) if mean_rank else None,
            "best": min(mean_regret, key=lambda m: (mean_regret[m], m)) if mean_regret else None}


def plot(ctx: Context, r: dict) -> None:
    plt = pyplot()
    main = r["grids"][0]
    pre_post = r["fpdm"]["pre_depth"] + r["fpdm"]["post_depth"]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.2))
    for ax, metric in zip(axes[:2], ("accuracy", "fcd")):
        info = r["metrics"][metric]
        vals = [c["metrics"][metric]["value"] for c in main["cells"]] + [d["metrics"][metric]["value"] for d in r["dit"]]
        vmin, vmax = np.nanmin(vals), np.nanmax(vals)
        cmap = "viridis" if info["higher_is_better"] else "viridis_r"
        sc = ax.scatter([c["steps"] for c in main["cells"]], [c["iterations"] for c in main["cells"]],
                        c=[c["metrics"][metric]["value"] for c in main["cells"]], cmap=cmap, vmin=vmin, vmax=vmax,
                        marker="s", s=420, edgecolors="none")
        ks = np.linspace(0.8, max(main["iterations"]) * 1.1, 100)
        for d in r["dit"]:
            s_line = d["block_evals"] / (ks + pre_post)
            ax.plot(s_line, ks, color="gray", lw=0.7, ls="--")
            ax.scatter([s_line[-1]], [ks[-1]], c=[d["metrics"][metric]["value"]], cmap=cmap, vmin=vmin, vmax=vmax,
                       marker="o", s=90, edgecolors="k")
            ax.annotate(f"{d['steps']} DiT", (s_line[-1], ks[-1]), textcoords="offset points", xytext=(0, 8),
                        fontsize=7, ha="center")
        for bsp in r["best"]:
            if bsp["best"] is not None:
                ax.plot(bsp["best"]["steps"], np.mean(bsp["best"]["iterations"]), marker="*", color="red", ms=11,
                        ls="none")
        ax.set_xscale("log")
        ax.set_xticks(main["steps"], [str(s) for s in main["steps"]])
        ax.minorticks_off()
        ax.set_xlim(min(main["steps"]) * 0.7, max(main["steps"]) * 1.4)
        ax.set_xlabel("timesteps S")
        ax.set_ylabel("fixed-point iterations per step K")
        ax.set_title(f"{info['label']} ({main['name']}, n={main['n']})\n"
                     "dashed: iso-budget lines through DiT's budgets (circles: DiT there); star: best split", fontsize=9)
        fig.colorbar(sc, ax=ax)
    ax = axes[2]
    budgets = [b["budget_dit_steps"] for b in r["best"]]
    _band(ax, budgets, [d["metrics"]["fcd"] for d in r["dit"]], "DiT", "k")
    _band(ax, [b["budget_dit_steps"] for b in r["best"] if b["best"]],
          [b["best"]["metrics"]["fcd"] for b in r["best"] if b["best"]], "FPDM, best split (selection set)", "C3")
    _band(ax, [b["budget_dit_steps"] for b in r["best"] if b.get("rule_default")],
          [b["rule_default"]["metrics"]["fcd"] for b in r["best"] if b.get("rule_default")],
          "FPDM, smoothing rule (min_iterations 2)", "C0")
    ax.set_xscale("log")
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("budget (DiT-step equivalents)")
    ax.set_ylabel("FCD (lower is better), 95% CI")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(ctx, NAME, fig)


def _band(ax, xs, ms: list[dict], label: str, color: str) -> None:
    if not xs:
        return
    ax.plot(xs, [m["value"] for m in ms], marker="o", color=color, label=label)
    ax.fill_between(xs, [m["lo"] for m in ms], [m["hi"] for m in ms], color=color, alpha=0.15)


def verdicts(data: dict) -> list[dict]:
    r = data["results"]
    m = best_min_iterations(r["rules"], data["settings"]["rules"])["best"]
    wins = ", ".join(f"{b['budget_dit_steps']}: {b['best']['steps']} x {_k(b['best']['iterations'])}"
                     for b in r["best"] if b["best"])
    return [finding("measured", f"best split S x K per budget in DiT steps (selection seeds, lowest FCD): {wins}; "
                    f"timestep smoothing's best min_iterations: {m}", "chosen on the selection seed set; the headline "
                    "benchmark reports these splits on a disjoint seed set")]


def section(data: dict) -> str:
    r = data["results"]
    lines = [f"Selection seed set (seed {data['settings']['seed']}, n = {r['grids'][0]['n']} per point); the "
             f"headline benchmark reports the chosen splits on a disjoint seed set. Chosen by {r['select_by']}.", "",
             "| budget (DiT steps) | best split S x K | source | FCD [95% CI] | accuracy [95% CI] | "
             "rule (min_iterations 2): S | rule FCD |", "|---|---|---|---|---|---|---|"]
    for b in r["best"]:
        if b["best"] is None:
            lines.append(f"| {b['budget_dit_steps']} | none fits | | | | | |")
            continue
        w, rd = b["best"], b.get("rule_default")
        lines.append(f"| {b['budget_dit_steps']} | {w['steps']} x {_k(w['iterations'])} | {w['source']} | "
                     f"{_ci(w['metrics']['fcd'], '.1f')} | {_ci(w['metrics']['accuracy'])} | "
                     f"{rd['steps'] if rd else 'n/a'} | {_ci(rd['metrics']['fcd'], '.1f') if rd else 'n/a'} |")
    mr = best_min_iterations(r["rules"], data["settings"]["rules"])
    lines += ["", "Timestep-smoothing rule, `min_iterations` judged over all budgets by "
              f"{r['select_by']} (selection seeds): mean relative regret "
              + ", ".join(f"{m}: {v:.3f}" for m, v in mr["mean_regret"].items()) + f" (best {mr['best']}); mean rank "
              + ", ".join(f"{m}: {v:.2f}" for m, v in mr["mean_rank"].items()) + f" (best {mr['best_by_rank']}). "
              "The kit's default (`budget.SMOOTHING_MIN_ITERATIONS`) follows the regret: a default must not fail "
              "badly at any budget."]
    return "\n".join(lines)


def _k(iterations) -> str:
    its = iterations if isinstance(iterations, list) else [iterations]
    return str(its[0]) if len(set(its)) == 1 else f"{min(its)}-{max(its)}"


def _ci(m: dict, fmt: str = ".3f") -> str:
    return "n/a" if m["value"] is None else f"{m['value']:{fmt}} [{m['lo']:{fmt}}, {m['hi']:{fmt}}]"
