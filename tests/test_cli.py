"""The command-line convention (fpdm_core.cli) and what the train and checkpoints CLIs refuse.

Every `python -m fpdm_core.X` has `main(argv) -> int`; bad input ends in one line on stderr and exit
code 2; nothing is overwritten without --force (or --resume for a training run).
"""
from __future__ import annotations

import argparse
import ast
import copy
import importlib
import json
from pathlib import Path

import pytest
import torch

from fpdm_core import checkpoints, cli, train
from fpdm_core.checkpoints import FORMAT, SHIPPED, load_checkpoint, save_checkpoint
from fpdm_core.models import build_model

DIGITS = ["--dataset", "digits", "--subset", "64", "--model", "FPDM-tiny", "--batch-size", "16", "--sample-every",
          "0", "--log-every", "1", "--no-progress", "--device", "cpu", "--precision", "fp32", "--warmup-steps", "1",
          "--no-grad-iters", "0", "1", "--grad-iters", "1", "2"]


def run(main, argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------- the convention
# module: (arguments its parser accepts, ending in a flag with a bad value; that flag)
BAD_VALUES = {
    "checkpoints": (["a.safetensors", "b.safetensors", "--dtype", "float8"], "--dtype"),
    "interop": (["import", "a.pt", "--out", "b.safetensors", "--num-heads", "0"], "--num-heads"),
    "latents": (["sample", "--checkpoint", "a.safetensors", "--out", "b.png", "--steps", "0"], "--steps"),
    "metrics": (["evaluate", "--npz", "a.npz", "--weights", "bogus"], "--weights"),
    "sample": (["--steps", "0"], "--steps"),
    "train": (["--run-dir", "run", "--seed", "-1"], "--seed"),
    "bench": (["ablations", "--jobs", "0"], "--jobs"),
}
PACKAGE = Path(importlib.import_module("fpdm_core").__file__).parent
# module: arguments naming an input that does not exist (MISSING is replaced by a path in tmp_path)
MISSING_INPUTS = {
    "checkpoints": ["MISSING", "out.safetensors"],
    "interop": ["import", "MISSING", "--out", "out.safetensors"],
    "latents": ["sample", "--checkpoint", "MISSING", "--out", "out.png"],
    "metrics": ["evaluate", "--npz", "MISSING"],
    "sample": ["--checkpoint", "MISSING", "--out-dir", "out"],
    "train": ["--run-dir", "run", "--dataset", "latents", "--data-dir", "MISSING", "--max-steps", "1", "--no-progress",
              "--device", "cpu"],
    "bench": ["quality", "--tiny", "--fpdm", "MISSING", "--out", "out"],
}


def main_blocks() -> dict[str, list[str]]:
    """{module: the statements under its `if __name__ == "__main__":`} for every module of the package that has one."""
    blocks = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.If) and ast.unparse(node.test) in ("__name__ == '__main__'", '__name__ == "__main__"'):
                parts = path.relative_to(PACKAGE).with_suffix("").parts
                blocks[".".join(parts[:-1] if parts[-1] == "__main__" else parts)] = [ast.unparse(s) for s in node.body]
    return blocks


def test_every_python_m_module_ends_in_sys_exit_main():
    blocks = main_blocks()
    assert set(blocks) == set(BAD_VALUES), "a `python -m` module is missing from BAD_VALUES (or gone)"
    assert all(body == ["sys.exit(main())"] for body in blocks.values()), blocks


@pytest.mark.parametrize("module", sorted(BAD_VALUES))
def test_every_module_with_a_command_line_has_main_argv(module):
    main = importlib.import_module(f"fpdm_core.{module}").main
    assert callable(main) and "argv" in main.__code__.co_varnames[:main.__code__.co_argcount]


@pytest.mark.parametrize("module", sorted(BAD_VALUES))
def test_a_bad_flag_and_a_bad_value_end_in_one_line_and_exit_code_2(module, capsys):
    main = importlib.import_module(f"fpdm_core.{module}").main
    argv, flag = BAD_VALUES[module]
    assert run(main, [*argv[:-2], "--no-such-flag"]) == 2  # the bad value (last two) makes way for a bad flag
    assert "unrecognized arguments: --no-such-flag" in one_line(capsys)
    assert run(main, argv) == 2
    err = one_line(capsys)
    assert f"argument {flag}" in err and err.startswith(f"python -m fpdm_core.{module}")


@pytest.mark.parametrize("module", sorted(MISSING_INPUTS))
def test_a_missing_input_ends_in_one_line_and_exit_code_2(module, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # outputs (never written: the input is checked first) would land here
    missing = tmp_path / "missing.file"
    main = importlib.import_module(f"fpdm_core.{module}").main
    assert run(main, [missing if a == "MISSING" else a for a in MISSING_INPUTS[module]]) == 2
    err = one_line(capsys)
    assert err.startswith("error: ") and (str(missing) in err or "missing.file" in err), err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.safetensors").exists()


def test_parser_errors_are_one_line_with_exit_code_2(capsys):
    p = cli.ArgumentParser(prog="prog")
    p.add_argument("--n", type=cli.int_in(1, 9))
    p.add_argument("--x", type=cli.float_in(0.0, 1.0, lo_open=True))
    for argv, message in ((["--n", "10"], "argument --n: must be an integer in 1..9, got 10"),
                          (["--n", "x"], "argument --n: invalid int value: 'x'"),
                          (["--x", "0"], "argument --x: must be a finite number > 0.0 and <= 1.0, got '0'"),
                          (["--x", "nan"], "must be a finite number"), (["--y"], "unrecognized arguments: --y")):
        with pytest.raises(SystemExit) as e:
            p.parse_args(argv)
        assert e.value.code == 2
        err = one_line(capsys)
        assert err.startswith("prog: error: ") and message in err and err.rstrip().endswith("(usage: prog --help)")
    assert p.parse_args(["--n", "9", "--x", "1"]) == argparse.Namespace(n=9, x=1.0)


def test_fail_prints_any_error_as_one_line(capsys):
    assert cli.fail(ValueError("first line\n  second line")) == 2
    assert capsys.readouterr().err == "error: first line second line\n"


def test_check_output_file(tmp_path):
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    src.write_bytes(b"x")
    assert cli.check_output_file(dst, sources=[src]) == dst
    with pytest.raises(cli.OutputError, match="is the input file itself"):
        cli.check_output_file(tmp_path / "." / "src.bin", force=True, sources=[src])
    dst.write_bytes(b"y")
    with pytest.raises(cli.OutputError, match="exists: pass --force"):
        cli.check_output_file(dst)
    assert cli.check_output_file(dst, force=True) == dst
    with pytest.raises(cli.OutputError, match="is a folder"):
        cli.check_output_file(tmp_path)
    with pytest.raises(cli.OutputError, match="is a file, not a folder"):
        cli.check_output_file(src / "below.bin")


# ----------------------------------------------------------------------------- python -m fpdm_core.checkpoints
@pytest.fixture
def exported(tmp_path):
    src = tmp_path / "run.safetensors"
    model = build_model("FPDM-tiny", input_size=8)
    save_checkpoint(src, model=model, ema=copy.deepcopy(model), meta={"step": 1})
    return src


def test_checkpoints_export_never_writes_over_its_source_or_an_existing_file(exported, tmp_path, capsys):
    before = exported.read_bytes()
    assert run(checkpoints.main, [exported, exported]) == 2
    assert "is the input file itself" in one_line(capsys) and exported.read_bytes() == before
    assert run(checkpoints.main, [exported, tmp_path / "." / exported.name, "--force"]) == 2
    assert "is the input file itself" in one_line(capsys) and exported.read_bytes() == before
    dst = tmp_path / "release.safetensors"
    assert run(checkpoints.main, [exported, dst]) == 0
    assert run(checkpoints.main, [exported, dst, "--dtype", "float32"]) == 2
    assert "exists: pass --force" in one_line(capsys)
    assert load_checkpoint(dst).group("model")["pos_embed"].dtype == torch.float16
    assert run(checkpoints.main, [exported, dst, "--dtype", "float32", "--force"]) == 0
    assert load_checkpoint(dst).group("model")["pos_embed"].dtype == torch.float32
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"junk")
    assert run(checkpoints.main, [junk, tmp_path / "x.safetensors"]) == 2
    assert "not a readable safetensors checkpoint" in one_line(capsys)


# ----------------------------------------------------------------------------- python -m fpdm_core.train
@pytest.mark.parametrize("flag, value, message", [
    ("--max-steps", "0", "argument --max-steps: must be an integer >= 1, got 0"),
    ("--max-steps", "-5", "argument --max-steps: must be an integer >= 1, got -5"),
    ("--max-minutes", "-1", "argument --max-minutes: must be a finite number > 0.0"),
    ("--max-minutes", "nan", "argument --max-minutes: must be a finite number > 0.0"),
    ("--subset", "0", "argument --subset: must be an integer >= 1, got 0"),
    ("--threads", "-1", "argument --threads: must be an integer in 1.."),
    ("--lr", "nan", "argument --lr: must be a finite number > 0.0"),
    ("--seed", str(2**32), "argument --seed: must be an integer in 0..4294967295"),
])
def test_train_refuses_bad_numbers_before_anything_starts(tmp_path, capsys, flag, value, message):
    assert run(train.main, ["--run-dir", tmp_path / "r", *DIGITS, "--max-steps", "1", flag, value]) == 2
    assert message in one_line(capsys) and not (tmp_path / "r").exists()


def test_train_run_dir_that_is_a_file_or_unwritable(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for run_dir in (a_file, a_file / "sub"):
        assert run(train.main, ["--run-dir", run_dir, *DIGITS, "--max-steps", "1"]) == 2
        assert "is a file, not a folder" in one_line(capsys)
    assert run(train.main, ["--run-dir", tmp_path / "r", *DIGITS, "--max-steps", "1", "--resume", "--force"]) == 2
    assert "give one of them" in one_line(capsys)


def test_train_never_truncates_an_earlier_run_without_force(tmp_path, capsys):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text('{"step": 7, "loss": 0.5}\n')  # a run that logged but never saved
    assert run(train.main, ["--run-dir", run_dir, *DIGITS, "--max-steps", "1"]) == 2
    err = one_line(capsys)
    assert "holds an earlier run (metrics.jsonl): pass --resume" in err and "--force" in err
    assert metrics.read_text() == '{"step": 7, "loss": 0.5}\n' and not (run_dir / "config.json").exists()
    assert run(train.main, ["--run-dir", run_dir, *DIGITS, "--max-steps", "2", "--force"]) == 0
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2]
    assert load_checkpoint(run_dir / train.CHECKPOINT_NAME).meta["step"] == 2


def test_train_resume_from_a_weights_only_or_mismatched_checkpoint_is_one_line(tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert run(train.main, ["--run-dir", run_dir, *DIGITS, "--max-steps", "1"]) == 0
    ckpt = run_dir / train.CHECKPOINT_NAME
    full = load_checkpoint(ckpt)

    export = tmp_path / "export.safetensors"
    assert run(checkpoints.main, [ckpt, export]) == 0
    export.replace(ckpt)  # a release file where the training checkpoint was
    capsys.readouterr()
    assert run(train.main, ["--run-dir", run_dir, *DIGITS, "--max-steps", "2", "--resume"]) == 2
    assert "cannot be resumed: it holds no ema, optim, rng" in one_line(capsys)

    # the training state of this run, but the weights (and their config) of a narrower model
    narrow = build_model(full.model_config, hidden_size=16)
    tensors = {k: v for k, v in full.tensors.items() if not k.startswith(("model.", "ema."))}
    tensors.update({f"{g}.{k}": v.clone() for g in ("model", "ema") for k, v in narrow.state_dict().items()})
    meta = {**full.meta, "model": narrow.config.to_dict()}
    checkpoints.atomic_save(tensors, ckpt, {"fpdm": json.dumps(meta)})
    assert run(train.main, ["--run-dir", run_dir, *DIGITS, "--max-steps", "2", "--resume"]) == 2
    assert "model.pos_embed has shape (1, 49, 16), this run's model needs (1, 49, 32)" in one_line(capsys)


def test_the_shipped_checkpoints_pass_the_header_checks():
    for path in SHIPPED.values():
        meta, shapes = checkpoints.read_header(path)
        assert meta["format"] == FORMAT and shapes
