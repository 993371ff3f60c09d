"""Interop with the authors' FPDM code and DiT: synthetic state dicts with their key names and shapes.

The synthetic dicts are built from the layout documented in docs/INTEROP.md (names and shapes
written out here, not taken from this kit's modules), so a renamed or reshaped parameter in
the kit fails these tests.
"""
import argparse
import pickle

import pytest
import torch

from fpdm_core.checkpoints import load_model, load_pipeline, save_checkpoint
from fpdm_core.diffusion import DiffusionConfig
from fpdm_core.interop import (InteropError, export_checkpoint, export_state_dict, import_checkpoint,
                               import_state_dict, infer_config, main, pickled_globals, split_checkpoint, their_args)
from fpdm_core.models import ModelConfig, build_model


def block_shapes(prefix: str, D: int, mlp: int) -> dict:
    return {f"{prefix}.attn.qkv.weight": (3 * D, D), f"{prefix}.attn.qkv.bias": (3 * D,),
            f"{prefix}.attn.proj.weight": (D, D), f"{prefix}.attn.proj.bias": (D,),
            f"{prefix}.mlp.fc1.weight": (mlp, D), f"{prefix}.mlp.fc1.bias": (mlp,),
            f"{prefix}.mlp.fc2.weight": (D, mlp), f"{prefix}.mlp.fc2.bias": (D,),
            f"{prefix}.adaLN_modulation.1.weight": (6 * D, D), f"{prefix}.adaLN_modulation.1.bias": (6 * D,)}


def their_state(kind="fpdm", *, D=32, C=4, p=2, grid=4, classes=5, sigma=True, depth=3, pre=1, post=1, seed=0):
    """A state dict with the authors' (kind="fpdm") or DiT's (kind="dit") names and shapes, small random values."""
    out_rows = p * p * C * (2 if sigma else 1)
    shapes = {"pos_embed": (1, grid * grid, D), "x_embedder.proj.weight": (D, C, p, p), "x_embedder.proj.bias": (D,),
              "t_embedder.mlp.0.weight": (D, 256), "t_embedder.mlp.0.bias": (D,),
              "t_embedder.mlp.2.weight": (D, D), "t_embedder.mlp.2.bias": (D,),
              "y_embedder.embedding_table.weight": (classes + 1, D),
              "final_layer.linear.weight": (out_rows, D), "final_layer.linear.bias": (out_rows,),
              "final_layer.adaLN_modulation.1.weight": (2 * D, D), "final_layer.adaLN_modulation.1.bias": (2 * D,)}
    if kind == "dit":
        for i in range(depth):
            shapes.update(block_shapes(f"blocks.{i}", D, 4 * D))
    else:
        for i in range(pre):
            shapes.update(block_shapes(f"blocks_pre.{i}", D, 4 * D))
        shapes.update({"block_pre_projection.weight": (D, D), "block_pre_projection.bias": (D,),
                       "block_fixed_point_projection_fc1.weight": (2 * D, 2 * D),
                       "block_fixed_point_projection_fc1.bias": (2 * D,),
                       "block_fixed_point_projection_fc2.weight": (D, 2 * D),
                       "block_fixed_point_projection_fc2.bias": (D,)})
        shapes.update(block_shapes("block_fixed_point", D, 4 * D))
        for i in range(post):
            shapes.update(block_shapes(f"blocks_post.{i}", D, 4 * D))
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items()}


def inputs(C=4, size=8, B=3, classes=5):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(B, C, size, size, generator=g), torch.tensor([0, 500, 999])[:B],
            torch.tensor([0, classes - 1, classes])[:B])  # the last label is the null class


def run(model, x, t, y):
    with torch.no_grad():
        out = model(x, t, y, max_iter=5) if model.config.kind == "fpdm" else model(x, t, y)
    return out.out if model.config.kind == "fpdm" else out


def ours_with(state, **config):
    model = build_model(ModelConfig(**config))
    model.load_state_dict(state)
    return model.eval()


FPDM_CASES = [dict(p=2, grid=4, pre=1, post=1, sigma=True), dict(p=4, grid=2, pre=2, post=1, sigma=False),
              dict(p=2, grid=3, pre=0, post=2, sigma=True)]


@pytest.mark.parametrize("case", FPDM_CASES)
@pytest.mark.parametrize("pptc", [False, True])
def test_authors_fpdm_imports_with_inferred_config_and_same_outputs(case, pptc):
    state = their_state("fpdm", **case)
    model, facts = import_state_dict(state, num_heads=2, timestep_cond_pre_post=pptc)
    want = dict(kind="fpdm", input_size=case["grid"] * case["p"], in_channels=4, patch_size=case["p"], hidden_size=32,
                num_heads=2, num_classes=5, learn_sigma=case["sigma"], pre_depth=case["pre"], post_depth=case["post"],
                timestep_cond_pre_post=pptc)
    assert model.config == ModelConfig(**want)
    assert not facts["dropped_sigma_channels"]
    x, t, y = inputs(size=want["input_size"])
    torch.testing.assert_close(run(model, x, t, y), run(ours_with(state, **want), x, t, y), rtol=0, atol=0)


def test_the_pre_post_flag_changes_outputs_and_is_never_guessed():
    state = their_state("fpdm")
    x, t, y = inputs()
    a = run(import_state_dict(state, num_heads=2, timestep_cond_pre_post=False)[0], x, t, y)
    b = run(import_state_dict(state, num_heads=2, timestep_cond_pre_post=True)[0], x, t, y)
    assert (a - b).abs().max() > 1e-4  # same weights, different model: the flag must be right
    with pytest.raises(InteropError, match="timestep.conditioning flag is not stored"):
        import_state_dict(state, num_heads=2)
    args = {"fixed_point_pre_post_timestep_conditioning": True}
    assert import_state_dict(state, num_heads=2, args=args)[0].config.timestep_cond_pre_post is True
    with pytest.raises(InteropError, match="contradicts"):
        import_state_dict(state, num_heads=2, args=args, timestep_cond_pre_post=False)


@pytest.mark.parametrize("sigma", [True, False])
def test_dit_imports_with_inferred_depth(sigma):
    state = their_state("dit", depth=3, sigma=sigma)
    model, _ = import_state_dict(state, num_heads=4)
    want = dict(kind="dit", input_size=8, in_channels=4, patch_size=2, hidden_size=32, num_heads=4, num_classes=5,
                learn_sigma=sigma, depth=3)
    assert model.config == ModelConfig(**want)
    x, t, y = inputs()
    torch.testing.assert_close(run(model, x, t, y), run(ours_with(state, **want), x, t, y), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["fpdm", "dit"])
def test_dropping_sigma_keeps_the_epsilon_channels_exactly(kind):
    state = their_state(kind, sigma=True)
    full, _ = import_state_dict(state, num_heads=2, timestep_cond_pre_post=False)
    eps, facts = import_state_dict(state, num_heads=2, timestep_cond_pre_post=False, learn_sigma=False)
    assert facts["dropped_sigma_channels"] and eps.config.out_channels == 4
    x, t, y = inputs()
    torch.testing.assert_close(run(eps, x, t, y), run(full, x, t, y)[:, :4], rtol=0, atol=0)
    with pytest.raises(InteropError, match="no sigma channels"):
        import_state_dict(their_state(kind, sigma=False), num_heads=2, timestep_cond_pre_post=False, learn_sigma=True)


@pytest.mark.parametrize("kind", ["fpdm", "dit"])
def test_export_round_trips_bit_exactly(kind):
    state = their_state(kind)
    model, _ = import_state_dict(state, num_heads=2, timestep_cond_pre_post=True)
    back = export_state_dict(model)
    assert back.keys() == state.keys()
    for k in state:
        assert back[k].dtype == state[k].dtype and torch.equal(back[k], state[k]), k
    again, _ = import_state_dict(back, num_heads=2, timestep_cond_pre_post=True)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_pad_sigma_export_reimports_to_the_same_epsilon_model():
    state = their_state("fpdm", sigma=False)
    model, _ = import_state_dict(state, num_heads=2, timestep_cond_pre_post=False)
    padded = export_state_dict(model, pad_sigma=True)
    assert padded["final_layer.linear.weight"].shape == (2 * 2 * 8, 32)
    again, _ = import_state_dict(padded, num_heads=2, timestep_cond_pre_post=False)
    x, t, y = inputs()
    out = run(again, x, t, y)
    torch.testing.assert_close(out[:, :4], run(model, x, t, y), rtol=0, atol=0)
    assert out[:, 4:].abs().max() == 0


def test_authors_training_checkpoint_file(tmp_path):
    """{"model", "ema", "opt", "args" (a dict), "train_steps"} with DDP's `module.` prefix loads under weights_only."""
    ema, raw = their_state("fpdm", seed=0), their_state("fpdm", seed=1)
    opt = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4,
                                                                                                   "params": [0]}]}
    args = {"model": "DiT-XL/2", "fixed_point": True, "fixed_point_pre_post_timestep_conditioning": False,
            "num_classes": 5, "lr": 1e-4}
    path = tmp_path / "0400000.pt"
    torch.save({"model": {f"module.{k}": v for k, v in raw.items()}, "ema": ema, "opt": opt, "args": args,
                "train_steps": 400000}, path)
    model, facts = import_checkpoint(path, num_heads=2)
    assert facts["weights"] == "ema" and facts["train_steps"] == 400000 and facts["args"]["model"] == "DiT-XL/2"
    assert model.config.timestep_cond_pre_post is False
    x, t, y = inputs()
    want = model.config.to_dict()
    torch.testing.assert_close(run(model, x, t, y), run(ours_with(ema, **want), x, t, y), rtol=0, atol=0)
    raw_model, facts = import_checkpoint(path, weights="model", num_heads=2)
    assert facts["weights"] == "model"
    torch.testing.assert_close(run(raw_model, x, t, y), run(ours_with(raw, **want), x, t, y), rtol=0, atol=0)


def test_heads_from_args_model_name_or_dit_presets():
    state = their_state("dit", D=48)
    assert infer_config(state, args={"model": "DiT-S/2"}).num_heads == 6
    with pytest.raises(InteropError, match="attention heads"):
        infer_config(state)
    xl_like = {k: v for k, v in their_state("dit", D=384, depth=1).items()}
    assert infer_config(xl_like).num_heads == 6  # DiT-S width


def test_dit_namespace_args_are_refused_with_a_clear_message(tmp_path):
    path = tmp_path / "dit.pt"
    state = their_state("dit")
    torch.save({"model": state, "ema": state, "opt": {}, "args": argparse.Namespace(model="DiT-S/2", num_classes=5)},
               path)
    with pytest.raises(InteropError) as err:
        import_checkpoint(path)
    msg = str(err.value)
    assert "argparse.Namespace" in msg and "weights_only=True" in msg and "allow_namespace=True" in msg
    if hasattr(torch.serialization, "safe_globals"):
        model, facts = import_checkpoint(path, allow_namespace=True, num_heads=2)
        assert facts["args"]["model"] == "DiT-S/2" and model.config.depth == 3


def test_other_pickled_objects_are_refused_even_with_allow_namespace(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"ema": their_state("dit"), "extra": Exploding()}, path)
    with pytest.raises(InteropError, match="arbitrary code"):
        import_checkpoint(path, allow_namespace=True, num_heads=2)
    assert not Exploding.ran


class Exploding:
    ran = False

    def __reduce__(self):
        return (Exploding._run, ())

    @staticmethod
    def _run():
        Exploding.ran = True


def test_dit_released_weights_are_a_bare_state_dict(tmp_path):
    path = tmp_path / "DiT-tiny-256x256.pt"
    torch.save(their_state("dit"), path)
    model, facts = import_checkpoint(path, num_heads=2)
    assert facts["weights"] == "bare state dict" and model.config.kind == "dit"


def test_bad_inputs_say_what_is_wrong(tmp_path):
    with pytest.raises(InteropError, match="does not exist"):
        import_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InteropError, match="not a readable"):
        import_checkpoint(tmp_path / "junk.pt")
    state = their_state("dit")
    continuous = {k: v for k, v in state.items() if not k.startswith("y_embedder")}
    continuous["y_embedder.embedding_projection.weight"] = torch.zeros(32, 7)
    with pytest.raises(InteropError, match="continuous label embedder"):
        import_state_dict(continuous, num_heads=2)
    with pytest.raises(InteropError, match="no 'ema' state dict"):
        split_checkpoint({"model": state, "args": {}})
    extra = dict(state, **{"blocks.0.attn.q_norm.weight": torch.ones(16)})
    with pytest.raises(InteropError, match="do not fit"):
        import_state_dict(extra, num_heads=2)


def test_command_line_import_and_export(tmp_path):
    state = their_state("fpdm", sigma=True)
    src = tmp_path / "theirs.pt"
    torch.save({"model": state, "ema": state, "args": {"fixed_point_pre_post_timestep_conditioning": True}}, src)
    ours = tmp_path / "ours.safetensors"
    assert main(["import", str(src), "--out", str(ours), "--num-heads", "2"]) == 0
    model = load_model(ours)
    x, t, y = inputs()
    ref, _ = import_state_dict(state, num_heads=2, timestep_cond_pre_post=True)
    torch.testing.assert_close(run(model, x, t, y), run(ref, x, t, y), rtol=0, atol=0)
    back = tmp_path / "back.pt"
    assert main(["export", str(ours), "--out", str(back)]) == 0
    loaded = torch.load(back, map_location="cpu", weights_only=True)  # plain values only: no pickle needed
    assert loaded["args"] == their_args(model.config) and loaded["args"]["fixed_point_pre_post_timestep_conditioning"]
    for k in state:
        assert torch.equal(loaded["ema"][k], state[k]), k
    assert main(["import", str(src), "--out", str(tmp_path / "x.safetensors"), "--num-heads", "2",
                 "--timestep-cond-pre-post", "false"]) == 2  # contradicts the file's args


def test_export_checkpoint_writes_model_and_ema(tmp_path):
    model = build_model("FPDM-tiny")
    ema = build_model("FPDM-tiny")
    ckpt = export_checkpoint(tmp_path / "out.pt", model, ema=ema, train_steps=7)
    loaded = torch.load(tmp_path / "out.pt", weights_only=True)
    assert set(loaded) == {"model", "ema", "args", "train_steps"} and loaded["train_steps"] == 7
    assert all(torch.equal(loaded["ema"][k], v) for k, v in ema.state_dict().items())
    assert ckpt["args"]["fixed_point"] is True and ckpt["args"]["image_size"] == 28 * 8


# ----------------------------------------------------------------------------- hostile and damaged files
class RunsCode:
    """Pickles as a call of os.getcwd (harmless if it ever ran; a module torch.load(weights_only=True) blocks)."""

    def __reduce__(self):
        import os

        return (os.getcwd, ())


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_pickle_that_runs_code_is_said_to_hold_code(tmp_path, zip_format):
    path = tmp_path / "evil.pt"
    torch.save({"ema": their_state("dit"), "x": RunsCode()}, path, _use_new_zipfile_serialization=zip_format)
    assert pickled_globals(path) == ["posix.getcwd"]
    with pytest.raises(InteropError, match=r"holds code: .*\(posix.getcwd\).*arbitrary code") as e:
        import_checkpoint(path, num_heads=2)
    assert "corrupt" not in str(e.value)


def test_a_refusal_worded_without_the_global_is_read_from_the_opcodes(tmp_path, monkeypatch):
    """torch words its refusal differently across versions: the message must not depend on the wording."""
    path = tmp_path / "evil.pt"
    torch.save({"ema": their_state("dit"), "x": RunsCode()}, path)

    def refuse(*args, **kwargs):
        raise pickle.UnpicklingError("Weights only load failed. (some future wording)")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(InteropError, match=r"holds code: .*posix.getcwd"):
        import_checkpoint(path, num_heads=2)
    clean = tmp_path / "clean.pt"
    monkeypatch.undo()
    torch.save({"ema": their_state("dit")}, clean)
    assert pickled_globals(clean) == []  # torch's own rebuild functions are not code to warn about


def test_junk_files_are_one_line_errors_on_the_command_line(tmp_path, capsys):
    junk_st = tmp_path / "junk.safetensors"
    junk_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{junk}")
    junk_pt = tmp_path / "junk.pt"
    junk_pt.write_bytes(b"garbage" * 10)
    for path, message in ((junk_st, "not a readable safetensors file"), (junk_pt, "not a readable torch.save file")):
        assert main(["import", str(path), "--out", str(tmp_path / "out.safetensors")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out.safetensors").exists()


def test_weights_beyond_the_limits_or_inconsistent_are_refused(tmp_path):
    wide = their_state("dit", D=32)
    wide["pos_embed"] = torch.zeros(1, 16, 8)  # claims another width than the patch embedding
    with pytest.raises(InteropError, match=r"pos_embed should be \(1, tokens, 32\)"):
        infer_config(wide, num_heads=2)
    many = their_state("dit")
    many["y_embedder.embedding_table.weight"] = torch.zeros(100_002, 1).expand(100_002, 32)  # no real memory
    with pytest.raises(InteropError, match="num_classes must be >= 0 and <= 100000, got 100001"):
        infer_config(many, num_heads=2)


def test_outputs_are_never_overwritten_without_force(tmp_path, capsys):
    state = their_state("dit")
    src = tmp_path / "theirs.pt"
    torch.save({"ema": state, "model": state, "args": {}}, src)
    out = tmp_path / "ours.safetensors"
    assert main(["import", str(src), "--out", str(out), "--num-heads", "2"]) == 0
    before = out.read_bytes()
    assert main(["import", str(src), "--out", str(out), "--num-heads", "2"]) == 2
    assert "exists: pass --force" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["import", str(src), "--out", str(out), "--num-heads", "2", "--force"]) == 0
    assert main(["export", str(out), "--out", str(out), "--force"]) == 2  # never over its own source
    assert "is the input file itself" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["export", str(out), "--out", str(src)]) == 2 and "exists" in capsys.readouterr().err


def test_predict_v_travels_with_the_weights(tmp_path, capsys):
    state = their_state("dit", sigma=False)
    src = tmp_path / "v.pt"
    torch.save({"model": state, "ema": state, "args": {"predict_v": True}}, src)
    ours = tmp_path / "v.safetensors"
    assert main(["import", str(src), "--out", str(ours), "--num-heads", "2"]) == 0
    assert load_pipeline(ours).diffusion.config == DiffusionConfig(prediction="v")  # sampled as v, no flags
    back = tmp_path / "back.pt"
    assert main(["export", str(ours), "--out", str(back)]) == 0
    assert torch.load(back, map_location="cpu", weights_only=True)["args"]["predict_v"] is True


def test_export_refuses_a_process_their_code_cannot_sample(tmp_path, capsys):
    model = build_model(ModelConfig(kind="dit", input_size=8, in_channels=4, patch_size=2, hidden_size=32, depth=2,
                                    num_heads=2, num_classes=5))
    src = tmp_path / "cosine.safetensors"
    save_checkpoint(src, model=model, diffusion=DiffusionConfig(beta_schedule="cosine"))
    assert main(["export", str(src), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cosine" in err and not (tmp_path / "x.pt").exists()
