"""`python -m fpdm_core.sample`: outputs, determinism and clean errors (exit code 2)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fpdm_core.options import from_args
from fpdm_core.sample import build_parser, class_labels, main
from fpdm_core.sampling import SamplerConfig

FAST = ["--steps", "3", "--iterations", "2", "--no-progress"]


def run_cli(argv) -> int:
    """main(argv) as the shell sees it: argparse errors become their SystemExit code."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def test_help_documents_every_flag():
    r = subprocess.run([sys.executable, "-m", "fpdm_core.sample", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for flag in ("--checkpoint", "--weights", "--n", "--classes", "--budget", "--steps", "--iterations", "--allocation",
                 "--reuse", "--no-reuse", "--solver", "--tol", "--stop-mode", "--damping", "--anderson-m", "--step",
                 "--eta", "--spacing", "--cfg-scale", "--cfg-channels", "--clip-x0", "--no-clip-x0", "--precision",
                 "--min-iterations", "--seed", "--device", "--out-dir"):
        assert flag in r.stdout, flag
    assert "default: 20" in r.stdout and "fpdm-fm-m.safetensors" in r.stdout


def test_outputs(tiny_checkpoints, tmp_path):
    out = tmp_path / "s"
    assert run_cli(["--checkpoint", tiny_checkpoints["fpdm"], "--n", 12, "--out-dir", out, *FAST]) == 0
    npz = np.load(out / "samples.npz")
    assert npz["images"].dtype == np.uint8 and npz["images"].shape == (12, 28, 28)
    assert npz["labels"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    rec = json.loads((out / "record.json").read_text())
    assert rec["checkpoint"] == str(tiny_checkpoints["fpdm"]) and rec["kind"] == "fpdm"
    assert [s["iterations"] for s in rec["steps"]] == [2, 2, 2]
    assert rec["spent_block_evals"] == 3 * (1 + 2 + 1)
    from PIL import Image

    with Image.open(out / "samples.png") as img:  # 10 columns, 2 rows of 28 px + 2 px padding, scaled x2
        assert img.size == (2 * (10 * 30 + 2), 2 * (2 * 30 + 2))


def test_same_seed_same_images(tiny_checkpoints, tmp_path):
    args = ["--checkpoint", tiny_checkpoints["fpdm"], "--n", 4, "--step", "ddpm", *FAST]
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert run_cli([*args, "--seed", seed, "--out-dir", tmp_path / name]) == 0
    a, b, c = (np.load(tmp_path / name / "samples.npz")["images"] for name in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_classes_budget_and_dit(tiny_checkpoints, tmp_path):
    out = tmp_path / "dit"
    argv = ["--checkpoint", tiny_checkpoints["dit"], "--n", 5, "--classes", 3, 7, "--budget", 8, "--no-progress",
            "--out-dir", out]
    assert run_cli(argv) == 0
    rec = json.loads((out / "record.json").read_text())
    assert np.load(out / "samples.npz")["labels"].tolist() == [3, 7, 3, 7, 3]
    assert rec["kind"] == "dit" and rec["plan"]["steps"] == 2 and rec["spent_block_evals"] == 8  # DiT-tiny depth 4


def test_class_labels_cycle():
    assert class_labels(3, None, 10).tolist() == [0, 1, 2]
    assert class_labels(4, [9], 10).tolist() == [9, 9, 9, 9]
    assert class_labels(2, [10], 10).tolist() == [10, 10]  # the null class: unconditional


@pytest.mark.parametrize("argv, message", [
    (["--budget", 3], "budget 3 is below"),  # FPDM-tiny: one step with 2 iterations costs 4
    (["--classes", 11], "out of range"),
    (["--classes", -1], "out of range"),
    (["--budget", 10**12], "more than the limit 100: lower the budget"),  # planned in milliseconds, then refused
    (["--steps", 5, "--budget", 10**9], "more than the limit 100"),
])
def test_bad_requests_exit_2(tiny_checkpoints, tmp_path, capsys, argv, message):
    assert run_cli(["--checkpoint", tiny_checkpoints["fpdm"], "--no-progress", "--out-dir", tmp_path, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "samples.npz").exists()


@pytest.mark.parametrize("argv, message", [
    (["--solver", "newton"], "invalid choice"),
    (["--bogus-flag"], "unrecognized arguments"),
    (["--n", "many"], "argument --n: invalid int value: 'many'"),
    (["--allocation", "adaptive", "--budget", "40"], "needs a residual tolerance"),
    (["--budget", "40", "--iterations", "3"], "cannot be combined with --budget"),
    (["--cfg-scale", "-1"], "argument --cfg-scale: must be a finite number >= 0.0"),
    (["--cfg-scale", "nan"], "argument --cfg-scale: must be a finite number"),
    (["--n", "0"], "argument --n: must be an integer in 1..1024, got 0"),
    (["--n", str(10**9)], "argument --n: must be an integer in 1..1024"),
    (["--threads", "-1"], "argument --threads: must be an integer in 1.."),
    (["--budget", "1e12"], "argument --budget: invalid int value: '1e12'"),
    (["--budget", "0"], "argument --budget: must be an integer >= 1"),
    (["--iterations", "101"], "argument --iterations: must be an integer in 1..100"),
    (["--steps", "1001"], "argument --steps: must be an integer in 1..1000, got 1001"),
    (["--cfg-channels", "0"], "argument --cfg-channels: must be an integer in 1..64"),
    (["--damping", "0.5", "--solver", "anderson"], "--damping is only used with --solver picard"),
    (["--eta", "0.5", "--step", "ddpm"], "--eta is only used with --step ddim"),
    (["--seed", "-1"], "argument --seed: must be an integer in 0..4294967295"),
    (["--seed", str(2**32)], "argument --seed: must be an integer in 0..4294967295"),
    (["--damping", "0"], "argument --damping: must be a finite number > 0.0 and <= 1.0"),
    (["--tol", "0"], "argument --tol: must be a finite number > 0.0"),
    (["--eta", "inf"], "argument --eta: must be a finite number"),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, capsys, argv, message):
    assert run_cli(["--out-dir", tmp_path, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_missing_and_corrupt_checkpoints(tmp_path, capsys):
    missing = tmp_path / "nope.safetensors"
    assert run_cli(["--checkpoint", missing, "--out-dir", tmp_path, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "python -m fpdm_core.train" in err
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json at all")
    assert run_cli(["--checkpoint", corrupt, "--out-dir", tmp_path, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "not a readable safetensors checkpoint" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- defaults and outputs
def test_defaults_are_the_sampler_configs_and_help_says_them():
    p = build_parser()
    assert from_args(SamplerConfig, p.parse_args([]), p) == SamplerConfig()
    text = p.format_help()
    d = SamplerConfig()
    for flag, value in (("--cfg-scale", d.cfg_scale), ("--spacing", d.spacing), ("--solver", d.solver),
                        ("--step", d.step), ("--eta", d.eta)):
        entry = text[text.index("\n  " + flag + " ") + 3:]  # the option's help, not the usage line
        assert f"(default: {value})" in " ".join(entry[:entry.index("\n  -")].split()), flag


def test_out_dir_problems_are_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import fpdm_core.checkpoints

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before the out-dir was checked")

    monkeypatch.setattr(fpdm_core.checkpoints, "load_pipeline", no_work)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [(a_file, "is a file, not a folder"), (a_file / "sub", "is a file, not a folder")]
    if sys.platform == "linux":  # sysfs refuses new files, even to root
        cases.append((Path("/sys/fpdm-samples"), "is not writable"))
    for out, message in cases:
        assert run_cli(["--out-dir", out, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    full = tmp_path / "full"
    full.mkdir()
    (full / "samples.npz").write_bytes(b"earlier results")
    assert run_cli(["--out-dir", full, "--no-progress"]) == 2
    assert "already holds samples.npz: pass --force" in capsys.readouterr().err
    assert (full / "samples.npz").read_bytes() == b"earlier results"


def test_force_replaces_earlier_outputs(tiny_checkpoints, tmp_path):
    out = tmp_path / "s"
    argv = ["--checkpoint", tiny_checkpoints["dit"], "--n", 2, "--steps", 2, "--no-progress", "--out-dir", out]
    assert run_cli(argv + ["--seed", 1]) == 0
    first = (out / "samples.npz").read_bytes()
    assert run_cli(argv + ["--seed", 2]) == 2 and (out / "samples.npz").read_bytes() == first
    assert run_cli(argv + ["--seed", 2, "--force"]) == 0 and (out / "samples.npz").read_bytes() != first
