"""safetensors checkpoints: bit-exact round trip, atomic writes, refusal of foreign or damaged files, load_model."""
from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from safetensors.torch import save_file

import fpdm_core.checkpoints as ckpt_mod
from fpdm_core.checkpoints import (FORMAT, SHIPPED, CheckpointError, atomic_save, export_weights, load_checkpoint,
                                   load_model, load_pipeline, read_header, restore_training, save_checkpoint)
from fpdm_core.diffusion import DiffusionConfig
from fpdm_core.models import DiT, FPDM, build_model



def perturbed(name="FPDM-tiny", seed=0, **overrides):
    """Eval mode: no label dropout, so forward passes do not touch the global RNG."""
    model = build_model(name, input_size=8, **overrides)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def trained_state(seed=0):
    """A model, a different EMA, AdamW with filled state after two steps, and a used generator."""
    model = perturbed(seed=seed)
    ema = perturbed(seed=seed + 100)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    x, t, y = torch.randn(4, 1, 8, 8), torch.arange(4) * 100, torch.arange(4)
    for _ in range(2):
        opt.zero_grad()
        model(x, t, y, max_iter=2).out.square().mean().backward()
        opt.step()
    gen = torch.Generator().manual_seed(seed)
    torch.rand(5, generator=gen)
    return model, ema, opt, gen


def tmp_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------- round trip
def test_round_trip_is_bit_exact_for_model_ema_optimizer_and_rng(tmp_path):
    model, ema, opt, gen = trained_state()
    path = tmp_path / "run" / "ckpt.safetensors"
    save_checkpoint(path, model=model, ema=ema, optimizer=opt, rng={"train": gen.get_state()},
                    meta={"step": 2, "note": "hello"})
    ckpt = load_checkpoint(path)
    assert ckpt.meta["step"] == 2 and ckpt.meta["note"] == "hello" and ckpt.meta["format"] == FORMAT
    assert ckpt.model_config == model.config

    model2, ema2 = build_model(model.config).eval(), build_model(model.config)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=5.0)
    rng = restore_training(ckpt, model2, ema2, opt2)
    for a, b in ((model, model2), (ema, ema2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["state"].keys() == s2["state"].keys()
    for idx in s1["state"]:
        for key, value in s1["state"][idx].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(s2["state"][idx][key])), (idx, key)
    normalise = lambda groups: json.loads(json.dumps(groups))  # tuples (betas) become lists
    assert normalise(s1["param_groups"]) == normalise(s2["param_groups"])
    gen2 = torch.Generator()
    gen2.set_state(rng["train"])
    assert torch.equal(gen2.get_state(), gen.get_state())
    assert torch.equal(torch.rand(8, generator=gen), torch.rand(8, generator=gen2))

    # functional check: one more identical step keeps the two runs bit-identical
    x, t, y = torch.randn(4, 1, 8, 8), torch.arange(4) * 10, torch.arange(4)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x, t, y, max_iter=2).out.square().mean().backward()
        o.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model2.parameters()))


def test_weights_only_checkpoint_and_float16_cast(tmp_path):
    model = perturbed("DiT-tiny")
    path = tmp_path / "small.safetensors"
    save_checkpoint(path, model=model, dtype=torch.float16)
    ckpt = load_checkpoint(path)
    assert all(v.dtype == torch.float16 for v in ckpt.group("model").values())
    assert ckpt.group("ema") == {} and ckpt.group("optim") == {}
    loaded = load_model(path)  # no EMA stored: falls back to the model weights, in float32
    for (k, v), w in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert w.dtype == torch.float32 and torch.equal(w, v.half().float()), k


# ----------------------------------------------------------------------------- atomic writes
def _fail_mid_write(tensors, filename, metadata=None):
    with open(filename, "wb") as f:
        f.write(b"\x00" * 100)  # some bytes reached the disk, then the process "died"
    raise OSError("disk full")


def _fail_rename(src, dst):
    raise OSError("rename interrupted")


@pytest.mark.parametrize("target, replacement", [("save_file", _fail_mid_write), ("os.replace", _fail_rename)])
def test_interrupted_save_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch, target,
                                                                                 replacement):
    first, second = perturbed(seed=1), perturbed(seed=2)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model=first, meta={"step": 1})
    before = path.read_bytes()
    if target == "save_file":
        monkeypatch.setattr(ckpt_mod, "save_file", replacement)
    else:
        monkeypatch.setattr(ckpt_mod.os, "replace", replacement)
    with pytest.raises(OSError):
        save_checkpoint(path, model=second, meta={"step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert tmp_files(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.safetensors"]
    loaded = load_model(path, weights="model")
    assert load_checkpoint(path).meta["step"] == 1
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), first.state_dict().values()))


def test_save_over_an_existing_checkpoint_replaces_it(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model=perturbed(seed=1), meta={"step": 1})
    save_checkpoint(path, model=perturbed(seed=2), meta={"step": 2})
    assert load_checkpoint(path).meta["step"] == 2 and tmp_files(tmp_path) == []


# ----------------------------------------------------------------------------- refusals
@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.safetensors"
    save_checkpoint(path, model=perturbed(), meta={"step": 3})
    return path


def _assert_readable(err: CheckpointError, path):
    message = str(err)
    assert str(path) in message and "\n" not in message and len(message) < 400


@pytest.mark.parametrize("keep", [0.5, 0.99, 8 / 1e9])
def test_truncated_file_is_refused(good, tmp_path, keep):
    raw = good.read_bytes()
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(raw[: max(1, int(len(raw) * keep))])
    with pytest.raises(CheckpointError, match="not a readable safetensors checkpoint") as e:
        load_checkpoint(bad)
    _assert_readable(e.value, bad)
    with pytest.raises(CheckpointError):
        load_model(bad)


def test_pickle_renamed_to_safetensors_is_refused(tmp_path):
    bad = tmp_path / "pickled.safetensors"
    torch.save({"model": perturbed().state_dict(), "args": {"lr": 1e-4}, "train_steps": 10}, bad)  # authors' layout
    with pytest.raises(CheckpointError, match="pickle") as e:
        load_checkpoint(bad)
    _assert_readable(e.value, bad)


def test_safetensors_without_our_metadata_is_refused(tmp_path):
    bad = tmp_path / "foreign.safetensors"
    save_file({f"model.{k}": v for k, v in perturbed().state_dict().items()}, bad)
    with pytest.raises(CheckpointError, match="not an FPDM-kit checkpoint") as e:
        load_checkpoint(bad)
    _assert_readable(e.value, bad)


@pytest.mark.parametrize("meta, message", [
    ("{not json", "unreadable metadata"),
    (json.dumps({"format": FORMAT}), "unreadable metadata"),
    (json.dumps({"format": FORMAT, "model": {"hidden_size": 33}}), "invalid model config: hidden_size 33"),
    (json.dumps({"format": "fpdm-kit/99", "model": {}}), "has format 'fpdm-kit/99'"),
])
def test_bad_metadata_is_refused(tmp_path, meta, message):
    bad = tmp_path / "meta.safetensors"
    atomic_save({"model.x": torch.zeros(1)}, bad, {"fpdm": meta})
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(bad)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_weights_that_do_not_match_the_stored_config_are_refused(tmp_path):
    model = perturbed()
    other = build_model("FPDM-tiny", input_size=8, hidden_size=16)
    bad = tmp_path / "mismatch.safetensors"
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    atomic_save(tensors, bad, {"fpdm": json.dumps({"format": FORMAT, "model": other.config.to_dict()})})
    for read in (load_checkpoint, load_model):  # refused from the header, before any model is built
        with pytest.raises(CheckpointError, match="do not match the stored model config: model.pos_embed") as e:
            read(bad)
        _assert_readable(e.value, bad)


def test_unknown_weight_group_is_refused(good):
    with pytest.raises(CheckpointError, match="holds no 'nonsense' weights"):
        load_model(good, weights="nonsense")


# ----------------------------------------------------------------------------- load_model
@pytest.mark.parametrize("name, overrides, cls", [
    ("FPDM-tiny", dict(pre_depth=2, post_depth=0, learn_sigma=True, timestep_cond_pre_post=True), FPDM),
    ("DiT-tiny", dict(depth=2, in_channels=3, num_classes=0), DiT),
])
def test_load_model_builds_the_right_class_with_ema_weights_by_default(tmp_path, name, overrides, cls):
    model = perturbed(name, seed=1, **overrides)
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.5)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, model=model, ema=ema)
    loaded = load_model(path)
    assert type(loaded) is cls and loaded.config == model.config and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), ema.state_dict().values()))
    raw = load_model(path, weights="model")
    assert all(torch.equal(a, b) for a, b in zip(raw.state_dict().values(), model.state_dict().values()))
    c = model.config
    x = torch.randn(2, c.in_channels, c.input_size, c.input_size)
    t, y = torch.tensor([3, 700]), torch.tensor([0, 0])
    with torch.no_grad():
        want = ema.eval()(x, t, y) if cls is DiT else ema.eval()(x, t, y, max_iter=2).out
        got = loaded(x, t, y) if cls is DiT else loaded(x, t, y, max_iter=2).out
    assert torch.equal(got, want)


# ----------------------------------------------------------------------------- the diffusion config
def test_load_pipeline_restores_the_model_and_its_diffusion_process_and_export_keeps_it(tmp_path):
    config = DiffusionConfig(num_timesteps=300, beta_schedule="cosine", prediction="v")
    model = perturbed(seed=2)
    path, export = tmp_path / "run.safetensors", tmp_path / "release.safetensors"
    save_checkpoint(path, model=model, diffusion=config, ema=copy.deepcopy(model), meta={"step": 1})
    assert read_header(path)[0]["diffusion"] == config.to_dict()
    loaded, diffusion = load_pipeline(path)
    assert diffusion.config == config and diffusion.num_timesteps == 300 and diffusion.prediction == "v"
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), load_model(path).state_dict().values()))
    export_weights(path, export)
    assert load_pipeline(export).diffusion.config == config
    save_checkpoint(tmp_path / "plain.safetensors", model=model)  # not given: the default, written all the same
    assert read_header(tmp_path / "plain.safetensors")[0]["diffusion"] == DiffusionConfig().to_dict()


def test_a_file_without_a_diffusion_config_gets_the_default(tmp_path):
    """Checkpoints written before the key existed (the shipped ones) were trained with the default."""
    model = perturbed()
    path = tmp_path / "old.safetensors"
    atomic_save({f"model.{k}": v for k, v in model.state_dict().items()}, path,
                {"fpdm": json.dumps({"format": FORMAT, "model": model.config.to_dict(), "step": 1})})
    assert load_checkpoint(path).diffusion_config == DiffusionConfig()
    assert load_pipeline(path).diffusion.config == DiffusionConfig()
    for kind, shipped in SHIPPED.items():
        if shipped.is_file():
            assert "diffusion" not in read_header(shipped)[0], f"{kind}: update this test's premise"
            assert load_pipeline(shipped).diffusion.config == DiffusionConfig()


@pytest.mark.parametrize("diffusion, message", [
    ({"num_timesteps": 10**12}, "DiffusionConfig.num_timesteps must be an integer in"),
    ({"beta_schedule": "sigmoid"}, "DiffusionConfig.beta_schedule must be one of linear, cosine; got 'sigmoid'"),
    ({"prediction": "v", "sampler": "ddim"}, r"unknown diffusion config field\(s\) \['sampler'\]"),
    ("linear", "expected a JSON object, got str"),
])
def test_a_bad_diffusion_config_is_refused_from_the_header(tmp_path, diffusion, message):
    model = perturbed()
    bad = tmp_path / "bad.safetensors"
    meta = {"format": FORMAT, "model": model.config.to_dict(), "diffusion": diffusion}
    atomic_save({f"model.{k}": v for k, v in model.state_dict().items()}, bad, {"fpdm": json.dumps(meta)})
    for read in (read_header, load_checkpoint, load_model, load_pipeline):
        with pytest.raises(CheckpointError, match="has an invalid diffusion config: " + message) as e:
            read(bad)
        _assert_readable(e.value, bad)


def test_checkpoint_holds_no_pickle(good):
    """The file is a plain safetensors file: JSON header, no torch.load needed (and none would work)."""
    raw = good.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8: 8 + header_len])
    assert json.loads(header["__metadata__"]["fpdm"])["model"]["kind"] == "fpdm"
    assert b"\x80\x02" not in raw[:2] and not raw.startswith(b"PK")  # neither a pickle nor a torch zip


# ----------------------------------------------------------------------------- leftovers of killed saves
KILLED_SAVE = """
import sys, torch
from fpdm_core.checkpoints import atomic_save
big = {"model.w": torch.zeros(16 * 2**20)}  # 64 MB: each write takes long enough to be caught in the middle
print("ready", flush=True)
while True:
    atomic_save(big, sys.argv[1], {"fpdm": "{}"})
"""


def test_a_killed_save_leaves_a_temp_folder_that_the_next_save_removes(tmp_path, caplog):
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model=perturbed(seed=1), meta={"step": 1})
    before = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill while safetensors writes its own temp file inside ours
            inner = [f for d in tmp_path.glob(".ckpt.safetensors.*.tmp") if d.is_dir() for f in d.glob(".tmp*")]
            if inner:
                os.kill(proc.pid, signal.SIGKILL)
                break
        else:
            pytest.fail("never saw a save in progress")
    finally:
        proc.kill()
        proc.wait()  # a dead but unreaped writer would still count as running
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "ckpt.safetensors")
    assert left and all(name.startswith(".ckpt.safetensors.") and name.endswith(".tmp") for name in left), left
    from safetensors import safe_open

    with safe_open(path, "pt") as f:  # the previous checkpoint, or one complete save of the killed writer
        assert path.read_bytes() == before or list(f.keys()) == ["model.w"]
    assert [p.name for p in ckpt_mod.stale_temp_files(path)] == left
    with caplog.at_level("WARNING", logger="fpdm_core.checkpoints"):
        save_checkpoint(path, model=perturbed(seed=2), meta={"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.safetensors"]
    assert load_checkpoint(path).meta["step"] == 2
    lines = [r.getMessage() for r in caplog.records if "interrupted saves" in r.getMessage()]
    assert len(lines) == 1 and all(name in lines[0] for name in left)


def test_stale_temp_files_are_told_from_live_and_foreign_ones(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model=perturbed(), meta={"step": 1})
    tag = ckpt_mod._writer_tag()
    live = tmp_path / f".ckpt.safetensors.{tag}.abc123.tmp"  # this process: still writing
    other_host = tmp_path / ".ckpt.safetensors.another-host-1.abc123.tmp"  # cannot tell: left alone
    old_style = tmp_path / ".ckpt.safetensors.k2j_3x9a.tmp"  # older versions (no writer tag)
    theirs = tmp_path / ".tmpAb3dE9"  # safetensors' own temp file of an older version's save
    unrelated = tmp_path / ".tmpZZZZZZ"  # someone else's temp file: not ours
    other_target = tmp_path / ".other.safetensors.k2j_3x9a.tmp"
    for d in (live, other_host):
        d.mkdir()
    old_style.write_bytes(b"\x00" * 10)
    theirs.write_bytes(path.read_bytes()[:200])  # a checkpoint header, cut off mid-write
    unrelated.write_bytes(b"data")
    other_target.write_bytes(b"\x00")
    assert ckpt_mod.stale_temp_files(path) == sorted([old_style, theirs])
    assert sorted(ckpt_mod.remove_stale_temp_files(path)) == sorted([old_style.name, theirs.name])
    assert all(p.exists() for p in (live, other_host, unrelated, other_target, path))


# ----------------------------------------------------------------------------- resume
def test_check_resumable_explains_a_weights_only_file(tmp_path, good):
    with pytest.raises(CheckpointError, match="cannot be resumed: it holds no ema, optim, rng, train, "
                                              "optimizer_param_groups") as e:
        ckpt_mod.check_resumable(good)
    _assert_readable(e.value, good)
    model, ema, opt, gen = trained_state()
    full = tmp_path / "full.safetensors"
    save_checkpoint(full, model=model, ema=ema, optimizer=opt, rng={"train": gen.get_state()},
                    meta={"step": 2, "train": {}})
    ckpt_mod.check_resumable(full)  # nothing missing: no error


def test_restore_training_refuses_another_models_weights_in_one_line(tmp_path):
    model, ema, opt, gen = trained_state()
    path = tmp_path / "full.safetensors"
    save_checkpoint(path, model=model, ema=ema, optimizer=opt, rng={"train": gen.get_state()}, meta={"step": 2})
    other = build_model("FPDM-tiny", input_size=8, hidden_size=16)
    with pytest.raises(CheckpointError, match=r"model.pos_embed has shape \(1, 4, 32\), this run's model needs "
                                              r"\(1, 4, 16\)") as e:
        restore_training(load_checkpoint(path), other, None, None)
    _assert_readable(e.value, path)
    deeper = build_model("FPDM-tiny", input_size=8, pre_depth=2)
    with pytest.raises(CheckpointError, match="other names than this run's model"):
        restore_training(load_checkpoint(path), deeper, None, None)
