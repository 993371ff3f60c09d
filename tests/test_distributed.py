"""Data-parallel training (torchrun, Gloo on the CPU) and the GPU-path switches, exercised on the CPU."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import needs_fmnist
from safetensors.torch import load_file

from fpdm_core import distributed
from fpdm_core.checkpoints import load_checkpoint
from fpdm_core.models import DiTBlock, build_model
from fpdm_core.train import TrainConfig, Trainer, TrainForward, enable_tf32, fpdm_train_forward, parse_args, train


# ----------------------------------------------------------------------------- helpers
def test_from_env_reads_torchrun_variables():
    assert distributed.from_env({}) is None
    assert distributed.from_env({"RANK": "1", "WORLD_SIZE": "4"}) is None  # LOCAL_RANK missing
    assert distributed.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    with pytest.raises(ValueError, match="inconsistent"):
        distributed.from_env({"RANK": "4", "WORLD_SIZE": "4", "LOCAL_RANK": "0"})


def test_setup_without_torchrun_is_one_process(monkeypatch):
    for k in distributed.ENV_VARS:
        monkeypatch.delenv(k, raising=False)
    info, device = distributed.setup("cpu")
    assert info == distributed.DistInfo() and not info.enabled and info.is_main and device.type == "cpu"
    x = torch.arange(6.0)
    assert distributed.all_reduce_mean(x, info) is x and distributed.rank0_decides(True, info, device)


def test_shards_tile_the_global_batch():
    x = torch.arange(12)
    parts = [distributed.DistInfo(rank=r, world_size=3).shard(x) for r in range(3)]
    assert torch.equal(torch.cat(parts), x)
    with pytest.raises(ValueError, match="not divisible by the 5 processes"):
        distributed.DistInfo(rank=0, world_size=5).shard(x)


def test_global_batch_must_split_evenly():
    cfg = TrainConfig(model="FPDM-tiny", dataset="digits", batch_size=33, max_steps=1)
    with pytest.raises(ValueError, match="global batch size 33"):
        Trainer(cfg, dist=distributed.DistInfo(rank=0, world_size=2))


# ----------------------------------------------------------------------------- the DDP-facing forward
def perturbed(name, seed=0, **options):
    """A model with small random weights everywhere (at init adaLN-Zero makes most blocks the identity).

    Label dropout is random: off, so that two passes are comparable.
    """
    torch.manual_seed(seed)
    model = build_model(name, class_dropout=0.0, **options)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def batch(B=4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, 1, 28, 28, generator=g), torch.tensor([0, 999, 500, 3])[:B], torch.tensor([0, 1, 10, 9])[:B]


def loss_and_grads(fn, model):
    model.zero_grad(set_to_none=True)
    x, t, y = batch()
    out = fn(x, t, y)
    out.square().mean().backward()
    return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def assert_same(a, b, **tol):
    torch.testing.assert_close(a[0], b[0], **tol)
    assert a[1].keys() == b[1].keys()
    for k in a[1]:
        torch.testing.assert_close(a[1][k], b[1][k], **tol, msg=k)


def test_train_forward_is_the_s_jfb_path_and_touches_every_parameter():
    model = perturbed("FPDM-tiny")
    ref = loss_and_grads(lambda x, t, y: fpdm_train_forward(model, x, t, y, 2, 3), model)
    wrapped = TrainForward(model)
    got = loss_and_grads(lambda x, t, y: wrapped(x, t, y, 2, 3)[0], model)
    assert_same(got, ref, rtol=0, atol=0)
    assert [k for k, _ in wrapped.named_parameters()] == [f"model.{k}" for k, _ in model.named_parameters()]
    assert all(g.abs().sum() > 0 for k, g in got[1].items() if "y_embedder" not in k)  # no unused parameters


@pytest.mark.parametrize("name", ["FPDM-tiny", "DiT-tiny"])
def test_gradient_checkpointing_changes_memory_not_numbers(name, monkeypatch):
    model, checkpointed = perturbed(name), perturbed(name, grad_checkpoint=True)
    assert list(model.state_dict()) == list(checkpointed.state_dict())
    ref = loss_and_grads(lambda x, t, y: TrainForward(model)(x, t, y, 1, 2)[0], model)
    calls, block_forward = [], DiTBlock.forward

    def counted(block, x, c):
        calls.append(block)
        return block_forward(block, x, c)

    monkeypatch.setattr(DiTBlock, "forward", counted)
    got = loss_and_grads(lambda x, t, y: TrainForward(checkpointed)(x, t, y, 1, 2)[0], checkpointed)
    assert_same(got, ref, rtol=1e-6, atol=1e-7)
    explicit = [*checkpointed.blocks_pre, *checkpointed.blocks_post] if name.startswith("FPDM") else checkpointed.blocks
    runs = [sum(c is b for c in calls) for b in explicit]
    assert runs == [2] * len(explicit)  # each explicit block ran again in backward
    calls.clear()
    with torch.no_grad():  # sampling: no recomputation
        x, t, y = batch()
        checkpointed.eval()(x, t, y)
    assert [sum(c is b for c in calls) for b in explicit] == [1] * len(explicit)


def test_trainer_patches_nothing():
    """Gradient checkpointing and label dropout are options of the model, not edits of its instance."""
    cfg = TrainConfig(model="FPDM-tiny", dataset="digits", batch_size=8, max_steps=1, grad_checkpoint=True)
    trainer = Trainer(cfg)
    assert trainer.model.grad_checkpoint and trainer.model.y_embedder.dropout == trainer.model.config.class_dropout > 0
    assert not any("forward" in vars(m) for m in trainer.model.modules())


def test_compiled_fixed_point_map_matches_eager():
    """torch.compile through dynamo + AOTAutograd ("aot_eager": no C++ code generation, fast on a CPU)."""
    model = perturbed("FPDM-tiny")
    ref = loss_and_grads(lambda x, t, y: TrainForward(model)(x, t, y)[0], model)
    compiled = TrainForward(model, compile="aot_eager")
    assert compiled.fixed_point_map is not None
    got = loss_and_grads(lambda x, t, y: compiled(x, t, y)[0], model)
    assert_same(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not os.environ.get("FPDM_TEST_INDUCTOR"),
                    reason="inductor compiles C++ for minutes on a small CPU; set FPDM_TEST_INDUCTOR=1 to run")
def test_compile_flag_with_inductor():
    cfg = TrainConfig(model="FPDM-tiny", dataset="digits", batch_size=16, max_steps=2, precision="fp32", compile=True,
                      no_grad_iters=(0, 2), grad_iters=(1, 2))
    ref = TrainConfig(**{**cfg.__dict__, "compile": False})
    a, b = Trainer(cfg), Trainer(ref)
    for _ in range(2):
        ra, rb = a.step(), b.step()
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4)


def test_bf16_autocast_step_on_cpu():
    cfg = TrainConfig(model="FPDM-tiny", dataset="digits", batch_size=8, max_steps=2, precision="bf16",
                      grad_checkpoint=True, no_grad_iters=(0, 1), grad_iters=(1, 2))
    trainer = Trainer(cfg)
    assert trainer.precision == "bf16"
    rows = [trainer.step() for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert next(trainer.model.parameters()).dtype == torch.float32  # autocast: weights stay float32


def test_tf32_only_on_cuda():
    assert enable_tf32(torch.device("cpu")) is False
    if torch.cuda.is_available():
        assert enable_tf32(torch.device("cuda")) and torch.get_float32_matmul_precision() == "high"


def test_flags_parse():
    cfg, _ = parse_args(["--run-dir", "x", "--max-steps", "1", "--compile", "--grad-checkpoint", "--no-tf32"])
    assert cfg.compile and cfg.grad_checkpoint and not cfg.tf32
    cfg, _ = parse_args(["--run-dir", "x", "--max-steps", "1"])
    assert not cfg.compile and not cfg.grad_checkpoint and cfg.tf32


# ----------------------------------------------------------------------------- torchrun, two CPU processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FLAGS = dict(model="FPDM-tiny", subset=256, batch_size=32, lr=2e-3, warmup_steps=2, no_grad_iters=(0, 3),
             grad_iters=(1, 3), precision="fp32", device="cpu", log_every=1, sample_every=0, save_every=100)


def cli(flags: dict) -> list[str]:
    out = []
    for k, v in flags.items():
        out.append("--" + k.replace("_", "-"))
        out.extend(str(x) for x in (v if isinstance(v, tuple) else (v,)))
    return out


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


TRAIN_AND_DUMP = """
import os, sys
from pathlib import Path
from safetensors.torch import save_file
import fpdm_core.train as T

train = T.train


def train_and_dump(*args, **kwargs):
    trainer = train(*args, **kwargs)
    weights = {k: v.detach().cpu().contiguous() for k, v in trainer.model.state_dict().items()}
    save_file(weights, Path(sys.argv[1]) / f"rank{os.environ['RANK']}.safetensors")
    return trainer


T.train = train_and_dump
sys.exit(T.main(sys.argv[2:]))
"""


@needs_fmnist
def test_torchrun_two_cpu_ranks_follow_one_process_and_resume(tmp_path):
    single = tmp_path / "single"
    train(TrainConfig(**FLAGS, max_steps=6), single, progress=False)
    ref = metrics(single)

    ddp, dump = tmp_path / "ddp", tmp_path / "dump"
    dump.mkdir()
    script = tmp_path / "train_and_dump.py"  # the train CLI, then every rank writes its final weights
    script.write_text(TRAIN_AND_DUMP)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in distributed.ENV_VARS:
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           str(script), str(dump), "--run-dir", str(ddp), *cli(FLAGS), "--max-steps", "4", "--threads", "1",
           "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("saved ") == 1  # rank 0 alone reports (and saves)

    # every rank holds the same weights, and rank 0 saved exactly those
    w0, w1 = load_file(dump / "rank0.safetensors"), load_file(dump / "rank1.safetensors")
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    ckpt = load_checkpoint(ddp / "checkpoint.safetensors")
    assert ckpt.meta["world_size"] == 2 and ckpt.meta["step"] == 4
    assert all(torch.equal(ckpt.group("model")[k], w0[k]) for k in w0)

    # the global batch's losses match the one-process run; the iteration counts are drawn identically
    got = metrics(ddp)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for a, b in zip(got, ref[:4]):
        assert (a["n_no_grad"], a["n_grad"]) == (b["n_no_grad"], b["n_grad"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["fp_residual"] == (None if b["fp_residual"] is None else pytest.approx(b["fp_residual"], rel=1e-4))

    # resumable, here on one process: steps 5-6 continue the same trajectory
    resumed = train(TrainConfig(**FLAGS, max_steps=6), ddp, resume=True, progress=False)
    got = metrics(ddp)[4:]
    assert [r["step"] for r in got] == [5, 6]
    for a, b in zip(got, ref[4:]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
    final = load_checkpoint(single / "checkpoint.safetensors").group("model")
    for k, v in resumed.model.state_dict().items():
        torch.testing.assert_close(v, final[k], rtol=1e-4, atol=1e-5, msg=k)
