"""Affordable timesteps vs sampling budget: DiT of depth 8 / 16 / 28 against FPDM (1 pre + 1 post block,
K iterations per step), from budget.CostModel alone (no sampling, no quality numbers).

The fixed-point block replaces the depth DiT would spend per step: FPDM affords depth / (2 + K)
times DiT's timesteps at an equal count of block evaluations, less at equal FLOPs (an iteration
costs more than a block). Widths are FM-M's (the kit's shipped models).
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..budget import CostModel
from ..models import PRESETS
from .harness import PAPER, Context, finding, pyplot, save_figure, write_result

NAME = "depth"
TITLE = "The depth the fixed-point block replaces"
CLAIMS = ["FPDM's advantage comes from spending the depth of DiT on more timesteps: the deeper the DiT it "
          "replaces, the more timesteps FPDM affords at the same budget (the paper replaces 26 of DiT-XL/2's 28 "
          "blocks; FM-M replaces 6 of 8)."]

DIT_DEPTHS = (8, 16, 28)
ITERATIONS = (1, 2, 4)
TABLE_BUDGETS = (28, 56, 112, 140, 280, 560, 1120)  # block evaluations (560 = the paper's 20 DiT-XL/2 steps)


def costs() -> tuple[dict[int, CostModel], CostModel]:
    """({DiT depth: cost}, FPDM cost) at FM-M width."""
    dit = {d: CostModel.of(replace(PRESETS["DiT-FM-M"], depth=d)) for d in DIT_DEPTHS}
    return dit, CostModel.of(PRESETS["FPDM-FM-M"])


def affordable_steps(cost: CostModel, budget: int, iterations: int = 0) -> int:
    """Timesteps that fit `budget` block evaluations at `iterations` per step (0 for DiT)."""
    return budget // cost.step_block_evals(iterations)


def run(ctx: Context) -> Path:
    started = time.perf_counter()
    dit, fpdm = costs()
    budgets = [int(b) for b in np.unique(np.geomspace(8, 1120, 80).astype(int))]
    curves = {f"DiT-{d}": [affordable_steps(c, b) for b in budgets] for d, c in dit.items()}
    curves |= {f"FPDM K={k}": [affordable_steps(fpdm, b, k) for b in budgets] for k in ITERATIONS}
    table = [{"budget": b, **{f"DiT-{d}": affordable_steps(c, b) for d, c in dit.items()},
              **{f"FPDM K={k}": affordable_steps(fpdm, b, k) for k in ITERATIONS}} for b in TABLE_BUDGETS]
    ratios = [{"dit_depth": d, "iterations": k,
               "block_eval_ratio": c.step_block_evals() / fpdm.step_block_evals(k),
               "flop_ratio": c.step_flops() / fpdm.step_flops(k)} for d, c in dit.items() for k in ITERATIONS]
    results = {"budgets": budgets, "curves": curves, "table": table, "ratios": ratios,
               "costs": {**{f"DiT-{d}": vars(c) for d, c in dit.items()}, "FPDM": vars(fpdm)}}
    plot(ctx, results)
    settings = {"width": "FM-M (hidden 192, 49 tokens)", "fpdm": "1 pre + 1 post block",
                "source": "budget.CostModel (block evaluations; FLOPs with multiply-add = 2)"}
    return write_result(ctx, NAME, settings, results, started)


def plot(ctx: Context, r: dict) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    greys = dict(zip(DIT_DEPTHS, ("#bbb", "#777", "#222")))
    blues = dict(zip(ITERATIONS, ("#9ecae1", "#4292c6", "#08519c")))
    for name, steps in r["curves"].items():
        kind, n = name.split("-") if name.startswith("DiT") else name.split(" K=")
        color = greys[int(n)] if kind == "DiT" else blues[int(n)]
        shown = [n if n > 0 else np.nan for n in steps]  # no step fits: nothing to draw on a log axis
        axes[0].step(r["budgets"], shown, where="post", color=color, lw=1.6, ls="-" if kind == "DiT" else "--",
                     label=name)
    axes[0].axvline(560, color="gray", lw=0.6)
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    ticks = [1, 2, 5, 10, 20, 50, 100, 200]
    axes[0].set_yticks(ticks, [str(t) for t in ticks])
    axes[0].set_xticks([10, 28, 56, 140, 280, 560, 1120], ["10", "28", "56", "140", "280", "560", "1120"])
    axes[0].minorticks_off()
    axes[0].set_xlabel("budget (block evaluations per image)")
    axes[0].set_ylabel("affordable timesteps")
    axes[0].set_title("timesteps that fit a budget (line: 560 = 20 DiT-XL/2 steps)", fontsize=9)
    axes[0].legend(fontsize=8)
    x = np.arange(len(DIT_DEPTHS))
    for i, k in enumerate(ITERATIONS):
        rows = [q for q in r["ratios"] if q["iterations"] == k]
        axes[1].bar(x + (i - 1) * 0.27, [q["block_eval_ratio"] for q in rows], 0.27, color=blues[k],
                    label=f"K={k}, equal block evaluations")
        axes[1].scatter(x + (i - 1) * 0.27, [q["flop_ratio"] for q in rows], color="k", marker="_", s=200,
                        label="equal FLOPs (FM-M width)" if i == 0 else None, zorder=3)
    axes[1].axhline(1, color="k", lw=0.8, ls=":")
    axes[1].set_xticks(x, [f"DiT depth {d}" for d in DIT_DEPTHS])
    axes[1].set_ylabel("FPDM timesteps / DiT timesteps")
    axes[1].set_title("timestep advantage grows with the depth replaced", fontsize=9)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    save_figure(ctx, NAME, fig)


def verdicts(data: dict) -> list[dict]:
    """Arithmetic on the cost model: measured, not judged."""
    rs = data["results"]["ratios"]
    out = []
    for k in ITERATIONS:
        rows = sorted((q for q in rs if q["iterations"] == k), key=lambda q: q["dit_depth"])
        out.append(finding("measured", f"timesteps afforded vs DiT depth (K = {k})",
                           f"At an equal budget FPDM with {k} iteration{'s' if k > 1 else ''} per step affords "
                           + ", ".join(f"{q['block_eval_ratio']:.2f}x the timesteps of DiT-{q['dit_depth']} "
                                       f"({q['flop_ratio']:.2f}x at equal FLOPs)" for q in rows) + "."))
    paper = next((t for t in data["results"]["table"] if t["budget"] == 20 * 28), None)
    if paper:
        out.append(finding("measured", "the paper's budget",
                           f"At {paper['budget']} block evaluations ({PAPER['dit_steps']} DiT-28 steps): "
                           + ", ".join(f"{k} {v}" for k, v in paper.items() if k != "budget") + " timesteps."))
    return out


def section(data: dict) -> str:
    table = data["results"]["table"]
    cols = [k for k in table[0] if k != "budget"]
    lines = ["Affordable timesteps per budget (block evaluations per image):", "",
             "| budget | " + " | ".join(cols) + " |", "|---:|" + "---:|" * len(cols)]
    lines += [f"| {t['budget']} | " + " | ".join(str(t[c]) for c in cols) + " |" for t in table]
    lines += ["", "FPDM timesteps / DiT timesteps at an equal budget (block evaluations; FLOPs):", "",
              "| DiT depth | " + " | ".join(f"K={k}" for k in ITERATIONS) + " |", "|---:|" + "---:|" * len(ITERATIONS)]
    for d in DIT_DEPTHS:
        qs = {q["iterations"]: q for q in data["results"]["ratios"] if q["dit_depth"] == d}
        lines.append(f"| {d} | " + " | ".join(f"{qs[k]['block_eval_ratio']:.2f}; {qs[k]['flop_ratio']:.2f}"
                                              for k in ITERATIONS) + " |")
    return "\n".join(lines)
