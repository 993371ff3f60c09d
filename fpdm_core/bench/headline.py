"""Headline comparison: DiT vs FPDM at 1-40 DiT-step budgets, DDIM and DDPM, guidance 1 and 3, paired 95% CIs.

Every model at a budget is sampled from the same noise and labels (the report seed set), so each
difference gets a paired bootstrap interval. FPDM runs twice: with the timestep-smoothing rule
and with the best split the `landscape` benchmark chose on its disjoint selection seed set (read
from landscape.json; skipped if that is missing). A deeper DiT (`--dit-deep`, default the shipped
depth-16 DiT if present) shows whether FPDM's advantage grows with the depth it replaces.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .. import assets
from ..checkpoints import load_model
from ..devices import resolve_precision
from ..sampling import SamplerConfig, balanced_labels, plan_for, sample_many
from ..stats import verdict
from .harness import (Context, bench_diffusion, finding, load_checkpoint_model, log, machine_info, pyplot, result_path,
                      save_figure, write_result)
from .points import Evaluator, MIN_ACCURACY, metric_info

NAME = "headline"
TITLE = "FPDM vs DiT under a sampling budget"
CLAIMS = ["FPDM gives better images than DiT when sampling compute is limited (paper: at the compute of 20 DiT steps)."]
VERDICT_METRICS = ("accuracy", "fcd", "fd_pixel")  # quality in both feature spaces; P/R/D/C explain why
ALL_BUDGETS = (1, 2, 3, 4, 5, 7, 10, 20, 40)
SETTINGS = {  # conditions: (sampler, guidance, n, budgets in DiT steps); the first is the headline setting
    "full": dict(conditions=(("ddim", 3.0, 1000, ALL_BUDGETS), ("ddpm", 3.0, 500, (1, 2, 3, 5, 10)),
                             ("ddim", 1.0, 500, (1, 2, 3, 5, 10)), ("ddpm", 1.0, 500, (1, 2, 3, 5, 10))),
                 n_boot=1000, min_n=500),
    "quick": dict(conditions=(("ddim", 3.0, 100, (1, 2, 5, 10)), ("ddpm", 1.0, 100, (1, 5))), n_boot=200, min_n=500),
    "tiny": dict(conditions=(("ddim", 3.0, 20, (1, 2)), ("ddpm", 1.0, 20, (1, 2))), n_boot=20, min_n=500),
}
COMPARISONS = (("FPDM, best split", "DiT"), ("FPDM, smoothing rule", "DiT"), ("FPDM, best split", "FPDM, smoothing rule"),
               ("DiT-16", "DiT"), ("FPDM, best split", "DiT-16"))


def _best_splits(ctx: Context) -> dict[int, dict]:
    """{budget in DiT steps: best split} from landscape.json, else {}."""
    path = result_path(ctx.out, "landscape")
    if not path.is_file():
        log("headline: no landscape.json, so no 'best split' rows (run `python -m fpdm_core.bench landscape` first)")
        return {}
    return {b["budget_dit_steps"]: b["best"] for b in json.loads(path.read_text())["results"]["best"] if b["best"]}


def _models(ctx: Context) -> dict:
    fpdm, fpdm_path = load_checkpoint_model(ctx, "fpdm")
    dit, dit_path = load_checkpoint_model(ctx, "dit")
    models = {"fpdm": (fpdm, fpdm_path), "dit": (dit, dit_path)}
    deep = ctx.dit_deep_path or (assets.shipped("dit16") if assets.shipped("dit16").is_file() else None)
    if deep is not None:
        models["dit_deep"] = (load_model(deep, device=ctx.device), deep)
    return models


def variants(models: dict, best: dict, budget_steps: int, depth: int, fields: dict) -> list[tuple[str, object, SamplerConfig]]:
    """(name, model, config) of every model at one budget (block evaluations = budget_steps x DiT depth)."""
    budget = budget_steps * depth
    out = [("DiT", models["dit"][0], SamplerConfig(steps=budget_steps, **fields)),
           ("FPDM, smoothing rule", models["fpdm"][0], SamplerConfig(budget=budget, **fields))]
    if budget_steps in best:
        b = best[budget_steps]
        its = b["iterations"] if isinstance(b["iterations"], int) else None
        cfg = (SamplerConfig(steps=b["steps"], iterations=its, **fields) if its is not None
               else SamplerConfig(budget=budget, steps=b["steps"], **fields))
        out.append(("FPDM, best split", models["fpdm"][0], cfg))
    if "dit_deep" in models:
        deep = models["dit_deep"][0]
        out.append(("DiT-16", deep, SamplerConfig(steps=max(budget // deep.config.depth, 1), **fields)))
    return out


def _resume(ctx: Context) -> dict:
    """Results of an earlier run of the same mode and seed (conditions already measured are kept), else empty."""
    path = result_path(ctx.out, NAME)
    if not path.is_file():
        return {"rows": [], "comparisons": [], "machines": {}, "done": []}
    old = json.loads(path.read_text())
    if old["mode"] != ctx.scale.name or old["settings"].get("seed") != ctx.seed:
        return {"rows": [], "comparisons": [], "machines": {}, "done": []}
    done = [list(c) for c in old["settings"]["conditions"]]
    log(f"headline: keeping {len(done)} measured condition(s) of {path}")
    return {"rows": old["results"]["rows"], "comparisons": old["results"]["comparisons"],
            "machines": old["results"].get("machines", {}), "done": done}


def condition_key(method: str, cfg_scale: float) -> str:
    return f"{method}-g{cfg_scale:g}"


def run(ctx: Context) -> Path:
    started, st = time.perf_counter(), SETTINGS[ctx.scale.name]
    models = _models(ctx)
    best = _best_splits(ctx)
    ev = Evaluator(ctx, st["n_boot"])
    depth = models["dit"][0].config.depth
    kept = _resume(ctx)
    rows, comparisons, machines, done = kept["rows"], kept["comparisons"], kept["machines"], kept["done"]
    for method, cfg_scale, n, budgets in st["conditions"]:
        if [method, cfg_scale, n, list(budgets)] in done:
            continue
        fields = dict(step=method, cfg_scale=cfg_scale)
        for b in budgets:
            scored = {}
            for name, model, cfg in variants(models, best, b, depth, fields):
                plan = plan_for(model, cfg, ev.diffusion.num_timesteps)
                if plan.budget > b * depth or (name == "DiT-16" and b * depth < model.config.depth):
                    rows.append({"variant": name, "method": method, "cfg_scale": cfg_scale, "budget_dit_steps": b,
                                 "skipped": f"one step of {name} costs more than {b * depth} block evaluations"})
                    continue
                log(f"headline {method} g{cfg_scale}: {name} at {b} DiT steps ({plan.steps} steps), n={n}")
                scored[name], row = ev.measure(model, cfg, n, ctx.seed)
                rows.append({"variant": name, "method": method, "cfg_scale": cfg_scale, "budget_dit_steps": b,
                             "budget": b * depth, "min_iterations": cfg.min_iterations, **row})
            for a, base in COMPARISONS:
                if a in scored and base in scored:
                    comparisons.append({"a": a, "b": base, "method": method, "cfg_scale": cfg_scale,
                                        "budget_dit_steps": b, "n": n,
                                        "diff": ev.compare(scored[a], scored[base], ctx.seed)})
        machines[condition_key(method, cfg_scale)] = {
            **machine_info(ctx.device), "precision": resolve_precision(SamplerConfig().precision, ctx.device)}
        done.append([method, cfg_scale, n, list(budgets)])
        results = {"metrics": metric_info(), "rows": rows, "comparisons": comparisons, "machines": machines,
                   "dit_depth": depth, "models": {k: str(v[1]) for k, v in models.items()},
                   "best_splits_from": "landscape.json" if best else None}
        settings = {**st, "conditions": list(done), "seed_set": "report", "seed": ctx.seed,
                    "sampler": SamplerConfig().to_dict(), "verdict_metrics": list(VERDICT_METRICS)}
        write_result(ctx, NAME, settings, results, started)  # after every condition: a cut-short run keeps them
    plot(ctx, json.loads(result_path(ctx.out, NAME).read_text()))
    draw_examples(ctx, models, best, depth)
    return result_path(ctx.out, NAME)


EXAMPLE_BUDGETS = (2, 20)  # DiT-step budgets shown side by side in headline_examples.png


def draw_examples(ctx: Context, models: dict, best: dict, depth: int) -> None:
    """headline_examples.png: one image per class from DiT and FPDM (best split) at two budgets, same noise."""
    plt, diffusion = pyplot(), bench_diffusion(ctx)
    labels = balanced_labels(10, models["dit"][0].config.num_classes)
    panels = []
    for b in EXAMPLE_BUDGETS:
        for name, model, cfg in variants(models, best, b, depth, {}):
            if name in ("DiT", "FPDM, best split"):
                images, _ = sample_many(model, diffusion, labels, cfg, seed=ctx.seed, device=ctx.device)
                panels.append((f"{name}, {b} DiT steps", images))
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 1.25 * len(panels)), squeeze=False)
    for ax, (title, images) in zip(axes[:, 0], panels):
        ax.imshow(images[:, 0].permute(1, 0, 2).reshape(28, -1).clamp(-1, 1), cmap="gray", vmin=-1, vmax=1)
        ax.set_title(title, fontsize=9, loc="left")
        ax.axis("off")
    fig.tight_layout()
    save_figure(ctx, f"{NAME}_examples", fig)


def plot(ctx: Context, data: dict) -> None:
    plt = pyplot()
    r, conds = data["results"], data["settings"]["conditions"]
    fig, axes = plt.subplots(len(VERDICT_METRICS), len(conds), figsize=(4.6 * len(conds), 3.4 * len(VERDICT_METRICS)),
                             squeeze=False)
    colors = {"DiT": "k", "DiT-16": "0.55", "FPDM, smoothing rule": "C0", "FPDM, best split": "C3"}
    for j, (method, cfg_scale, n, budgets) in enumerate(conds):
        for i, metric in enumerate(VERDICT_METRICS):
            ax = axes[i, j]
            for v, color in colors.items():
                rs = [x for x in r["rows"] if x["variant"] == v and x["method"] == method
                      and x["cfg_scale"] == cfg_scale and "skipped" not in x]
                if not rs:
                    continue
                xs = [x["budget_dit_steps"] for x in rs]
                ms = [x["metrics"][metric] for x in rs]
                ax.plot(xs, [m["value"] for m in ms], marker="o", ms=3, color=color, label=v)
                ax.fill_between(xs, [m["lo"] for m in ms], [m["hi"] for m in ms], color=color, alpha=0.15)
            ax.set_xscale("log")
            ax.set_xticks(list(budgets), [str(b) for b in budgets])
            ax.minorticks_off()
            if i == 0:
                ax.set_title(f"{method.upper()}, guidance {cfg_scale:g}, n = {n}", fontsize=10)
            if j == 0:
                ax.set_ylabel(r["metrics"][metric]["label"], fontsize=8)
            if i == len(VERDICT_METRICS) - 1:
                ax.set_xlabel("budget (DiT-step equivalents)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(ctx, NAME, fig)


def is_powered(c: dict, data: dict) -> bool:
    """Enough images, and both models clearly above chance at some budget of this condition (they learned)."""
    rows = [x for x in data["results"]["rows"] if x["method"] == c["method"] and x["cfg_scale"] == c["cfg_scale"]
            and "skipped" not in x]
    best = {v: max((x["metrics"]["accuracy"]["value"] for x in rows if x["variant"] == v), default=0.0)
            for v in (c["a"], c["b"])}
    return c["n"] >= data["settings"]["min_n"] and min(best.values()) >= MIN_ACCURACY


def judge(c: dict, metrics: dict, powered: bool = True) -> dict[str, str]:
    """stats.verdict of `a better than b` on each verdict metric."""
    return {m: verdict(c["diff"][m]["lo"], c["diff"][m]["hi"], higher_is_better=metrics[m]["higher_is_better"],
                       powered=powered) for m in VERDICT_METRICS}


def overall(per_metric: dict[str, str]) -> str:
    """One verdict when every metric agrees; 'inconclusive' when the feature spaces disagree."""
    found = set(per_metric.values())
    return found.pop() if len(found) == 1 else "inconclusive"


def verdicts(data: dict) -> list[dict]:
    """One finding per comparison and verdict, listing the budgets it holds at: every comparison with DiT at the
    headline condition (the first), FPDM (best split) vs DiT at the others."""
    r, conditions = data["results"], data["settings"]["conditions"]
    out = []
    for i, (method, cfg_scale, n, _) in enumerate(conditions):
        pairs = (("FPDM, best split", "DiT"), ("FPDM, smoothing rule", "DiT"), ("FPDM, best split", "DiT-16"))
        for a, b in pairs if i == 0 else pairs[:1]:
            by_verdict: dict[str, list] = {}
            for c in r["comparisons"]:
                if c["a"] == a and c["b"] == b and c["method"] == method and c["cfg_scale"] == cfg_scale:
                    per = judge(c, r["metrics"], is_powered(c, data))
                    by_verdict.setdefault(overall(per), []).append((c["budget_dit_steps"], per))
            for v, items in by_verdict.items():
                budgets = ", ".join(str(k) for k, _ in items)
                split = "" if v != "inconclusive" else "; per metric at " + "; ".join(
                    f"{k}: " + ", ".join(f"{m} {w}" for m, w in per.items()) for k, per in items[:3])
                out.append(finding(v, f"{a} beats {b} ({method.upper()}, guidance {cfg_scale:g}) at budgets "
                                   f"(DiT steps): {budgets}", f"n = {n}{split}"))
    return out


def disagreement(data: dict, a: str = "FPDM, best split", b: str = "DiT") -> list[str]:
    """Markdown: why the feature spaces rank a and b differently, from the diagnostics of the headline condition."""
    r, (method, cfg_scale, *_) = data["results"], data["settings"]["conditions"][0]
    rows = {(x["variant"], x["budget_dit_steps"]): x for x in r["rows"]
            if x["method"] == method and x["cfg_scale"] == cfg_scale and "skipped" not in x}
    budgets = sorted({k for v, k in rows if v == a and (b, k) in rows})
    lines = [f"#### Why the metrics disagree ({a} vs {b}, {method.upper()}, guidance {cfg_scale:g})", "",
             "Differences a - b of each Fréchet distance's mean and covariance terms, mean pixel brightness "
             "(real images in brackets), and precision / recall in pixel-PCA space:", "",
             "| budget | FCD: mean term | FCD: cov. term | pixel FD: mean term | pixel FD: cov. term | brightness a / b "
             "(real) | precision a / b | recall a / b |", "|---|---|---|---|---|---|---|---|"]
    mean_wins = 0
    for k in budgets:
        xa, xb = rows[a, k], rows[b, k]
        ta, tb = xa["diagnostics"]["fd_terms"], xb["diagnostics"]["fd_terms"]
        d = {sp: {t: ta[sp][t] - tb[sp][t] for t in ("mean", "covariance")} for sp in ("fcd", "fd_pixel")}
        mean_wins += abs(d["fd_pixel"]["mean"]) > abs(d["fd_pixel"]["covariance"])
        br = xa["diagnostics"]["brightness"]
        lines.append(f"| {k} | {d['fcd']['mean']:+.1f} | {d['fcd']['covariance']:+.1f} | {d['fd_pixel']['mean']:+.2f} | "
                     f"{d['fd_pixel']['covariance']:+.2f} | {br['samples']:.3f} / "
                     f"{xb['diagnostics']['brightness']['samples']:.3f} ({br['real']:.3f}) | "
                     f"{xa['metrics']['precision']['value']:.3f} / {xb['metrics']['precision']['value']:.3f} | "
                     f"{xa['metrics']['recall']['value']:.3f} / {xb['metrics']['recall']['value']:.3f} |")
    if budgets:
        lines += ["", f"At {mean_wins} of {len(budgets)} budgets the pixel-space difference comes mostly from the "
                  "mean term (the average image, i.e. brightness), not from the covariance (the variety of shapes). "
                  "![examples](headline_examples.png)"]
    return lines


def section(data: dict) -> str:
    r = data["results"]
    rule_m = sorted({x["min_iterations"] for x in r["rows"] if x["variant"] == "FPDM, smoothing rule" and "skipped" not in x
                     and "min_iterations" in x}) or [data["settings"]["sampler"]["min_iterations"]]
    lines = [f"Report seed set (seed {data['settings']['seed']}); models: "
             + ", ".join(f"{k} = `{Path(v).name}`" for k, v in r["models"].items())
             + f"; best splits from {r['best_splits_from'] or 'nowhere (landscape.json missing)'}; smoothing rule "
             f"with min_iterations {', '.join(map(str, rule_m))}. Verdict: `a` better than `b` on every metric of "
             "both feature spaces; metrics that disagree make it inconclusive.", ""]
    for method, cfg_scale, n, _ in data["settings"]["conditions"]:
        mach = r.get("machines", {}).get(condition_key(method, cfg_scale))
        where = f" — measured on {mach['gpu'] or mach['cpu']}, sampling precision {mach['precision']}" if mach else ""
        lines += [f"### {method.upper()}, guidance {cfg_scale:g}, n = {n}{where}", "",
                  "| budget | variant | steps | " + " | ".join(r["metrics"][m]["label"] for m in VERDICT_METRICS)
                  + " | precision | recall |", "|---|---|---|" + "---|" * (len(VERDICT_METRICS) + 2)]
        for x in r["rows"]:
            if x["method"] != method or x["cfg_scale"] != cfg_scale:
                continue
            if "skipped" in x:
                lines.append(f"| {x['budget_dit_steps']} | {x['variant']} | skipped: {x['skipped']} |"
                             + " |" * (len(VERDICT_METRICS) + 2))
                continue
            ms = x["metrics"]
            lines.append(f"| {x['budget_dit_steps']} | {x['variant']} | {x['steps']} | "
                         + " | ".join(_ci(ms[m]) for m in VERDICT_METRICS)
                         + f" | {_ci(ms['precision'])} | {_ci(ms['recall'])} |")
        lines += ["", "| budget | comparison | " + " | ".join(f"{m} diff [95% CI]" for m in VERDICT_METRICS)
                  + " | verdict |", "|---|---|" + "---|" * (len(VERDICT_METRICS) + 1)]
        for c in r["comparisons"]:
            if c["method"] != method or c["cfg_scale"] != cfg_scale:
                continue
            per = judge(c, r["metrics"], is_powered(c, data))
            lines.append(f"| {c['budget_dit_steps']} | {c['a']} - {c['b']} | "
                         + " | ".join(_ci(c["diff"][m]) for m in VERDICT_METRICS) + f" | {overall(per)} |")
        lines.append("")
        if (method, cfg_scale) == tuple(data["settings"]["conditions"][0][:2]):
            lines += disagreement(data) + [""]
    return "\n".join(lines)


def _ci(m: dict) -> str:
    if m["value"] is None:
        return "n/a"
    fmt = ".3f" if abs(m["value"]) < 10 else ".1f"
    return f"{m['value']:{fmt}} [{m['lo']:{fmt}}, {m['hi']:{fmt}}]"
