"""Parameters of FPDM vs DiT for every preset incl. XL/2, counted on the meta device (instant)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..models import PRESETS, ModelConfig, build_model, count_parameters
from .harness import PAPER, Context, finding, pyplot, save_figure, write_result

NAME = "params"
TITLE = "Parameters"
CLAIMS = ["FPDM-XL/2 has 87% fewer parameters than DiT-XL/2."]

PARAM_PAIRS = (("FPDM-tiny", "DiT-tiny"), ("FPDM-FM-S", "DiT-FM-S"), ("FPDM-FM-M", "DiT-FM-M"),
               ("FPDM-XL/2", "DiT-XL/2"))


def param_breakdown(config: ModelConfig | str, **overrides) -> dict[str, int]:
    """Parameters per top-level part of a model (meta device)."""
    with torch.device("meta"):
        model = build_model(config, **overrides)
    parts: dict[str, int] = {}
    for name, p in model.named_parameters():
        part = name.split(".")[0]
        part = "fixed_point" if part.startswith("block_fixed_point") else part
        parts[part] = parts.get(part, 0) + p.numel()
    return parts


def run(ctx: Context) -> Path:
    started = time.perf_counter()
    rows = []
    for fpdm, dit in PARAM_PAIRS:
        pf, pd = count_parameters(fpdm), count_parameters(dit)
        rows.append({"fpdm": fpdm, "dit": dit, "fpdm_params": pf, "dit_params": pd,
                     "reduction_pct": 100 * (1 - pf / pd), "dit_depth": PRESETS[dit].depth,
                     "pre_post": f"{PRESETS[fpdm].pre_depth}/{PRESETS[fpdm].post_depth}"})
    pd = rows[-1]["dit_params"]  # DiT-XL/2
    for k in (2, 4):  # the paper's other XL/2 splits
        pf = count_parameters("FPDM-XL/2", pre_depth=k, post_depth=k)
        rows.append({"fpdm": f"FPDM-XL/2 ({k}/{k})", "dit": "DiT-XL/2", "fpdm_params": pf, "dit_params": pd,
                     "reduction_pct": 100 * (1 - pf / pd), "pre_post": f"{k}/{k}", "dit_depth": 28})
    breakdown = {name: param_breakdown(name) for name in ("FPDM-XL/2", "DiT-XL/2")}
    plot(ctx, rows)
    return write_result(ctx, NAME, {"counted_on": "meta device (no weights allocated)"},
                        {"pairs": rows, "breakdown": breakdown}, started)


def plot(ctx: Context, rows: list[dict]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["dit_params"] for r in rows], 0.4, label="DiT", color="#888")
    ax.bar(x + 0.2, [r["fpdm_params"] for r in rows], 0.4, label="FPDM", color="#2a7ab9")
    for i, r in enumerate(rows):
        ax.text(i + 0.2, r["fpdm_params"] * 1.15, f"-{r['reduction_pct']:.1f}%", ha="center", fontsize=8)
    ax.set_xticks(x, [r["fpdm"].replace("FPDM-", "") for r in rows], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("parameters")
    ax.set_title("Parameters: FPDM vs DiT of the same width (label: reduction)")
    ax.legend()
    fig.tight_layout()
    save_figure(ctx, NAME, fig)


def verdicts(data: dict) -> list[dict]:
    """An exact count (no sampling noise): reproduced when the reduction rounds to the paper's 87%."""
    xl = next(r for r in data["results"]["pairs"] if r["fpdm"] == "FPDM-XL/2")
    red = xl["reduction_pct"]
    status = "reproduced" if round(red) == PAPER["param_reduction_pct"] else "not reproduced"
    return [finding(status, "87% fewer parameters than DiT-XL/2",
                    f"FPDM-XL/2 has {red:.1f}% fewer parameters than DiT-XL/2 ({xl['fpdm_params'] / 1e6:.1f}M vs "
                    f"{xl['dit_params'] / 1e6:.1f}M; paper: 87%; an exact count): {status}.")]


def section(data: dict) -> str:
    lines = ["| FPDM | DiT | pre/post | FPDM params | DiT params | reduction |", "|---|---|---|---:|---:|---:|"]
    for r in data["results"]["pairs"]:
        lines.append(f"| {r['fpdm']} | {r['dit']} | {r['pre_post']} | {r['fpdm_params'] / 1e6:.2f}M | "
                     f"{r['dit_params'] / 1e6:.2f}M | {r['reduction_pct']:.1f}% |")
    return "\n".join(lines)
