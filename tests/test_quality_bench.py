"""The landscape's choice of splits and the headline's verdicts, on hand-made results (no sampling)."""
import pytest

from fpdm_core.bench import headline, landscape


def m(value, lo=None, hi=None):
    return {"value": value, "lo": value if lo is None else lo, "hi": value if hi is None else hi}


def cell(steps, k, fcd, pre_post=2):
    return {"steps": steps, "iterations": k, "block_evals": steps * (k + pre_post), "metrics": {"fcd": m(fcd)}}


def rule(b, mi, steps, fcd):
    return {"budget_dit_steps": b, "budget": 8 * b, "min_iterations": mi, "steps": steps, "iterations": [mi] * steps,
            "block_evals": 8 * b, "metrics": {"fcd": m(fcd)}}


def test_best_split_stays_within_the_budget_and_prefers_lower_fcd():
    cells = [cell(2, 2, 50.0), cell(4, 2, 30.0), cell(1, 6, 40.0), cell(8, 2, 5.0)]  # costs 8, 16, 8, 32
    rules = [rule(1, 2, 2, 45.0), rule(1, 1, 2, 60.0), {"budget_dit_steps": 2, "min_iterations": 6, "skipped": "x"}]
    best = landscape.best_splits(cells, rules, budgets=(1, 2), depth=8)
    b1, b2 = best
    assert b1["best"]["steps"] == 1 and b1["best"]["iterations"] == 6  # 40 < 45 (rule) < 50; cost 32 is over budget
    assert b1["rule_default"]["metrics"]["fcd"]["value"] == 45.0
    assert b2["best"]["steps"] == 4 and b2["best"]["source"] == "grid" and b2["rule_default"] is None


def test_best_min_iterations_by_regret_not_rank():
    # min_iterations 2 wins twice by a little, 1 wins once by a lot: rank prefers 2, regret prefers 1
    rules = [rule(1, 1, 4, 10.0), rule(1, 2, 2, 30.0), rule(2, 1, 8, 21.0), rule(2, 2, 4, 20.0),
             rule(3, 1, 9, 21.0), rule(3, 2, 6, 20.0), rule(4, 2, 6, 5.0)]
    got = landscape.best_min_iterations(rules, (1, 2))
    assert got["mean_rank"] == {1: 2 / 3, 2: 1 / 3} and got["best_by_rank"] == 2
    assert got["mean_regret"][2] == pytest.approx(2 / 3) and got["mean_regret"][1] == pytest.approx(0.1 / 3)
    assert got["best"] == 1
    assert landscape.best_min_iterations([], (1, 2))["best"] is None


@pytest.mark.parametrize("diffs, powered, expected", [
    ({"accuracy": m(0.05, 0.02, 0.08), "fcd": m(-10, -15, -5), "fd_pixel": m(-1, -2, -0.5)}, True, "reproduced"),
    ({"accuracy": m(-0.05, -0.08, -0.02), "fcd": m(10, 5, 15), "fd_pixel": m(1, 0.5, 2)}, True, "not reproduced"),
    ({"accuracy": m(0.05, 0.02, 0.08), "fcd": m(10, 5, 15), "fd_pixel": m(-1, -2, -0.5)}, True, "inconclusive"),
    ({"accuracy": m(0.01, -0.02, 0.04), "fcd": m(-1, -3, 1), "fd_pixel": m(0.1, -0.1, 0.3)}, True, "inconclusive"),
    ({"accuracy": m(-0.05, -0.08, -0.02), "fcd": m(10, 5, 15), "fd_pixel": m(1, 0.5, 2)}, False,
     "inconclusive (underpowered)"),
])
def test_headline_verdict_needs_every_feature_space_to_agree(diffs, powered, expected):
    from fpdm_core.scores import METRICS

    per = headline.judge({"diff": diffs}, METRICS, powered)
    assert headline.overall(per) == expected


def test_headline_power_comes_from_n_and_what_each_model_reaches():
    acc = lambda v: {"accuracy": m(v)}  # noqa: E731
    rows = [{"variant": "DiT", "method": "ddim", "cfg_scale": 3.0, "metrics": acc(0.27)},
            {"variant": "DiT", "method": "ddim", "cfg_scale": 3.0, "metrics": acc(0.93)},
            {"variant": "FPDM, best split", "method": "ddim", "cfg_scale": 3.0, "metrics": acc(0.53)},
            {"variant": "DiT-16", "method": "ddim", "cfg_scale": 3.0, "metrics": acc(0.2)}]
    data = {"results": {"rows": rows}, "settings": {"min_n": 500}}
    c = {"method": "ddim", "cfg_scale": 3.0, "n": 1000, "a": "FPDM, best split", "b": "DiT"}
    assert headline.is_powered(c, data)  # DiT's poor 1-step samples do not make the comparison underpowered
    assert not headline.is_powered({**c, "n": 100}, data)
    assert not headline.is_powered({**c, "b": "DiT-16"}, data)  # a model that never beats 0.3 did not learn


def test_smoothing_default_follows_the_committed_landscape():
    import json
    from pathlib import Path

    from fpdm_core.budget import SMOOTHING_MIN_ITERATIONS
    from fpdm_core.sampling import SamplerConfig

    d = json.loads((Path(__file__).parents[1] / "figures" / "bench" / "landscape.json").read_text())
    if d["mode"] != "full":
        pytest.skip("the committed landscape is a smoke run: nothing to follow")
    best = landscape.best_min_iterations(d["results"]["rules"], d["settings"]["rules"])["best"]
    assert SMOOTHING_MIN_ITERATIONS == SamplerConfig().min_iterations == best


def test_notebook_headline_summary_agrees_with_the_benchmark_verdicts():
    import json
    from pathlib import Path

    from fpdm_core.tutorial import headline_summary

    data = json.loads((Path(__file__).parents[1] / "figures" / "bench" / "headline.json").read_text())
    s = headline_summary(data)
    method, cfg_scale, n, budgets = data["settings"]["conditions"][0]
    assert s["condition"] == (method, cfg_scale, n)
    assert len(s["table"].splitlines()) == 2 + len(budgets)
    for c in data["results"]["comparisons"]:
        if (c["method"], c["cfg_scale"]) == (method, cfg_scale) and (c["a"], c["b"]) in s["verdicts"]:
            expected = headline.judge(c, data["results"]["metrics"], headline.is_powered(c, data))
            assert s["verdicts"][c["a"], c["b"]][c["budget_dit_steps"]] == expected
