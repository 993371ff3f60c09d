"""S-JFB training: gradient paths, iteration draws, recompute, loss, exact resume, the command line."""
from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_fmnist

from fpdm_core import sample as sample_cli
from fpdm_core.checkpoints import SHIPPED, CheckpointError, atomic_save, load_checkpoint, load_model, read_header
from fpdm_core.data import to_uint8
from fpdm_core.diffusion import DiffusionConfig, GaussianDiffusion
from fpdm_core.models import FPDM, PRESETS, build_model
from fpdm_core.sampling import SamplerConfig, sample
from fpdm_core.options import options_of
from fpdm_core.train import TrainConfig, Trainer, build_parser, draw_iterations, fpdm_train_forward, main, train

ROOT = Path(__file__).resolve().parent.parent



def perturbed(seed=0, **overrides):
    model = build_model("FPDM-tiny", input_size=8, **overrides)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def batch(seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 1000, (n,), generator=g), torch.arange(n)


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> Path:
    """A Fashion-MNIST-shaped folder of 64 random 8x8 images (IDX gzip), so Trainer runs in milliseconds."""
    folder = tmp_path_factory.mktemp("fake_fmnist")
    rng = np.random.default_rng(0)

    def write(name, array):
        header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
        (folder / name).write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))

    write("train-images-idx3-ubyte.gz", rng.integers(0, 256, (64, 8, 8)))
    write("train-labels-idx1-ubyte.gz", np.arange(64) % 10)
    return folder


def tiny_config(data_dir, **overrides) -> TrainConfig:
    base = dict(model="FPDM-tiny", data_dir=str(data_dir), batch_size=16, lr=2e-3, warmup_steps=2,
                no_grad_iters=(0, 2), grad_iters=(1, 2), precision="fp32", device="cpu", sample_every=0,
                log_every=1, save_every=100, max_steps=6)
    return TrainConfig(**{**base, **overrides})


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- iteration draws
def test_defaults_follow_the_paper():
    cfg = TrainConfig(max_steps=1)
    assert cfg.gradient == "sjfb" and cfg.no_grad_iters == (0, 10) and cfg.grad_iters == (1, 12)


@pytest.mark.parametrize("no_grad, grad", [((0, 3), (1, 4)), ((2, 2), (3, 5)), ((0, 0), (1, 1))])
def test_draw_iterations_ranges_are_inclusive_and_gradients_keep_their_meaning(no_grad, grad):
    draws = {}
    for gradient in ("sjfb", "jfb", "full"):
        cfg = TrainConfig(gradient=gradient, no_grad_iters=no_grad, grad_iters=grad, max_steps=1)
        gen = torch.Generator().manual_seed(0)
        draws[gradient] = [draw_iterations(cfg, gen) for _ in range(400)]
    ng, g = zip(*draws["sjfb"])
    assert set(ng) == set(range(no_grad[0], no_grad[1] + 1))
    assert set(g) == set(range(grad[0], grad[1] + 1))
    ng, g = zip(*draws["jfb"])  # JFB: one gradient iteration after the no-grad ones
    assert set(g) == {1} and set(ng) == set(range(no_grad[0], no_grad[1] + 1))
    ng, g = zip(*draws["full"])  # full backprop: every iteration with gradient
    assert set(ng) == {0} and set(g) == set(range(no_grad[0] + grad[0], no_grad[1] + grad[1] + 1))
    assert [a + b for a, b in draws["sjfb"]] == [b for _, b in draws["full"]]  # same draws, regrouped
    cfg, gen = TrainConfig(no_grad_iters=no_grad, grad_iters=grad, max_steps=1), torch.Generator().manual_seed(0)
    assert [draw_iterations(cfg, gen) for _ in range(400)] == draws["sjfb"]  # the generator decides everything


# ----------------------------------------------------------------------------- gradient paths
@pytest.mark.parametrize("recompute", [False, True])
def test_no_grad_phase_builds_no_autograd_graph(monkeypatch, recompute):
    model = perturbed()
    calls = []
    original = model.fixed_point_map

    def spy(z, inj, c):
        out = original(z, inj, c)
        calls.append(dict(grad=torch.is_grad_enabled(), z=z.requires_grad, inj=inj.requires_grad,
                          c=c.requires_grad, graph=out.grad_fn is not None))
        return out

    monkeypatch.setattr(model, "fixed_point_map", spy)
    out = fpdm_train_forward(model, *batch(), n_no_grad=3, n_grad=2, recompute_iters=recompute)
    assert len(calls) == 5
    for call in calls[:3]:
        assert call == dict(grad=False, z=False, inj=False, c=False, graph=False)
    assert calls[3] == dict(grad=True, z=False, inj=True, c=True, graph=True)  # starts from a detached iterate
    assert calls[4] == dict(grad=True, z=True, inj=True, c=True, graph=True)
    assert out.requires_grad


def _grads(model, n_no_grad, n_grad, detach_injection=False):
    model.zero_grad(set_to_none=True)
    hook = model.block_pre_projection.register_forward_hook(lambda m, i, o: o.detach()) if detach_injection else None
    try:
        fpdm_train_forward(model, *batch(), n_no_grad=n_no_grad, n_grad=n_grad).square().mean().backward()
    finally:
        if hook is not None:
            hook.remove()
    return {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("n_no_grad", [0, 2])
def test_gradient_reaches_the_pre_blocks_only_through_the_injection(n_no_grad):
    model = perturbed(pre_depth=2)
    full = _grads(model, n_no_grad, 3)
    cut = _grads(model, n_no_grad, 3, detach_injection=True)
    upstream = [n for n in full if n.startswith(("blocks_pre.", "x_embedder.", "block_pre_projection."))]
    assert len(upstream) == 2 * 10 + 2 + 2
    for name in upstream:
        assert full[name].abs().sum() > 0, name  # reached through the injection ...
        assert torch.count_nonzero(cut[name]) == 0, name  # ... and by no other path (z0 is detached)
    downstream = [n for n in full if n.startswith(("block_fixed_point", "blocks_post.", "final_layer.", "t_embedder."))]
    for name in downstream:  # everything after the injection is untouched by cutting it
        assert full[name].abs().sum() > 0 and torch.allclose(full[name], cut[name], rtol=1e-5, atol=1e-8), name


def test_recompute_gives_the_same_gradients():
    model = perturbed()
    plain = _grads(model, 1, 3)
    model.zero_grad(set_to_none=True)
    fpdm_train_forward(model, *batch(), n_no_grad=1, n_grad=3, recompute_iters=True).square().mean().backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, plain[name], rtol=1e-5, atol=1e-7), name


def test_training_forward_computes_the_same_output_as_the_solver_forward():
    model = perturbed()
    x, t, y = batch()
    with torch.no_grad():
        reference = model(x, t, y, max_iter=5).out
    out = fpdm_train_forward(model, x, t, y, n_no_grad=2, n_grad=3)
    assert torch.allclose(out, reference, atol=1e-6)


def hand_loop_forward(model, x, t, y, n_no_grad, n_grad):
    """The S-JFB forward as it was written before it went through `solve` (the reference)."""
    enc = model.encode(x, t, y)
    z = enc.x_pre.detach()
    with torch.no_grad():
        for _ in range(n_no_grad):
            z = model.fixed_point_map(z, enc.inj.detach(), enc.c_fp.detach())
    for _ in range(n_grad):
        z = model.fixed_point_map(z, enc.inj, enc.c_fp)
    return model.decode(z, enc.c_io)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("n_no_grad, n_grad", [(0, 2), (1, 1), (4, 3)])
def test_the_no_grad_phase_through_solve_equals_the_hand_loop_bit_for_bit(precision, n_no_grad, n_grad):
    model = perturbed()
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16")
    results = []
    for forward in (hand_loop_forward, fpdm_train_forward):
        model.zero_grad(set_to_none=True)
        with autocast:
            loss = forward(model, *batch(), n_no_grad, n_grad).float().square().mean()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (ref_loss, ref_grads), (loss, grads) = results
    assert torch.equal(loss, ref_loss)
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))


def test_no_grad_stats_are_the_residuals_of_the_picard_iterations():
    model = perturbed()
    x, t, y = batch()
    out, stats = fpdm_train_forward(model, x, t, y, n_no_grad=3, n_grad=1, return_stats=True)
    assert stats.iterations == 3 and stats.rel_trace.shape == (3, 3)
    with torch.no_grad():  # by hand: the 3rd map evaluation against the 2nd iterate
        enc = model.encode(x, t, y)
        z2 = model.fixed_point_map(model.fixed_point_map(enc.x_pre, enc.inj, enc.c_fp), enc.inj, enc.c_fp)
        f3 = model.fixed_point_map(z2, enc.inj, enc.c_fp)
    rel = (f3 - z2).flatten(1).norm(dim=1) / (f3.flatten(1).norm(dim=1) + 1e-9)  # (B,)
    torch.testing.assert_close(stats.final_rel, rel, rtol=1e-5, atol=0)
    assert fpdm_train_forward(model, x, t, y, n_no_grad=0, n_grad=1, return_stats=True)[1] is None


def test_jfb_gradient_differs_from_full_backprop():
    """With the same 4 iterations, one-step JFB and backprop through all of them give different gradients."""
    model = perturbed()
    jfb, full = _grads(model, 3, 1), _grads(model, 0, 4)
    name = "block_fixed_point.mlp.fc1.weight"
    assert not torch.allclose(jfb[name], full[name], rtol=1e-3)


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("fields, message", [
    (dict(model="FPDM-XXL"), "TrainConfig.model must be one of DiT-FM-M, .*; got 'FPDM-XXL'"),
    (dict(gradient="bptt"), "TrainConfig.gradient must be one of sjfb, jfb, full; got 'bptt'"),
    (dict(grad_iters=(0, 3)), "grad_iters must be a range"),
    (dict(no_grad_iters=(3, 1)), "no_grad_iters must be a range"),
    (dict(batch_size=0), "TrainConfig.batch_size must be an integer >= 1, got 0"),
    (dict(lr=0.0), r"TrainConfig.lr must be a finite number > 0.0, got 0.0"),
    (dict(ema_decay=1.5), r"TrainConfig.ema_decay must be a finite number >= 0.0 and <= 1.0, got 1.5"),
])
def test_bad_train_config_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{"max_steps": 1, **fields})
    with pytest.raises(ValueError, match="give --max-steps or --max-minutes"):
        TrainConfig()


TRAIN_OPTS = {**options_of(TrainConfig), **options_of(DiffusionConfig)}
SHAPED = {"model_overrides", "diffusion", "no_grad_iters", "grad_iters"}  # flags of their own shape


def test_the_train_command_line_has_each_declared_field_with_its_default_help_and_choices():
    assert {f.name for f in dataclasses.fields(TrainConfig)} - set(TRAIN_OPTS) == SHAPED
    actions = {a.dest: a for a in build_parser()._actions}
    assert SHAPED - {"diffusion"} <= set(actions)
    for name, opt in TRAIN_OPTS.items():
        a = actions[name]
        assert opt.flag in a.option_strings and a.default == opt.default and opt.help in a.help, name
        assert tuple(a.choices or ()) == opt.choices, name


def _limit_edges(opt):
    """(value, accepted) at each declared limit and one representable step beyond it."""
    out = []
    for limit, is_open, outward in ((opt.lo, opt.lo_open, -1), (opt.hi, opt.hi_open, 1)):
        if limit is not None:
            beyond = limit + outward if opt.type is int else math.nextafter(limit, outward * math.inf)
            out += [(opt.type(limit), not is_open), (opt.type(beyond), False)]
    return out


@pytest.mark.parametrize("name", [name for name, opt in TRAIN_OPTS.items() if opt.numeric])
def test_each_training_limit_is_the_same_for_the_config_and_its_flag(name):
    opt = TRAIN_OPTS[name]
    for value, accepted in _limit_edges(opt):
        try:
            if name in options_of(DiffusionConfig):
                DiffusionConfig(beta_schedule="cosine", **{name: value})  # cosine: any T
            else:
                TrainConfig(**{"max_minutes" if name == "max_steps" else "max_steps": 1, name: value})
            library = True
        except ValueError:
            library = False
        try:
            build_parser().parse_args(["--run-dir", "x", opt.flag, repr(value)])
            flag = True
        except SystemExit:
            flag = False
        assert (library, flag) == (accepted, accepted), (name, value)


@pytest.mark.parametrize("overrides, message", [
    ({"depth_pre": 2}, "model override 'depth_pre' is not allowed"),
    ({"input_size": 8}, "model override 'input_size' is not allowed"),  # the data decides it
    ({"pre_depth": 2.5}, "pre_depth=2.5 must be an integer"),
    ({"pre_depth": True}, "pre_depth=True must be an integer"),
    ({"learn_sigma": 1}, "learn_sigma=1 must be true or false"),
    ({"num_heads": 3}, "not divisible by num_heads"),  # ModelConfig's own checks apply
])
def test_bad_model_overrides_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(model="FPDM-tiny", model_overrides=overrides, max_steps=1)


def test_model_overrides_travel_with_the_checkpoint_and_block_a_different_resume(fake_data, tmp_path):
    overrides = {"pre_depth": 2, "post_depth": 3, "class_dropout": 0}  # an int is accepted for a float field
    cfg = tiny_config(fake_data, model_overrides=overrides, max_steps=2)
    presets = dict(PRESETS)
    trainer = train(cfg, tmp_path / "run", progress=False)
    assert PRESETS == presets  # overrides never edit the global presets
    assert (len(trainer.model.blocks_pre), len(trainer.model.blocks_post)) == (2, 3)
    assert trainer.model.config.class_dropout == 0
    path = tmp_path / "run" / "checkpoint.safetensors"
    assert load_checkpoint(path).meta["train"]["model_overrides"] == overrides
    reloaded = load_model(path)
    assert reloaded.config == trainer.ema.config
    assert all(torch.equal(v, trainer.ema.state_dict()[k]) for k, v in reloaded.state_dict().items())
    x, t, y = batch()
    with torch.no_grad():  # equal weights at other addresses: kernels may round the last bit differently
        torch.testing.assert_close(reloaded(x, t, y, max_iter=2).out, trainer.ema(x, t, y, max_iter=2).out,
                                   rtol=0, atol=1e-6)
    with pytest.raises(CheckpointError, match="cannot resume: model_overrides"):
        train(tiny_config(fake_data, max_steps=3), tmp_path / "run", resume=True, progress=False)
    assert TrainConfig.from_meta(load_checkpoint(path).meta) == cfg  # restored with everything else


def _rewrite_meta(path, edit) -> None:
    """Replace a checkpoint's metadata by `edit(meta)`, keeping its tensors."""
    ckpt = load_checkpoint(path)
    atomic_save(ckpt.tensors, path, {"fpdm": json.dumps(edit(dict(ckpt.meta)))})


def _as_written_before_the_renames(meta: dict) -> dict:
    """The layout of earlier versions: the gradient estimator under "method", no diffusion or model overrides."""
    train_meta = {("method" if k == "gradient" else k): v for k, v in meta["train"].items() if k != "model_overrides"}
    return {**{k: v for k, v in meta.items() if k != "diffusion"}, "train": train_meta}


def test_checkpoints_of_earlier_versions_still_resume_and_report_their_config(fake_data, tmp_path):
    cfg = tiny_config(fake_data, gradient="jfb", max_steps=2)
    train(cfg, tmp_path / "old", progress=False)
    train(tiny_config(fake_data, gradient="jfb", max_steps=3), tmp_path / "new", progress=False)
    path = tmp_path / "old" / "checkpoint.safetensors"
    _rewrite_meta(path, _as_written_before_the_renames)
    old = load_checkpoint(path).meta
    assert old["train"]["method"] == "jfb" and "gradient" not in old["train"] and "diffusion" not in old
    assert TrainConfig.from_meta(old) == cfg  # "method" read as the gradient, the rest defaulted
    trainer = train(tiny_config(fake_data, gradient="jfb", max_steps=3), tmp_path / "old", resume=True, progress=False)
    assert trainer.step_count == 3
    assert [(r["step"], r["loss"]) for r in metrics(tmp_path / "old")] == \
        [(r["step"], r["loss"]) for r in metrics(tmp_path / "new")]  # as if never interrupted
    resaved = load_checkpoint(path).meta  # saved again in today's layout
    assert resaved["train"]["gradient"] == "jfb" and "method" not in resaved["train"]
    assert resaved["diffusion"] == DiffusionConfig().to_dict()


def test_the_shipped_checkpoints_report_their_training_config():
    for kind, path in SHIPPED.items():
        if not path.is_file():
            continue
        meta = read_header(path)[0]
        cfg = TrainConfig.from_meta(meta)
        assert cfg.model == meta["train"]["model"] and cfg.gradient == meta["train"].get("method", "sjfb")
        assert cfg.diffusion == DiffusionConfig()


@pytest.mark.parametrize("meta, message", [
    ({"train": {"model": "FPDM-tiny", "max_steps": 1, "optimizer": "sgd"}}, r"unknown training config field\(s\) \['optimizer'\]"),
    ({"train": {"model": "FPDM-tiny", "max_steps": 1, "diffusion": {}}}, "unknown training config field"),
    ({"train": {"model": "FPDM-tiny", "max_steps": 1}, "diffusion": {"prediction": "x0"}}, "prediction must be one of"),
])
def test_unreadable_training_metadata_is_refused(meta, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_meta(meta)


# ----------------------------------------------------------------------------- Trainer
@pytest.mark.parametrize("gradient, check", [("jfb", lambda r: r["n_grad"] == 1), ("full", lambda r: r["n_no_grad"] == 0),
                                           ("sjfb", lambda r: 0 <= r["n_no_grad"] <= 2 and 1 <= r["n_grad"] <= 2)])
def test_trainer_steps_record_the_iteration_draws(fake_data, gradient, check):
    trainer = Trainer(tiny_config(fake_data, gradient=gradient))
    rows = [trainer.step() for _ in range(3)]
    assert all(check(r) and np.isfinite(r["loss"]) for r in rows)
    for r in rows:  # the no-grad phase's final relative residual, when it ran
        assert (r["fp_residual"] is None) == (r["n_no_grad"] == 0)
        assert r["fp_residual"] is None or 0 < r["fp_residual"] < 10
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[0]["lr"] == pytest.approx(1e-3)  # warm-up: 1/2 of lr


def test_trainer_trains_dit_too(fake_data):
    trainer = Trainer(tiny_config(fake_data, model="DiT-tiny"))
    row = trainer.step()
    assert np.isfinite(row["loss"]) and "n_grad" not in row and "fp_residual" not in row


@needs_fmnist
def test_loss_falls_over_a_short_run_on_real_fashion_mnist():
    cfg = TrainConfig(model="FPDM-tiny", subset=256, batch_size=32, max_steps=60, lr=2e-3, warmup_steps=5,
                      no_grad_iters=(0, 2), grad_iters=(1, 2), precision="fp32", device="cpu", sample_every=0)
    trainer = Trainer(cfg)
    assert trainer.x.shape == (256, 1, 28, 28)
    losses = [trainer.step()["loss"] for _ in range(60)]
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert 0.8 < first < 1.2  # zero-initialised output: the loss starts at E[eps^2] = 1
    assert last < 0.8 * first


def test_resume_equals_an_uninterrupted_run(fake_data, tmp_path):
    """6 steps straight vs 3 + 3 with a checkpoint in between, crossing an epoch (4 batches of 16)."""
    train(tiny_config(fake_data, max_steps=6), tmp_path / "straight", progress=False)
    train(tiny_config(fake_data, max_steps=3), tmp_path / "split", progress=False)
    train(tiny_config(fake_data, max_steps=6), tmp_path / "split", resume=True, progress=False)
    a, b = metrics(tmp_path / "straight"), metrics(tmp_path / "split")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [(r["n_no_grad"], r["n_grad"], r["grad_norm"]) for r in a] == [(r["n_no_grad"], r["n_grad"], r["grad_norm"])
                                                                         for r in b]
    ca, cb = load_checkpoint(tmp_path / "straight" / "checkpoint.safetensors"), \
        load_checkpoint(tmp_path / "split" / "checkpoint.safetensors")
    assert ca.meta["step"] == cb.meta["step"] == 6
    assert ca.tensors.keys() == cb.tensors.keys()
    assert all(torch.equal(ca.tensors[k], cb.tensors[k]) for k in ca.tensors)  # model, EMA, AdamW, RNG


def test_resume_after_a_crash_does_not_duplicate_metrics_rows(fake_data, tmp_path, monkeypatch):
    cfg = tiny_config(fake_data, max_steps=6, save_every=2)
    train(cfg, tmp_path / "straight", progress=False)
    original = Trainer.step

    def crash_after_step_3(self):
        if self.step_count == 3:  # step 3 was logged; the last checkpoint is step 2
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "step", crash_after_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "crashed", progress=False)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "crashed" / "checkpoint.safetensors").meta["step"] == 2
    train(cfg, tmp_path / "crashed", resume=True, progress=False)
    rows = metrics(tmp_path / "crashed")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in rows] == [r["loss"] for r in metrics(tmp_path / "straight")]


# ----------------------------------------------------------------------------- command line
def _cli(run_dir, data_dir, *extra):
    return ["--run-dir", str(run_dir), "--data-dir", str(data_dir), "--batch-size", "16", "--sample-every", "0",
            "--log-every", "1", "--no-progress", "--device", "cpu", "--precision", "fp32", "--warmup-steps", "1",
            "--no-grad-iters", "0", "1", "--grad-iters", "1", "2", *extra]


def test_cli_with_a_bad_flag_exits_2_with_a_message(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "fpdm_core.train", "--run-dir", str(tmp_path / "r"), "--model",
                           "FPDM-XXL/2", "--max-steps", "1"], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=120)
    assert proc.returncode == 2
    assert "invalid choice: 'FPDM-XXL/2'" in proc.stderr and "usage: python -m fpdm_core.train" in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flags, message", [
    (["--max-steps", "1", "--gradient", "bptt"], "invalid choice: 'bptt'"),
    (["--max-steps", "1", "--grad-iters", "0", "3"], "grad_iters must be a range"),
    (["--max-steps", "1", "--no-grad-iters", "4"], "expected 2 arguments"),
    (["--max-steps", "x"], "invalid int value: 'x'"),
    (["--max-steps", "1", "--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got 0"),
    (["--max-steps", "1", "--num-timesteps", "10"], "linear schedule needs num_timesteps > 20"),
    ([], "give --max-steps or --max-minutes"),
])
def test_main_refuses_bad_flags_with_exit_status_2(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        main(["--run-dir", str(tmp_path / "r"), *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--log-every", "--save-every"])
def test_main_refuses_zero_logging_intervals(tmp_path, fake_data, capsys, flag):
    with pytest.raises(SystemExit) as e:
        main(_cli(tmp_path / "r", fake_data, "--max-steps", "2", flag, "0"))
    assert e.value.code == 2 and f"argument {flag}: must be an integer >= 1, got 0" in capsys.readouterr().err


def test_main_model_override_flags(tmp_path, fake_data, capsys):
    run = tmp_path / "run"
    assert main(_cli(run, fake_data, "--model", "FPDM-tiny", "--max-steps", "1", "--model-override", "pre_depth=2",
                     "--model-override", "learn_sigma=true")) == 0
    assert json.loads((run / "config.json").read_text())["model_overrides"] == {"pre_depth": 2, "learn_sigma": True}
    model = load_model(run / "checkpoint.safetensors")
    assert model.config.pre_depth == 2 and model.config.learn_sigma
    for flag, message in (("pre_depth", "expected KEY=VALUE"), ("pre_depth=two", "must be a number or true/false"),
                          ("depth=2.5", "depth=2.5 must be an integer")):
        with pytest.raises(SystemExit) as e:
            main(_cli(tmp_path / "bad", fake_data, "--max-steps", "1", "--model-override", flag))
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_main_runs_writes_checkpoint_and_metrics_and_refuses_a_different_model_on_resume(tmp_path, fake_data, capsys):
    run = tmp_path / "run"
    assert main(_cli(run, fake_data, "--model", "FPDM-tiny", "--max-steps", "3")) == 0
    assert "at step 3" in capsys.readouterr().out
    assert [r["step"] for r in metrics(run)] == [1, 2, 3]
    assert json.loads((run / "config.json").read_text())["model"] == "FPDM-tiny"
    model = load_model(run / "checkpoint.safetensors")
    assert isinstance(model, FPDM) and model.config.input_size == 8
    before = (run / "checkpoint.safetensors").read_bytes()

    assert main(_cli(run, fake_data, "--model", "DiT-tiny", "--max-steps", "4", "--resume")) == 2
    err = capsys.readouterr().err
    assert "cannot resume: model is 'DiT-tiny' but the checkpoint used 'FPDM-tiny'" in err
    assert main(_cli(run, fake_data, "--model", "FPDM-tiny", "--max-steps", "4")) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert (run / "checkpoint.safetensors").read_bytes() == before

    assert main(_cli(run, fake_data, "--model", "FPDM-tiny", "--max-steps", "4", "--resume")) == 0
    assert load_checkpoint(run / "checkpoint.safetensors").meta["step"] == 4
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4]


def test_a_cosine_v_model_trained_from_the_cli_samples_with_its_own_process_after_reload(tmp_path, fake_data, capsys):
    """Done-when of issue 13: the process chosen at training travels with the weights; sampling needs no flags."""
    run, out = tmp_path / "run", tmp_path / "samples"
    assert main(_cli(run, fake_data, "--model", "FPDM-tiny", "--max-steps", "2", "--num-timesteps", "500",
                     "--beta-schedule", "cosine", "--prediction", "v")) == 0
    want = DiffusionConfig(num_timesteps=500, beta_schedule="cosine", prediction="v")
    ckpt = run / "checkpoint.safetensors"
    assert load_checkpoint(ckpt).meta["diffusion"] == want.to_dict()
    assert json.loads((run / "config.json").read_text())["diffusion"] == want.to_dict()
    assert sample_cli.main(["--checkpoint", str(ckpt), "--n", "4", "--steps", "3", "--iterations", "2", "--seed", "5",
                            "--device", "cpu", "--no-progress", "--out-dir", str(out)]) == 0  # no diffusion flags
    assert json.loads((out / "record.json").read_text())["diffusion"] == want.to_dict()
    stored = np.load(out / "samples.npz")
    model, labels = load_model(ckpt), torch.from_numpy(stored["labels"])

    def images(diffusion):
        x, _ = sample(model, diffusion, labels, SamplerConfig(steps=3, iterations=2),
                      generator=torch.Generator().manual_seed(5))
        return to_uint8(x.float())

    assert np.array_equal(stored["images"], images(GaussianDiffusion.from_config(want)))
    assert not np.array_equal(stored["images"], images(GaussianDiffusion()))  # linear / epsilon differs
    assert main(_cli(run, fake_data, "--model", "FPDM-tiny", "--max-steps", "3", "--resume")) == 2
    assert "cannot resume: diffusion" in capsys.readouterr().err  # resumed only with the same process


def test_a_budget_alone_plans_no_more_steps_than_the_model_has_timesteps():
    """Timestep smoothing spends a large budget on many steps: never more than the process trained with."""
    model, diffusion = perturbed(), GaussianDiffusion.from_config(DiffusionConfig(num_timesteps=30, beta_schedule="cosine"))
    images, record = sample(model, diffusion, torch.arange(2), SamplerConfig(budget=400),
                            generator=torch.Generator().manual_seed(0))
    assert len(record.timesteps) == record.plan["steps"] == 30 and record.timesteps[0] == 29
    assert torch.isfinite(images).all()
    assert len(sample(model, GaussianDiffusion(), torch.arange(2), SamplerConfig(budget=400))[1].timesteps) > 30


def test_main_refuses_a_schedule_that_cannot_have_so_few_timesteps(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--run-dir", str(tmp_path / "r"), "--max-steps", "1", "--num-timesteps", "20"])
    assert e.value.code == 2 and "linear schedule needs num_timesteps > 20" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_main_reports_missing_data_and_missing_checkpoint(tmp_path, fake_data, capsys):
    assert main(_cli(tmp_path / "a", tmp_path / "no-data", "--max-steps", "1")) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err
    assert main(_cli(tmp_path / "b", fake_data, "--max-steps", "1", "--resume")) == 2
    assert "--resume: no checkpoint at" in capsys.readouterr().err


def test_ema_warmup_forgets_the_init_and_caps_at_the_decay():
    from fpdm_core.train import ema_decay

    cfg = TrainConfig(model="FPDM-tiny", max_steps=1, ema_decay=0.999)
    decays = [ema_decay(cfg, s) for s in (0, 10, 100, 1000, 100000)]
    assert decays[0] == pytest.approx(0.1) and decays[-1] == 0.999
    assert decays == sorted(decays)
    assert ema_decay(TrainConfig(model="FPDM-tiny", max_steps=1, ema_warmup=False), 0) == 0.999
