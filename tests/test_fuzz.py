"""Fuzzing the loader, the planner and every command line this kit ships (hypothesis).

Hostile checkpoints are small files (about 1 KB) claiming models of any size: each is refused in
well under a second with bounded memory, with one line that names the field. Bad flags of every
`python -m fpdm_core.X` end in exit code 2 and one line on stderr, before any work starts.
In-process cases are timed in CPU time of this process, so other work on a shared machine does not count.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fpdm_core import checkpoints, interop, latents, sample, sampling, train
from fpdm_core.budget import CostModel, Split, splits_for_budget, timestep_smoothing
from fpdm_core.checkpoints import FORMAT, CheckpointError, atomic_save, load_model, save_checkpoint
from fpdm_core.diffusion import BETA_SCHEDULES, MAX_TIMESTEPS, PREDICTIONS
from fpdm_core.models import LIMITS, PRESETS, ModelConfig, build_model
from fpdm_core.train_config import GRADIENTS

ROOT = Path(__file__).resolve().parent.parent
TINY = PRESETS["FPDM-tiny"].to_dict()
FIELDS = sorted(TINY)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def craft(path: Path, model: dict, tensors: dict | None = None) -> Path:
    """A checkpoint file whose metadata claims `model`; by default it holds one 16-byte tensor."""
    atomic_save(tensors if tensors is not None else {"model.pos_embed": torch.zeros(1, 1, 4)}, path,
                {"fpdm": json.dumps({"format": FORMAT, "model": model})})
    return path


def one_line_error(err: str) -> bool:
    return err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err


# ----------------------------------------------------------------------------- 1 KB files claiming huge models
HUGE = [  # (fields replacing FPDM-tiny's, what the one-line refusal must name)
    ({"num_classes": 10**7}, "num_classes"),
    ({"hidden_size": 16384}, "hidden_size"),
    ({"hidden_size": 10**9}, "hidden_size"),
    ({"kind": "dit", "depth": 10**9}, "depth"),
    ({"hidden_size": 192.0}, "hidden_size"),
    ({"input_size": 28.5}, "input_size"),
    ({"mlp_ratio": -4}, "mlp_ratio"),
    ({"mlp_ratio": 1e12}, "mlp_ratio"),
    ({"class_dropout": math.nan}, "class_dropout"),
    ({"learn_sigma": "yes"}, "learn_sigma"),
    ({"kind": "dit", "depth": 256, "hidden_size": 8192, "num_heads": 64}, "parameters"),
    ({"hidden_size": 4096, "num_heads": 64, "num_classes": 100_000}, "pos_embed"),  # within every limit
    ({"input_size": 1024, "patch_size": 8, "hidden_size": 1024}, "pos_embed"),
    ({"input_size": 8, "pre_depth": 256, "post_depth": 256}, "values"),  # a fitting pos_embed: counted, not built
]
FITTING_POS = {"input_size": 8}  # cases whose file holds the pos_embed the config needs (4 tokens x 32)

PROBE = """
import contextlib, io, json, resource, sys, time
from pathlib import Path
from fpdm_core import checkpoints, interop, sample
from fpdm_core.checkpoints import CheckpointError, load_model

folder, files = Path(sys.argv[1]), json.loads(sys.argv[2])
entries = {
    "load_model": lambda p: load_model(p),
    "sample": lambda p: sample.main(["--checkpoint", p, "--out-dir", str(folder / "out"), "--no-progress"]),
    "interop export": lambda p: interop.main(["export", p, "--out", str(folder / "x.pt")]),
    "checkpoints export": lambda p: checkpoints.main([p, str(folder / "x.safetensors")]),
}

def run(name, path):
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err):
        try:
            outcome = entries[name](path)
        except CheckpointError as e:
            outcome = "CheckpointError: " + str(e)
    return {"entry": name, "file": path, "seconds": time.perf_counter() - start, "outcome": outcome,
            "stderr": err.getvalue()}

for name in entries:  # warm up every path (imports, allocator) before the baseline
    run(name, files[0])
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
results = [run(name, path) for path in files for name in entries]
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rss_growth_mb": (rss1 - rss0) / 1024, "results": results}))
"""


def test_small_files_claiming_huge_models_are_refused_fast_with_bounded_memory(tmp_path):
    """The loader, the sample CLI and both exports, in a fresh process whose peak memory is measured."""
    pos = {"model.pos_embed": torch.zeros(1, 4, 32, dtype=torch.float16)}
    files = [craft(tmp_path / f"huge{i}.safetensors", {**TINY, **fields},
                   pos if fields.items() >= FITTING_POS.items() else None) for i, (fields, _) in enumerate(HUGE)]
    assert all(f.stat().st_size < 1024 for f in files)
    proc = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path), json.dumps([str(f) for f in files])],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["rss_growth_mb"] < 100
    names = {str(f): name for f, (_, name) in zip(files, HUGE)}
    for r in report["results"]:
        assert r["seconds"] < 10.0, r  # refused from the header: no allocation (a real one takes far longer)
        field = names[r["file"]]
        if r["entry"] == "load_model":
            assert r["outcome"].startswith("CheckpointError") and field in r["outcome"], r
            assert "\n" not in r["outcome"]
        else:
            assert r["outcome"] == 2 and one_line_error(r["stderr"]) and field in r["stderr"], r
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.pt").exists()


# ----------------------------------------------------------------------------- loader fuzzing
odd_values = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
                       st.text(max_size=4), st.booleans(), st.none(), st.lists(st.integers(0, 9), max_size=2),
                       st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))


@pytest.fixture(scope="module")
def tiny_weights():
    """FPDM-tiny at 8 px (4 tokens): real tensors for a config that may happen to be valid."""
    return {f"model.{k}": v for k, v in build_model("FPDM-tiny", input_size=8).state_dict().items()}


@FAST
@given(changes=st.dictionaries(st.sampled_from(FIELDS + ["extra_field"]), odd_values, min_size=1, max_size=4),
       real_weights=st.booleans())
def test_fuzzed_model_configs_are_loaded_or_refused_in_one_line(tmp_path, tiny_weights, changes, real_weights):
    path = craft(tmp_path / "fuzz.safetensors", {**TINY, "input_size": 8, **changes},
                 tiny_weights if real_weights else None)
    start = time.process_time()
    try:
        model = load_model(path)
    except CheckpointError as e:
        assert str(path) in str(e) and "\n" not in str(e)
    else:  # the changes happened to describe the weights in the file
        assert model.config == ModelConfig.from_dict({**TINY, "input_size": 8, **changes})
    assert time.process_time() - start < 1.0


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                       max_size=3), max_leaves=8)


@FAST
@given(meta=st.one_of(json_values, st.text(max_size=30)), raw=st.binary(max_size=256))
def test_fuzzed_metadata_and_bytes_are_refused_in_one_line(tmp_path, meta, raw):
    with_meta = tmp_path / "meta.safetensors"
    atomic_save({"model.pos_embed": torch.zeros(1)}, with_meta, {"fpdm": meta if isinstance(meta, str) else
                                                                 json.dumps(meta)})
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(raw)
    for path in (with_meta, junk):
        start = time.process_time()
        with pytest.raises(CheckpointError) as e:
            load_model(path)
        assert "\n" not in str(e.value) and time.process_time() - start < 1.0


@pytest.fixture(scope="module")
def their_weights():
    """DiT-S-like and FPDM-like state dicts in the authors' layout (tiny), from tests/test_interop.py."""
    from test_interop import their_state

    states = {"dit": their_state("dit", depth=2), "fpdm": their_state("fpdm")}
    for state in states.values():  # first-call costs (lazy imports) before anything is timed
        interop.import_state_dict(state, num_heads=2, timestep_cond_pre_post=False)
    return states


@FAST
@given(kind=st.sampled_from(["dit", "fpdm"]), data=st.data())
def test_fuzzed_foreign_state_dicts_are_imported_or_refused_in_one_line(their_weights, kind, data):
    """interop infers a config from shapes: odd shapes, missing or extra tensors give one InteropError line."""
    state = dict(their_weights[kind])
    keys = sorted(state)
    for key in data.draw(st.lists(st.sampled_from(keys), min_size=1, max_size=3, unique=True)):
        if data.draw(st.booleans()):
            del state[key]
        else:
            shape = data.draw(st.lists(st.integers(0, 40), max_size=4))
            state[key] = torch.zeros(shape, dtype=data.draw(st.sampled_from([torch.float32, torch.float16, torch.int64])))
    start = time.process_time()
    try:
        model, _ = interop.import_state_dict(state, num_heads=2, timestep_cond_pre_post=False)
    except interop.InteropError as e:
        assert "\n" not in str(e)
    else:
        assert model.config.kind == kind
    assert time.process_time() - start < 1.0


@settings(max_examples=20, deadline=None)
@given(kind=st.sampled_from(["fpdm", "dit"]), heads=st.integers(1, 4), width=st.integers(1, 6),
       mlp_ratio=st.floats(0.25, 6.0), classes=st.integers(0, 20), channels=st.integers(1, 4), sigma=st.booleans(),
       depths=st.tuples(st.integers(1, 3), st.integers(0, 2), st.integers(0, 2)), patch=st.sampled_from([1, 2, 4]))
def test_parameter_count_from_the_sizes_equals_the_meta_build(kind, heads, width, mlp_ratio, classes, channels, sigma,
                                                               depths, patch):
    """The loader's cheap check (`ModelConfig.parameter_count`) agrees with counting a real (meta) build."""
    from fpdm_core.models import count_parameters

    config = ModelConfig(kind=kind, input_size=8, in_channels=channels, patch_size=patch, hidden_size=4 * heads * width,
                         num_heads=heads, mlp_ratio=mlp_ratio, num_classes=classes, learn_sigma=sigma,
                         depth=depths[0], pre_depth=depths[1], post_depth=depths[2])
    assert config.parameter_count() == count_parameters(config)


# ----------------------------------------------------------------------------- planner
@settings(max_examples=80, deadline=None)
@given(pre=st.integers(0, 3), post=st.integers(0, 3), budget=st.integers(1, 600), cap=st.integers(1, 80))
def test_splits_for_budget_equals_the_enumeration_over_iterations(pre, post, budget, cap):
    """The O(steps) planner lists what enumerating every iteration count k (capped steps) lists."""
    cost = CostModel.of(ModelConfig(kind="fpdm", input_size=8, hidden_size=32, num_heads=2, pre_depth=pre,
                                    post_depth=post))
    want = []
    for k in range(1, budget + 1):
        steps = min(cap, budget // cost.step_block_evals(k))
        if steps and want and want[-1].steps == steps:
            want[-1] = Split(steps, k, steps * cost.step_block_evals(k))
        elif steps:
            want.append(Split(steps, k, steps * cost.step_block_evals(k)))
    assert splits_for_budget(cost, budget, cap) == want
    fitting = [s for s in want if s.iterations >= 2]
    if fitting:
        assert timestep_smoothing(cost, budget, 2, cap) == max(fitting, key=lambda s: (s.steps, s.iterations))


@settings(max_examples=30, deadline=None)
@given(budget=st.integers(1, 10**15), preset=st.sampled_from(sorted(PRESETS)))
def test_the_planner_answers_any_budget_in_milliseconds_within_the_timesteps(budget, preset):
    cost = CostModel.of(PRESETS[preset])
    start = time.process_time()
    splits = splits_for_budget(cost, budget)
    try:
        smooth = timestep_smoothing(cost, budget)
    except ValueError:
        smooth = None
    assert time.process_time() - start < 0.1
    assert all(1 <= s.steps <= 1000 and s.block_evals <= budget for s in splits)
    assert smooth is None or (smooth.steps <= 1000 and smooth.block_evals <= budget)


# ----------------------------------------------------------------------------- command lines
def bad_ints(lo: int, hi: int | None = None):
    out = [st.integers(max_value=lo - 1), st.sampled_from(["1.5", "1e3", "ten", "", "0x10"])]
    if hi is not None:
        out.append(st.integers(min_value=hi + 1))
    return st.one_of(*out).map(str)


def bad_floats(lo: float, hi: float = math.inf, lo_open: bool = False):
    below = st.floats(max_value=lo, exclude_max=not lo_open, allow_nan=False, allow_infinity=False)
    out = [below, st.sampled_from(["nan", "inf", "-inf", "infinity", "x", ""])]
    if hi < math.inf:
        out.append(st.floats(min_value=hi, exclude_min=True, allow_nan=False, allow_infinity=False))
    return st.one_of(*out).map(repr).map(lambda s: s.strip("'"))


def bad_choice(choices):
    return st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_/", min_size=1, max_size=8).filter(lambda s: s not in choices)


CPUS = __import__("os").cpu_count() or 1
SAMPLE_FLAGS = {
    "--n": bad_ints(1, sample.MAX_IMAGES), "--threads": bad_ints(1, CPUS), "--seed": bad_ints(0, 2**32 - 1),
    "--budget": bad_ints(1), "--steps": bad_ints(1), "--iterations": bad_ints(1, sampling.MAX_ITERATIONS),
    "--min-iterations": bad_ints(1, sampling.MAX_ITERATIONS), "--anderson-m": bad_ints(1, sampling.MAX_ITERATIONS),
    "--cfg-channels": bad_ints(1, LIMITS["in_channels"]), "--tol": bad_floats(0.0, lo_open=True),
    "--damping": bad_floats(0.0, 1.0, lo_open=True), "--eta": bad_floats(0.0, 1.0), "--cfg-scale": bad_floats(0.0),
    "--solver": bad_choice(("picard", "anderson")), "--step": bad_choice(("ddim", "ddpm")),
    "--spacing": bad_choice(("leading", "trailing", "linspace")), "--weights": bad_choice(("ema", "model")),
    "--allocation": bad_choice(("uniform", "increasing", "decreasing", "adaptive")),
}
TRAIN_FLAGS = {
    "--max-steps": bad_ints(1), "--max-minutes": bad_floats(0.0, lo_open=True), "--subset": bad_ints(1),
    "--threads": bad_ints(1, CPUS), "--seed": bad_ints(0, 2**32 - 1), "--lr": bad_floats(0.0, lo_open=True),
    "--weight-decay": bad_floats(0.0), "--warmup-steps": bad_ints(0), "--grad-clip": bad_floats(0.0, lo_open=True),
    "--ema-decay": bad_floats(0.0, 1.0), "--batch-size": bad_ints(1), "--log-every": bad_ints(1),
    "--save-every": bad_ints(1), "--model": bad_choice(sorted(PRESETS)), "--gradient": bad_choice(GRADIENTS),
    "--num-timesteps": bad_ints(1, MAX_TIMESTEPS), "--beta-schedule": bad_choice(BETA_SCHEDULES),
    "--prediction": bad_choice(PREDICTIONS),
}


def cli_cases(tmp: Path):
    """(main, argv without the bad flag, {flag: bad values}) for every command line of the kit."""
    ckpt, pt = tmp / "in.safetensors", tmp / "in.pt"
    return {
        "sample": (sample.main, ["--out-dir", str(tmp / "out"), "--no-progress"], SAMPLE_FLAGS),
        "train": (train.main, ["--run-dir", str(tmp / "run"), "--max-steps", "1", "--no-progress"], TRAIN_FLAGS),
        "interop import": (interop.main, ["import", str(pt), "--out", str(tmp / "o.safetensors")],
                           {"--num-heads": bad_ints(1, LIMITS["num_heads"]), "--weights": bad_choice(interop.WEIGHTS),
                            "--timestep-cond-pre-post": bad_choice(("true", "false", "1", "0", "yes", "no"))}),
        "checkpoints": (checkpoints.main, [str(ckpt), str(tmp / "o.safetensors")],
                        {"--dtype": bad_choice(("float16", "bfloat16", "float32"))}),
        "latents sample": (latents.main, ["sample", "--checkpoint", str(ckpt), "--out", str(tmp / "g.png")],
                           {"--steps": bad_ints(1), "--iterations": bad_ints(1), "--cfg-scale": bad_floats(0.0),
                            "--seed": bad_ints(0, 2**32 - 1), "--scale": bad_floats(0.0, lo_open=True)}),
        "latents encode": (latents.main, ["encode", "--vae", str(tmp), "--images", str(tmp), "--out", str(tmp / "l")],
                           {"--size": bad_ints(1, 8192), "--batch-size": bad_ints(1), "--shard-size": bad_ints(1),
                            "--posterior": bad_choice(latents.POSTERIORS)}),
    }


def exit_code(main, argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@st.composite
def bad_command_lines(draw, tmp: Path):
    name = draw(st.sampled_from(sorted(cli_cases(tmp))))
    main, argv, flags = cli_cases(tmp)[name]
    flag = draw(st.sampled_from(sorted(flags)))
    return name, main, argv + [flag, draw(flags[flag])]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bad_flags_of_every_command_line_end_in_one_line_and_exit_2(tmp_path, capsys, data):
    name, main, argv = data.draw(bad_command_lines(tmp_path))
    assert exit_code(main, argv) == 2, (name, argv)
    err = capsys.readouterr().err
    assert one_line_error(err), (name, argv, err)
    assert not any((tmp_path / p).exists() for p in ("out", "run", "o.safetensors", "g.png", "l")), (name, argv)


def test_every_command_line_answers_bad_input_the_same_way_from_a_shell(tmp_path):
    """Two real `python -m` runs: exit code 2 and one line, also outside pytest's capture."""
    for argv in (["fpdm_core.sample", "--n", str(10**9)], ["fpdm_core.train", "--run-dir", str(tmp_path), "--threads",
                                                             "-1", "--max-steps", "1"]):
        proc = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert proc.returncode == 2 and one_line_error(proc.stderr), proc.stderr


def test_a_shipped_style_checkpoint_still_loads(tmp_path):
    """The limits leave every preset loadable (the fuzzing above must not have made good files fail)."""
    path = tmp_path / "ok.safetensors"
    save_checkpoint(path, model=build_model("DiT-tiny", input_size=8))
    assert load_model(path).config == build_model("DiT-tiny", input_size=8).config
    assert all(ModelConfig.from_dict(c.to_dict()) == c for c in PRESETS.values())
