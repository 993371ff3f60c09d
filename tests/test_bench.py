"""`python -m fpdm_core.bench` on tiny settings: every sub-command, its JSON and figure, and the report.

No timing is asserted; sizes and signs are. The whole module runs `all --tiny` once (tens of seconds).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fpdm_core import bench, classifier
from fpdm_core.bench import ablations, convergence, depth, harness, memory, params, quality, report


def load(out, name: str) -> dict:
    return json.loads((out / "bench" / f"{name}.json").read_text())


def check_common(d: dict, name: str, out) -> None:
    assert d["name"] == name and d["mode"] == "tiny" and d["seeds"] == [0] and d["repeats"] == 1
    m = d["machine"]
    assert m["cpu"] and m["cores"] >= 1 and m["torch"] == torch.__version__ and m["date"]
    assert (out / d["figure"]).stat().st_size > 1000  # a real PNG


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """An untrained judge: FCD and accuracy are meaningless but every code path runs."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = classifier.FashionClassifier()
    path = tmp_path_factory.mktemp("judge") / "classifier.safetensors"
    classifier.save_classifier(model, path, {"epochs": 0})
    return path


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory, tiny_checkpoints, tiny_classifier):
    out = tmp_path_factory.mktemp("figures")
    rc = bench.main(["all", "--tiny", "--out", str(out), "--fpdm", str(tiny_checkpoints["fpdm"]),
                     "--dit", str(tiny_checkpoints["dit"]), "--classifier", str(tiny_classifier)])
    assert rc == 0
    return out


def test_params_reproduces_the_xl_reduction(tmp_path):
    assert bench.main(["params", "--tiny", "--out", str(tmp_path)]) == 0
    d = load(tmp_path, "params")
    check_common(d, "params", tmp_path)
    xl = next(r for r in d["results"]["pairs"] if r["fpdm"] == "FPDM-XL/2")
    assert xl["reduction_pct"] == pytest.approx(87.2, abs=0.1)
    assert xl["fpdm_params"] == pytest.approx(86.5e6, rel=1e-3) and xl["dit_params"] == pytest.approx(674.8e6, rel=1e-3)
    assert sum(d["results"]["breakdown"]["FPDM-XL/2"].values()) == xl["fpdm_params"]
    assert "87.2% fewer parameters than DiT-XL/2" in params.verdicts(d)[0]["sentence"]
    assert params.verdicts(d)[0]["status"] == "reproduced"


def test_memory_configs_give_each_role_once():
    rows = memory.memory_configs((1, 3, 6, 12))
    keys = [(r["kind"], r["n_no_grad"], r["n_grad"], r["recompute"]) for r in rows]
    assert len(keys) == len(set(keys)) == 8
    roles = [role for r in rows for role in r["roles"]]
    assert sorted(roles) == sorted(["dit", "sweep", "sweep", "sweep", "sweep", "average", "worst", "recompute",
                                    "full backprop"])
    assert next(r for r in rows if "worst" in r["roles"])["n_grad"] == 12


@pytest.mark.parametrize("preset,n_grad", [("DiT-tiny", 0), ("FPDM-tiny", 3)])
def test_meta_estimate_matches_the_cpu(preset, n_grad):
    """The meta-device trace counts what a real CPU step saves for backward (attention kernels may differ a bit)."""
    from fpdm_core.diffusion import GaussianDiffusion
    from fpdm_core.models import PRESETS, build_model

    est = bench.estimate_step_memory(PRESETS[preset], 8, n_no_grad=2, n_grad=n_grad)
    torch.manual_seed(0)
    model = build_model(preset).train()
    saved, loss = bench.saved_tensor_bytes(model, lambda: memory._training_loss(
        model, GaussianDiffusion(), 8, n_no_grad=2, n_grad=n_grad))
    assert torch.isfinite(loss)
    assert est["activation_bytes"] == pytest.approx(saved, rel=0.15)
    assert est["params"] == sum(p.numel() for p in model.parameters())


def test_memory(bench_out):
    d = load(bench_out, "memory")
    check_common(d, "memory", bench_out)
    small, paper = (next(s for s in d["results"]["settings"] if s["name"] == n) for n in ("small", "paper"))
    assert small["measured"] and not paper["measured"]
    for r in small["rows"]:
        assert r["peak_bytes"] > 0 and r["saved_tensor_bytes"] > 0 and r["step_s"] > 0, r
        assert r["weights_grads_adamw_bytes"] == 16 * r["params"]
    by = {r["n_grad"]: r for r in small["rows"] if "sweep" in r["roles"]}
    assert by[12]["saved_tensor_bytes"] > by[1]["saved_tensor_bytes"]
    assert by[12]["activation_bytes"] > by[1]["activation_bytes"]
    # the paper's scale is estimated in every mode: DiT-XL/2's 16 B/param alone is over 10 GiB
    dit = next(r for r in paper["rows"] if "dit" in r["roles"])
    assert dit["estimate"]["weights_grads_adamw_bytes"] > 10 * harness.GiB
    assert 50 < paper["savings_estimated_pct"]["worst"] < paper["savings_estimated_pct"]["average"] < 95


def test_speed(bench_out):
    d = load(bench_out, "speed")
    check_common(d, "speed", bench_out)
    r = d["results"]
    assert r["matmul"]["fp32"]["peak_gflops"] > 0 and r["matmul"]["bf16"]["peak_gflops"] > 0
    assert r["block"]["ratio"] > 0 and r["block"]["flop_ratio"] > 1
    assert r["block"]["dit_block_s"]["median"] > 0 and r["block"]["fp_iteration_s"]["median"] > 0
    for t in r["train"].values():
        assert t["steps_per_s"]["median"] > 0 and t["gflops_per_s"]["median"] > 0
        assert t["steps_per_s"]["min"] <= t["steps_per_s"]["median"] <= t["steps_per_s"]["max"]
    assert {s["kind"] for s in r["sample"]} == {"fpdm", "dit"}
    for s in r["sample"]:
        assert s["images_per_s"]["median"] > 0 and s["block_evals_per_image"] <= s["budget"]


def test_quality(bench_out):
    d = load(bench_out, "quality")
    check_common(d, "quality", bench_out)
    rows = d["results"]["rows"]
    assert {r["budget_dit_steps"] for r in rows} == {2, 5}
    assert len(rows) == 2 * len(quality.quality_variants(2))
    done = [r for r in rows if "skipped" not in r]
    assert {r["variant"] for r in done} == {v for v, _, _ in quality.quality_variants(2)}
    for r in done:
        assert r["fcd"] >= 0 and 0 <= r["accuracy"] <= 1
        assert 0 < r["block_evals_per_image"] <= r["budget"]  # a budget is never exceeded
    dit = [r for r in done if r["variant"] == "DiT"]
    assert all(r["block_evals_per_image"] == r["budget"] for r in dit)
    assert 0 <= d["results"]["reference"]["accuracy"] <= 1


def test_convergence(bench_out):
    d = load(bench_out, "convergence")
    check_common(d, "convergence", bench_out)
    runs = d["results"]["runs"]
    assert {(r["solver"], r["reuse"]) for r in runs} == {(s, u) for s in ("picard", "anderson") for u in (False, True)}
    for r in runs:
        m = r["rel_residual"]
        assert len(m) == d["settings"]["steps"] == len(r["timesteps"])
        assert all(len(row) == d["settings"]["iterations"] and all(v > 0 for v in row) for row in m)
    picard = next(r for r in runs if r["solver"] == "picard" and not r["reuse"])
    assert picard["summary"]["contraction_median"] > 0


def test_ablations(bench_out):
    d = load(bench_out, "ablations")
    check_common(d, "ablations", bench_out)
    rows = d["results"]["rows"]
    assert {(r["variant"], r["seed"]) for r in rows} == {(v, s) for v in ablations.VARIANTS for s in (0, 1)}
    assert all(r["steps"] == r["target_steps"] == 3 and r["final_loss"] > 0 for r in rows)
    assert all(r["accuracy_ci"][0] <= r["accuracy"] <= r["accuracy_ci"][1] and r["n"] == 20 for r in rows)
    by = {r["variant"]: r for r in rows if r["seed"] == 0}
    assert by["pre/post 2/2"]["params"] > by[ablations.BASELINE]["params"]
    mem = {v: by[v]["worst_case_memory_bytes"] for v in ablations.VARIANTS}
    assert mem["JFB (n_grad = 1)"] < mem[ablations.BASELINE] < mem["full backprop"]
    assert mem["S-JFB U{0..4}/U{1..4}"] < mem[ablations.BASELINE]
    comps = d["results"]["comparisons"]
    assert [c["claim"] for c in comps] == [c for c, _, _ in ablations.COMPARISONS]
    for c in comps:
        assert c["n"] == 40 and len(c["per_seed_diff"]) == 2 and c["ci"][0] <= c["diff"] <= c["ci"][1]
    # 3 training steps: near chance, so every comparison is underpowered (and the report says smoke)
    assert all(ablations.judge(c, rows)[0] == "inconclusive (underpowered)" for c in comps)
    assert all(c["verdict"] == harness.SMOKE for c in comps)  # the JSON says so too


def test_ablation_workers_in_parallel_processes(bench_out, tiny_classifier):
    """Two spawned worker processes give the rows of the one-process run in `all --tiny` (same seeds)."""
    from fpdm_core.bench.cli import build_parser

    a = build_parser().parse_args(["ablations", "--tiny"])
    ctx = harness.Context(bench_out, harness.SCALES["tiny"], 0, torch.device("cpu"), a.precision, None, None,
                          tiny_classifier, None, "test", jobs=2)
    specs = ablations.run_specs(ctx, tiny_classifier)[:2]
    two = [d["row"] for d in ablations.train_all(specs, jobs=2)]
    one = load(bench_out, "ablations")["results"]["rows"][:2]
    assert [(r["variant"], r["seed"]) for r in two] == [(r["variant"], r["seed"]) for r in one]
    for key in ("final_loss", "accuracy", "fcd"):
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], rel=1e-4)


def test_depth_is_arithmetic_on_the_cost_model(tmp_path):
    assert bench.main(["depth", "--tiny", "--out", str(tmp_path)]) == 0
    d = load(tmp_path, "depth")
    check_common(d, "depth", tmp_path)
    t = next(t for t in d["results"]["table"] if t["budget"] == 560)
    assert (t["DiT-8"], t["DiT-16"], t["DiT-28"]) == (70, 35, 20)
    assert (t["FPDM K=1"], t["FPDM K=2"], t["FPDM K=4"]) == (186, 140, 93)  # 560 // (2 + K)
    r = {(q["dit_depth"], q["iterations"]): q for q in d["results"]["ratios"]}
    assert r[28, 2]["block_eval_ratio"] == pytest.approx(7.0) and r[8, 2]["block_eval_ratio"] == pytest.approx(2.0)
    assert all(q["flop_ratio"] < q["block_eval_ratio"] for q in r.values())  # an iteration costs more than a block
    assert all(v["status"] == "measured" for v in depth.verdicts(d))


def test_report(bench_out):
    text = (bench_out / "RESULTS.md").read_text()
    assert "do not edit by hand" in text and "not evidence" in text and "Not run yet" not in text
    for name in bench.BENCHMARKS:
        assert f"(`{name}`)" in text and f"![{name}]({name}.png)" in text
    assert "FPDM-XL/2 has 87.2% fewer parameters than DiT-XL/2 (86.5M vs 674.8M; paper: 87%" in text
    assert "could not judge" not in text and "table unavailable" not in text
    summary = text.split("## Summary")[1].split("## Machines")[0]
    statuses = {line.split("**")[1] for line in summary.splitlines() if "**" in line}
    assert statuses <= {harness.SMOKE, "measured"} and harness.SMOKE in statuses  # tiny mode: no verdicts


def test_report_skips_missing_results(tmp_path):
    assert bench.main(["params", "--tiny", "--out", str(tmp_path)]) == 0
    assert bench.main(["report", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## 1. Parameters (`params`)" in text and "(`memory`)" not in text
    assert "Not run yet: `python -m fpdm_core.bench memory`" in text


def _comparison(ci, per_seed=(0.05, 0.04), n=1000):
    return {"claim": "x", "better": "a", "other": "b", "metric": "accuracy", "diff": sum(ci) / 2, "ci": list(ci),
            "n": n, "per_seed_diff": list(per_seed)}


def _runs(acc_a=0.8, acc_b=0.7, lo_b=0.65, steps=(100, 100, 100, 100), target=100):
    return [{"variant": v, "accuracy": acc, "accuracy_ci": [lo, acc + 0.05], "steps": st, "target_steps": target}
            for (v, acc, lo), st in zip([("a", acc_a, acc_a - 0.05)] * 2 + [("b", acc_b, lo_b)] * 2, steps)]


@pytest.mark.parametrize("ci,per_seed,n,runs,status", [
    ((0.02, 0.08), (0.05, 0.04), 1000, _runs(), "reproduced"),
    ((-0.08, -0.02), (-0.05, -0.04), 1000, _runs(), "not reproduced"),
    ((-0.01, 0.05), (0.03, 0.01), 1000, _runs(), "inconclusive"),  # the interval overlaps zero
    ((0.02, 0.08), (0.09, -0.01), 1000, _runs(), "inconclusive"),  # the seeds disagree
    ((0.3, 0.5), (0.4, 0.4), 1000, _runs(acc_b=0.12, lo_b=0.09), "inconclusive (underpowered)"),  # b near chance
    ((0.3, 0.5), (0.4, 0.4), 1000, _runs(acc_b=0.27, lo_b=0.23), "reproduced"),  # b weak, but clearly above chance
    ((0.0, 0.1), (0.05, 0.05), 1000, _runs(0.25, 0.2, 0.15), "inconclusive (underpowered)"),  # nobody learned enough
    ((0.02, 0.08), (0.05, 0.04), 50, _runs(), "inconclusive (underpowered)"),  # too few samples
    ((0.02, 0.08), (0.05, 0.04), 1000, _runs(steps=(60, 61, 70, 72)), "reproduced"),  # equal time: all capped
    ((0.02, 0.08), (0.05, 0.04), 1000, _runs(steps=(60, 61, 100, 100)), "inconclusive"),  # mixed design
])
def test_ablation_verdict_rule(ci, per_seed, n, runs, status):
    got, why = ablations.judge(_comparison(ci, per_seed, n), runs)
    assert got == status
    if runs[0]["steps"] < 100 and status == "reproduced":
        assert why.startswith("equal training time")


def test_smoke_results_give_no_verdict():
    c = _comparison((0.02, 0.08))
    rows = [{**r, "steps_per_s": 1.0, "worst_case_memory_bytes": 1e6} for r in _runs()]
    rows += [{**rows[0], "variant": v} for v in (ablations.BASELINE, "full backprop")]
    d = {"mode": "full", "results": {"comparisons": [c], "rows": rows}}
    assert report.judged(ablations, d)[0]["status"] == "reproduced"
    for mode in harness.SMOKE_MODES:
        found = report.judged(ablations, {**d, "mode": mode})
        assert found[0]["status"] == harness.SMOKE and found[-1]["status"] == "measured"
        assert "reproduced" not in found[0]["sentence"] and found[0]["sentence"].endswith(".")


def test_convergence_verdicts_from_residuals():
    contracting = [[0.5**i * (1 + 0.01 * s) for i in range(6)] for s in range(12)]
    far, near = ([[v * k for v in row] for row in contracting] for k in (1.0, 0.1))
    d = {"mode": "full", "settings": {"iterations": 6}, "results": {"runs": [
        {"solver": sol, "reuse": reuse, "rel_residual": m, "summary": convergence.residual_summary(np.array(m))}
        for sol in ("picard", "anderson") for reuse, m in ((False, far), (True, near))]}}
    conv, reuse, _ = convergence.verdicts(d)
    assert conv["status"] == "reproduced" and "0.50" in conv["sentence"]
    assert reuse["status"] == "reproduced"
    d["results"]["runs"][1]["rel_residual"] = far  # reuse changes nothing: the interval is [0, 0]
    assert convergence.verdicts(d)[1]["status"] == "inconclusive"
    few = {**d, "results": {"runs": [{**r, "rel_residual": r["rel_residual"][:4]} for r in d["results"]["runs"]]}}
    assert convergence.verdicts(few)[0]["status"] == "inconclusive (underpowered)"


def test_quality_verdict_on_a_paired_interval():
    rows = [{"variant": v, "budget_dit_steps": 20, "fcd": 1.0, "accuracy": acc, "accuracy_ci": [acc - 0.05, acc + 0.05]}
            for v, acc in ((quality.HEADLINE, 0.8), ("DiT", 0.7))]
    comp = {"claim": quality.COMPARISONS[0][0], "better": quality.HEADLINE, "baseline": "DiT",
            "budget_dit_steps": 20, "budget": 160, "metric": "accuracy", "diff": 0.1, "ci": [0.05, 0.15], "n": 1000}
    d = {"mode": "full", "results": {"rows": rows, "comparisons": [comp]}}
    assert quality.verdicts(d)[0]["status"] == "reproduced"
    comp["ci"] = [-0.01, 0.15]
    assert quality.verdicts(d)[0]["status"] == "inconclusive"
    comp["n"] = 100
    assert quality.verdicts(d)[0]["status"] == "inconclusive (underpowered)"
    old = {"mode": "full", "results": {"rows": rows}}  # a quality.json without intervals
    assert {v["status"] for v in quality.verdicts(old)} == {"inconclusive (underpowered)"}


def test_memory_verdict_from_numbers():
    rows = [{"roles": [role], "estimate_bytes": total,
             "estimate": {"weights_grads_adamw_bytes": fixed, "activation_bytes": total - fixed}}
            for role, total, fixed in (("dit", 100.0, 60.0), ("worst", 45.0, 10.0), ("average", 30.0, 10.0))]
    d = {"mode": "full", "results": {"settings": [
        {"name": "paper", "title": "XL", "measured": False, "savings_measured_pct": {},
         "savings_estimated_pct": memory.memory_savings(rows, "estimate_bytes"), "rows": rows}]}}
    v, parts = memory.verdicts(d)
    assert v["status"] == "reproduced" and "55% less memory than DiT in the worst case" in v["sentence"]
    assert "weights, gradients and AdamW moments are 60% of DiT's peak" in parts["sentence"]
    assert harness.less(60.4) == "60% less" and harness.less(-35.0) == "35% more"
    rows[1]["estimate_bytes"] = 60.0
    d["results"]["settings"][0]["savings_estimated_pct"] = memory.memory_savings(rows, "estimate_bytes")
    assert memory.verdicts(d)[0]["status"] == "not reproduced"
    d["results"]["settings"][0]["mode"] = "full"  # a paper-scale measurement merged into a quick file
    assert report.judged(memory, {**d, "mode": "quick"})[0]["status"] == "not reproduced"


def test_every_benchmark_follows_the_contract():
    for name, module in bench.BENCHMARKS.items():
        assert module.NAME == name and module.TITLE and module.CLAIMS and module.__doc__
        assert all(callable(getattr(module, f)) for f in ("run", "verdicts", "section"))


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    rc = bench.main(["convergence", "--tiny", "--out", str(tmp_path), "--fpdm", str(tmp_path / "none.safetensors")])
    assert rc == 2
    assert "no FPDM checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "bench" / "convergence.json").exists()


def test_help_lists_the_commands_not_the_hidden_one(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in (*bench.BENCHMARKS, "all", "report")) and "_memstep" not in text
