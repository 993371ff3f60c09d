"""The app's quality-landscape panel: where a split of steps x iterations lands on the measured landscape.

Pure functions over `figures/bench/landscape.json` (the `landscape` benchmark): `load_landscape`,
`pick_grid`, `find_cell`, `iso_budget_iterations`, `best_split`, `dit_at_budget`, then
`landscape_figure` and `landscape_answer` for the page, and `landscape_for_ui` straight from the
controls' raw values. No Gradio in here.
"""
from __future__ import annotations

import functools
import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .app_settings import MODE_FIELDS, ExploreError, Settings, plural, settings_from_ui
from .budget import CostModel, make_plan

LANDSCAPE_FILE = Path(__file__).resolve().parent.parent / "figures" / "bench" / "landscape.json"
LANDSCAPE_COMMAND = "python -m fpdm_core.bench landscape --quick"
LANDSCAPE_CONTROLS = ("budget_mode", "steps", "iterations", "budget", "min_iterations", "reuse", "step", "cfg_scale")


@dataclass(frozen=True)
class Landscape:
    """The measured quality of FPDM over (steps, iterations) grids and of DiT over steps (landscape.json)."""

    metrics: dict  # name -> {"label", "higher_is_better"}, display order
    grids: list  # [{"name", "step", "cfg_scale", "reuse", "n", "steps", "iterations", "cells"}]
    dit: list  # [{"step", "cfg_scale", "steps", "block_evals", "metrics"}]
    pre_depth: int
    post_depth: int
    dit_depth: int
    mode: str = ""

    @property
    def explicit_blocks(self) -> int:
        return self.pre_depth + self.post_depth


def load_landscape(path: str | Path = LANDSCAPE_FILE) -> Landscape:
    """Read a landscape file (schema: the lead's benchmark); FileNotFoundError if absent, ExploreError if malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no quality landscape yet: generate it with `{LANDSCAPE_COMMAND}`")
    try:
        doc = json.loads(path.read_text())
        r = doc["results"]
        ls = Landscape(dict(r["metrics"]), list(r["grids"]), list(r.get("dit", [])), int(r["fpdm"]["pre_depth"]),
                       int(r["fpdm"]["post_depth"]), int(r["dit_depth"]), str(doc.get("mode", "")))
        for g in ls.grids:
            g["steps"], g["iterations"] = sorted(map(int, g["steps"])), sorted(map(int, g["iterations"]))
            if not g["steps"] or not g["iterations"] or min(g["steps"] + g["iterations"]) < 1:
                raise ValueError(f"grid {g.get('name')} needs steps and iterations >= 1")
            for c in g["cells"]:
                c["steps"], c["iterations"], c["block_evals"] = int(c["steps"]), int(c["iterations"]), int(c["block_evals"])
            g["cfg_scale"], g["reuse"], g["step"] = float(g["cfg_scale"]), bool(g["reuse"]), _step_of(g)
        for d in ls.dit:
            d["steps"], d["block_evals"], d["cfg_scale"] = int(d["steps"]), int(d["block_evals"]), float(d["cfg_scale"])
            d["step"] = _step_of(d)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ExploreError(f"the quality landscape file {path.name} is unreadable ({type(e).__name__}: {e}); "
                           f"regenerate it with `{LANDSCAPE_COMMAND}`") from None
    if not ls.metrics or not ls.grids:
        raise ExploreError(f"the quality landscape file {path.name} holds no metrics or grids; "
                           f"regenerate it with `{LANDSCAPE_COMMAND}`")
    return ls


def _step_of(entry: dict) -> str:
    """The reverse step of a grid or DiT entry; files written before the rename call it "method"."""
    return str(entry["step"] if "step" in entry else entry["method"])


def pick_grid(ls: Landscape, step: str, cfg_scale: float, reuse: bool) -> tuple[dict, str]:
    """The grid measured with these settings, else the first one, with a note saying what differs."""
    for g in ls.grids:
        if g["step"] == step and math.isclose(g["cfg_scale"], cfg_scale) and bool(g["reuse"]) == bool(reuse):
            return g, ""
    g = ls.grids[0]
    return g, (f"No grid was measured for {step}, guidance {cfg_scale:g}, reuse {'on' if reuse else 'off'}; "
               f"showing {g['step']}, guidance {g['cfg_scale']:g}, reuse {'on' if g['reuse'] else 'off'}.")


def find_cell(grid: dict, steps: int, iterations: int) -> dict | None:
    """The measured cell at (steps, iterations per step), or None."""
    return next((c for c in grid["cells"] if c["steps"] == steps and c["iterations"] == iterations), None)


def neighbours(grid: dict, steps: int, iterations: float) -> list[dict]:
    """Measured cells around an unmeasured split: the grid's step counts just below and above `steps`, at the
    grid's iteration counts just below and above `iterations` (up to four cells, fewest block evaluations first)."""
    def around(values, v):
        below = [x for x in values if x <= v][-1:]
        above = [x for x in values if x >= v][:1]
        return sorted(set(below + above))

    cells = [find_cell(grid, s, k) for s in around(grid["steps"], steps) for k in around(grid["iterations"], iterations)]
    return sorted((c for c in cells if c is not None), key=lambda c: (c["block_evals"], c["steps"]))


def iso_budget_iterations(budget: float, steps: float, explicit_blocks: int) -> float:
    """Iterations per step K on the line S * (pre + K + post) = B."""
    return budget / steps - explicit_blocks


def metric_value(entry: dict, metric: str) -> tuple[float, float | None, float | None] | None:
    """(value, lo, hi) of `metric` in a cell or DiT entry; None if not measured."""
    m = (entry.get("metrics") or {}).get(metric)
    if not isinstance(m, dict) or not _real(m.get("value")) or not math.isfinite(m["value"]):
        return None
    return m["value"], m.get("lo"), m.get("hi")


def _real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _better(a: float, b: float, higher_is_better: bool) -> bool:
    return a > b if higher_is_better else a < b


def best_split(grid: dict, budget: float, metric: str, higher_is_better: bool) -> dict | None:
    """The measured cell with the best `metric` among those costing at most `budget` block evaluations."""
    best = None
    for c in grid["cells"]:
        v = metric_value(c, metric)
        if v is None or c["block_evals"] > budget:
            continue
        if best is None or _better(v[0], metric_value(best, metric)[0], higher_is_better) or (
                v[0] == metric_value(best, metric)[0] and c["block_evals"] < best["block_evals"]):
            best = c
    return best


def dit_at_budget(ls: Landscape, budget: float, step: str, cfg_scale: float, metric: str) -> dict | None:
    """The DiT run with the most steps within `budget` (same reverse step and guidance) that measured `metric`."""
    fits = [d for d in ls.dit if d["step"] == step and math.isclose(d["cfg_scale"], cfg_scale)
            and d["block_evals"] <= budget and metric_value(d, metric) is not None]
    return max(fits, key=lambda d: d["block_evals"], default=None)


def _axis_position(values: list, v: float) -> float:
    """Position of `v` on a categorical axis of sorted `values` (index i at values[i]), log-interpolated."""
    logs = np.log(np.asarray(values, dtype=float))
    if len(values) == 1:
        return 0.0
    return float(np.interp(math.log(v), logs, np.arange(len(values)), left=-0.5, right=len(values) - 0.5))


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _with_ci(v: tuple | None) -> str:
    if v is None:
        return "not measured"
    value, lo, hi = v
    return f"{_fmt(value)} (95% CI {_fmt(lo)}-{_fmt(hi)})" if lo is not None and hi is not None else _fmt(value)


def current_split(ls: Landscape, settings: Settings) -> tuple[int, float, int]:
    """(steps, mean iterations per step, budget) the settings would run, planned with the landscape model's depths."""
    cost = CostModel("fpdm", ls.explicit_blocks, 0.0, 0.0, 0.0)  # planning reads only the block counts
    kw = {k: getattr(settings.config, k) for k in MODE_FIELDS[settings.budget_mode]}
    try:
        plan = make_plan(cost, allocation="uniform", **kw)
    except ValueError as e:
        raise ExploreError(f"cannot plan this split: {e}") from None
    return plan.steps, sum(plan.iterations) / plan.steps, plan.budget


def landscape_figure(ls: Landscape, grid: dict, metric: str, split: tuple[int, float, int] | None = None):
    """Heatmap of `metric` over steps (x) x iterations per step (y); the split, its iso-budget line, the best
    split on or under that line, and DiT's value at that budget in the title."""
    import plotly.graph_objects as go

    info = ls.metrics[metric]
    S, K = grid["steps"], grid["iterations"]
    z = np.full((len(K), len(S)), np.nan)
    text = np.full((len(K), len(S)), "not measured", dtype=object)
    for c in grid["cells"]:
        if c["steps"] in S and c["iterations"] in K:
            i, j = K.index(c["iterations"]), S.index(c["steps"])
            v = metric_value(c, metric)
            if v is not None:
                z[i, j] = v[0]
            text[i, j] = (f"{c['steps']} steps x {c['iterations']} iterations = {c['block_evals']} block evaluations"
                          f"<br>{info['label']}: {_with_ci(v)}")
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(len(S))), y=list(range(len(K))), text=text, hovertemplate="%{text}<extra></extra>",
        colorscale="Viridis", reversescale=not info.get("higher_is_better", True),
        colorbar=dict(title=dict(text=metric, side="right")), hoverongaps=True))
    title = f"{info['label']}: {grid['step']}, guidance {grid['cfg_scale']:g}, reuse {'on' if grid['reuse'] else 'off'}"
    if split is not None:
        steps, its, budget = split
        ss = np.geomspace(S[0], S[-1], 200) if len(S) > 1 else np.array([S[0]], dtype=float)
        kk = iso_budget_iterations(budget, ss, ls.explicit_blocks)
        keep = (kk >= K[0]) & (kk <= K[-1])  # the line inside the measured grid
        fig.add_trace(go.Scatter(
            x=[_axis_position(S, s) for s in ss[keep]], y=[_axis_position(K, k) for k in kk[keep]], mode="lines",
            line=dict(color="white", dash="dash", width=2), name=f"budget {budget}", hoverinfo="skip"))
        best = best_split(grid, budget, metric, info.get("higher_is_better", True))
        if best is not None:
            fig.add_trace(go.Scatter(
                x=[S.index(best["steps"])], y=[K.index(best["iterations"])], mode="markers", name="best measured",
                marker=dict(symbol="star", size=20, color="white", line=dict(color="black", width=2)),
                hovertemplate=(f"best measured within {budget}: {best['steps']} steps x {best['iterations']} iterations"
                               f"<br>{info['label']}: {_with_ci(metric_value(best, metric))}<extra></extra>")))
        cell = find_cell(grid, steps, round(its)) if its == round(its) else None
        fig.add_trace(go.Scatter(
            x=[_axis_position(S, steps)], y=[_axis_position(K, its)], mode="markers", name="your split",
            marker=dict(symbol="circle-open", size=18, color="red", line=dict(width=3)),
            hovertemplate=(f"your split: {steps} steps x {its:.3g} iterations = {budget} block evaluations"
                           f"<br>{info['label']}: {_with_ci(metric_value(cell, metric) if cell else None)}"
                           "<extra></extra>")))
        dit = dit_at_budget(ls, budget, grid["step"], grid["cfg_scale"], metric)
        title += (f"<br>DiT within {budget} block evaluations ({plural(dit['steps'], 'step')}, {dit['block_evals']}): "
                  f"{_with_ci(metric_value(dit, metric))}" if dit else f"<br>no DiT run measured within {budget}")
    fig.update_layout(
        title=dict(text=title, font_size=13), margin=dict(l=60, r=20, t=70, b=44), height=440,
        xaxis=dict(title="sampling steps S", tickmode="array", tickvals=list(range(len(S))), ticktext=[str(s) for s in S],
                   range=[-0.5, len(S) - 0.5]),
        yaxis=dict(title="fixed-point iterations per step K", tickmode="array", tickvals=list(range(len(K))),
                   ticktext=[str(k) for k in K], range=[-0.5, len(K) - 0.5]),
        legend=dict(orientation="h", y=-0.18, x=0), showlegend=split is not None)
    return fig


def landscape_answer(ls: Landscape, grid: dict, metric: str, split: tuple[int, float, int]) -> str:
    """Markdown: is this split a good use of its budget? Your cell, the best measured one within it, DiT there."""
    info = ls.metrics[metric]
    hib = info.get("higher_is_better", True)
    steps, its, budget = split
    its_text = f"{its:g}" if its == round(its) else f"{its:.2f} (mean)"
    lines = [f"**Your split:** {plural(steps, 'step')} x {its_text} iterations per step = {budget} block evaluations "
             f"per image ({ls.pre_depth} pre + K + {ls.post_depth} post blocks per step)."]
    cell = find_cell(grid, steps, round(its)) if its == round(its) else None
    mine = metric_value(cell, metric) if cell else None
    lines.append(f"Measured {info['label']} here: {_with_ci(mine)}" + (
        "" if cell else f" (the grid has steps {', '.join(map(str, grid['steps']))} and iterations "
                        f"{', '.join(map(str, grid['iterations']))})") + ".")
    near = [] if cell else neighbours(grid, steps, its)
    if near:
        lines.append("Nearest measured splits: " + "; ".join(
            f"{c['steps']} x {c['iterations']} ({c['block_evals']} block evaluations): {_with_ci(metric_value(c, metric))}"
            for c in near) + ".")
    best = best_split(grid, budget, metric, hib)
    if best is None:
        lines.append(f"No measured split costs {budget} block evaluations or less.")
    else:
        bv = metric_value(best, metric)
        lines.append(f"**Best measured split within {budget}:** {plural(best['steps'], 'step')} x "
                     f"{plural(best['iterations'], 'iteration')} ({best['block_evals']} block evaluations): "
                     f"{_with_ci(bv)}.")
        if mine is not None and best is not cell:
            relation = _ci_relation(mine, bv, hib)
            lines.append("**Verdict:** " + (
                "no confidence intervals in the file: compare the values above." if relation is None else
                "the best split is better than yours beyond both 95% intervals: spend this budget differently."
                if relation == "worse" else
                "yours is within the measurement uncertainty of the best split (the 95% intervals overlap)."))
        elif mine is not None:
            lines.append("**Verdict:** yours is the best measured split within this budget.")
    dit = dit_at_budget(ls, budget, grid["step"], grid["cfg_scale"], metric)
    if dit is None:
        lines.append(f"**DiT within this budget:** no DiT run measured within {budget} block evaluations "
                     f"(one DiT step costs {ls.dit_depth}).")
    else:
        dv = metric_value(dit, metric)
        lines.append(f"**DiT within this budget:** {plural(dit['steps'], 'step')} ({dit['block_evals']} block "
                     f"evaluations, the most DiT steps measured within {budget}): {_with_ci(dv)}.")
        if best is not None:
            lines.append("FPDM's best split here vs DiT: " + {
                "better": "FPDM is better beyond both 95% intervals.", "worse": "DiT is better beyond both 95% intervals.",
                "overlap": "the 95% intervals overlap (no clear difference).",
                None: "no confidence intervals to compare."}[_ci_relation(metric_value(best, metric), dv, hib)])
    return "\n\n".join(lines)


def _ci_relation(a: tuple, b: tuple, higher_is_better: bool) -> str | None:
    """'better' / 'worse' if a's and b's 95% intervals do not overlap (a better or worse), 'overlap', or None."""
    (_, alo, ahi), (_, blo, bhi) = a, b
    if None in (alo, ahi, blo, bhi):
        return None
    if ahi < blo:
        return "worse" if higher_is_better else "better"
    if alo > bhi:
        return "better" if higher_is_better else "worse"
    return "overlap"


def landscape_for_ui(ls: Landscape | None, problem: str, metric, **controls) -> tuple[object | None, str]:
    """(figure or None, markdown) for the landscape panel from raw control values (`LANDSCAPE_CONTROLS` by name;
    others are ignored); never raises."""
    if ls is None:
        return None, problem
    if not isinstance(metric, str) or metric not in ls.metrics:
        metric = next(iter(ls.metrics))
    try:
        s = settings_from_ui(**{k: v for k, v in controls.items() if k in LANDSCAPE_CONTROLS})
        grid, note = pick_grid(ls, s.config.step, s.config.cfg_scale, s.config.reuse)
        split = current_split(ls, s)
    except ExploreError as e:
        grid, note = ls.grids[0], ""
        return landscape_figure(ls, grid, metric), f"**Cannot place your split:** {e}"
    answer = landscape_answer(ls, grid, metric, split)
    source = f"Measured by the benchmark ({ls.mode or 'unknown'} mode, {grid.get('n', '?')} images per cell)."
    return landscape_figure(ls, grid, metric, split), "\n\n".join(x for x in (answer, note, source) if x)


@functools.lru_cache(maxsize=2)
def _landscape_cached(path: str, mtime_ns: int) -> Landscape:
    return load_landscape(path)


def landscape_or_problem(path: str | Path = LANDSCAPE_FILE) -> tuple[Landscape | None, str]:
    """The landscape (re-read when the file changes), or None and a sentence saying how to make it."""
    path = Path(path)
    try:
        return _landscape_cached(str(path), path.stat().st_mtime_ns), ""
    except OSError:
        return None, (f"**No quality landscape yet** ({path.name} is missing). Generate it with "
                      f"`{LANDSCAPE_COMMAND}` (it writes figures/bench/landscape.json), then reload the page.")
    except ExploreError as e:
        return None, f"**Cannot show the quality landscape:** {e}"
