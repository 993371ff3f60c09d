"""`python -m fpdm_core.bench` on tiny settings: every sub-command, its JSON and figure, and the report.

No timing is asserted; sizes and signs are. The whole module runs `all --tiny` once (tens of seconds).
"""
from __future__ import annotations

import json

import pytest
import torch

from fpdm_core import bench
from fpdm_core.models import PRESETS


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
    metrics = pytest.importorskip("fpdm_core.metrics")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = metrics.FashionClassifier()
    path = tmp_path_factory.mktemp("judge") / "classifier.safetensors"
    metrics.save_classifier(model, path, {"epochs": 0})
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
    assert "87.2% fewer parameters than DiT-XL/2" in bench.verdicts_params(d)[0]["sentence"]
    assert bench.verdicts_params(d)[0]["status"] == "reproduced"


def test_memory_configs_give_each_role_once():
    rows = bench.memory_configs((1, 3, 6, 12))
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
    from fpdm_core.models import build_model

    est = bench.estimate_step_memory(PRESETS[preset], 8, n_no_grad=2, n_grad=n_grad)
    torch.manual_seed(0)
    model = build_model(preset).train()
    saved, loss = bench.saved_tensor_bytes(model, lambda: bench._training_loss(
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
    assert dit["estimate"]["weights_grads_adamw_bytes"] > 10 * bench.GiB
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
    assert len(rows) == 2 * len(bench.quality_variants(2))
    done = [r for r in rows if "skipped" not in r]
    assert {r["variant"] for r in done} == {v for v, _, _ in bench.quality_variants(2)}
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
    rows = {r["name"]: r for r in d["results"]["rows"]}
    assert len(rows) == len(bench.ablation_runs())
    assert all(r["steps"] >= 1 and r["steps_per_s"] > 0 and r["final_loss"] > 0 for r in rows.values())
    p00, p11, p22 = (rows[f"pre/post {k}/{k}" + (", S-JFB 0-10/1-12" if k == 1 else "")] for k in (0, 1, 2))
    assert p00["params"] < p11["params"] < p22["params"]
    mem = {k: rows[k]["worst_case_memory_bytes"] for k in ("JFB (n_grad = 1)", "full backprop")}
    assert mem["JFB (n_grad = 1)"] < p11["worst_case_memory_bytes"] < mem["full backprop"]
    assert all(r.get("fcd") is not None for r in rows.values())
    assert not any(name.startswith("_ablation") for name in PRESETS)  # temporary presets are removed


def test_report(bench_out):
    text = (bench_out / "RESULTS.md").read_text()
    assert "do not edit by hand" in text and "not evidence" in text and "not run yet" not in text
    for name in bench.COMMANDS:
        assert f"(`{name}`)" in text and f"![{name}]({name}.png)" in text
    assert "FPDM-XL/2 has 87.2% fewer parameters than DiT-XL/2 (86.5M vs 674.8M; paper: 87%): reproduced." in text
    assert "could not judge" not in text and "table unavailable" not in text


def test_report_from_some_results(tmp_path):
    assert bench.main(["params", "--tiny", "--out", str(tmp_path)]) == 0
    assert bench.main(["report", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "reproduced" in text and "not run yet: `python -m fpdm_core.bench memory`" in text


def test_tie_aware_comparisons():
    assert bench._lower(1.0, 2.0) == "reproduced"
    assert bench._lower(2.0, 1.0) == "not reproduced"
    assert bench._lower(1.0, 1.01) == "tie"
    assert bench._less(60.4) == "60% less" and bench._less(-35.0) == "35% more"


def test_memory_verdict_from_numbers():
    rows = [{"roles": [role], "estimate_bytes": total,
             "estimate": {"weights_grads_adamw_bytes": fixed, "activation_bytes": total - fixed}}
            for role, total, fixed in (("dit", 100.0, 60.0), ("worst", 45.0, 10.0), ("average", 30.0, 10.0))]
    d = {"mode": "quick", "results": {"settings": [
        {"name": "paper", "title": "XL", "measured": False, "savings_measured_pct": {},
         "savings_estimated_pct": bench.memory_savings(rows, "estimate_bytes"), "rows": rows}]}}
    v, parts = bench.verdicts_memory(d)
    assert v["status"] == "reproduced" and "55% less memory than DiT in the worst case" in v["sentence"]
    assert "weights, gradients and AdamW moments are 60% of DiT's peak" in parts["sentence"]
    rows[1]["estimate_bytes"] = 60.0
    d["results"]["settings"][0]["savings_estimated_pct"] = bench.memory_savings(rows, "estimate_bytes")
    assert bench.verdicts_memory(d)[0]["status"] == "not reproduced"


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    rc = bench.main(["convergence", "--tiny", "--out", str(tmp_path), "--fpdm", str(tmp_path / "none.safetensors")])
    assert rc == 2
    assert "no FPDM checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "bench" / "convergence.json").exists()


def test_help_lists_the_commands_not_the_hidden_one(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in (*bench.COMMANDS, "all", "report")) and "_memstep" not in text
