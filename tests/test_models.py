"""DiT and FPDM: parameter counts, presets, initialisation, state-dict names, unrolled equivalence, errors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fpdm_core.models import DiT, FPDM, PRESETS, ModelConfig, build_model, count_parameters
from fpdm_core.solvers import solve


def perturbed(name: str = "FPDM-tiny", seed: int = 0, std: float = 0.1, **overrides):
    """A model in eval mode with every parameter moved off its (mostly zero) init by Gaussian noise."""
    model = build_model(name, **overrides)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def inputs(cfg: ModelConfig, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)  # (B, C, H, W)
    t = torch.randint(0, 1000, (batch,), generator=g)
    y = torch.randint(0, cfg.num_classes, (batch,), generator=g)
    return x, t, y


# ----------------------------------------------------------------------------- parameter counts (notes)
@pytest.mark.parametrize("name, overrides, millions", [
    ("DiT-XL/2", {}, 674.8),
    ("FPDM-XL/2", {}, 86.5),
    ("FPDM-XL/2", {"pre_depth": 2, "post_depth": 2}, 134.3),
    ("FPDM-XL/2", {"pre_depth": 4, "post_depth": 4}, 229.9),
])
def test_xl_parameter_counts_match_the_paper(name, overrides, millions):
    assert round(count_parameters(name, **overrides) / 1e6, 1) == millions


def test_fpdm_xl_has_87_percent_fewer_parameters_than_dit_xl():
    reduction = 1 - count_parameters("FPDM-XL/2") / count_parameters("DiT-XL/2")
    assert round(100 * reduction, 1) == 87.2


def test_parameter_count_by_hand_for_a_tiny_fpdm():
    """Layer shapes summed by hand: a golden count independent of count_parameters."""
    D, C, p, K, hid = 32, 1, 4, 10, 128
    block = (3 * D * D + 3 * D) + (D * D + D) + (D * hid + hid) + (hid * D + D) + (6 * D * D + 6 * D)
    embed = (C * p * p * D + D) + (256 * D + D) + (D * D + D) + (K + 1) * D
    final = (D * p * p * C + p * p * C) + (2 * D * D + 2 * D)
    fixed_point = (D * D + D) + (2 * D * 2 * D + 2 * D) + (2 * D * D + D) + block
    expected = embed + final + 2 * block + fixed_point
    assert count_parameters("FPDM-tiny") == expected
    assert sum(p.numel() for p in build_model("FPDM-tiny").parameters()) == expected


# ----------------------------------------------------------------------------- presets
def _small(name: str) -> dict:
    """Overrides that keep a preset's channels, patch, classes and learn_sigma but shrink width and depth."""
    if "XL" in name:
        return dict(hidden_size=32, num_heads=2, input_size=8, depth=2)
    return {}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_and_run_a_forward_with_the_right_output_shape(name):
    model = build_model(name, **_small(name)).eval()
    cfg = model.config
    assert cfg.kind == ("dit" if name.startswith("DiT") else "fpdm")
    assert isinstance(model, DiT if cfg.kind == "dit" else FPDM)
    x, t, y = inputs(cfg, batch=2)
    with torch.no_grad():
        out = model(x, t, y) if cfg.kind == "dit" else model(x, t, y, max_iter=2).out
    want_c = 2 * cfg.in_channels if PRESETS[name].learn_sigma else cfg.in_channels
    assert out.shape == (2, want_c, cfg.input_size, cfg.input_size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("learn_sigma", [False, True])
@pytest.mark.parametrize("name", ["DiT-tiny", "FPDM-tiny"])
def test_learn_sigma_doubles_output_channels(name, learn_sigma):
    model = build_model(name, in_channels=3, input_size=8, learn_sigma=learn_sigma).eval()
    x, t, y = inputs(model.config)
    with torch.no_grad():
        out = model(x, t, y) if isinstance(model, DiT) else model(x, t, y, max_iter=1).out
    assert out.shape == (2, 6 if learn_sigma else 3, 8, 8)


def test_xl_presets_have_the_authors_shapes_on_the_meta_device():
    with torch.device("meta"):
        fpdm, dit = build_model("FPDM-XL/2"), build_model("DiT-XL/2")
    sd = fpdm.state_dict()
    assert sd["pos_embed"].shape == (1, 256, 1152)
    assert sd["x_embedder.proj.weight"].shape == (1152, 4, 2, 2)
    assert sd["y_embedder.embedding_table.weight"].shape == (1001, 1152)
    assert sd["block_pre_projection.weight"].shape == (1152, 1152)
    assert sd["block_fixed_point_projection_fc1.weight"].shape == (2304, 2304)
    assert sd["block_fixed_point_projection_fc2.weight"].shape == (1152, 2304)
    assert sd["block_fixed_point.mlp.fc1.weight"].shape == (4608, 1152)
    assert sd["final_layer.linear.weight"].shape == (2 * 2 * 8, 1152)  # learn_sigma: 2 x 4 channels
    assert len(dit.blocks) == 28 and len(fpdm.blocks_pre) == 1 and len(fpdm.blocks_post) == 1


# ----------------------------------------------------------------------------- initialisation
@pytest.mark.parametrize("name", ["DiT-tiny", "FPDM-tiny"])
def test_init_zeroes_adaln_and_final_layer_so_outputs_are_exactly_zero(name):
    model = build_model(name).eval()
    for key, value in model.state_dict().items():
        if "adaLN_modulation" in key or key.startswith("final_layer.linear"):
            assert torch.count_nonzero(value) == 0, key
    x, t, y = inputs(model.config, batch=3)
    with torch.no_grad():
        out = model(x, t, y) if isinstance(model, DiT) else model(x, t, y, max_iter=2).out
    assert torch.equal(out, torch.zeros_like(out))
    # and the rest is not trivially zero: Xavier weights and small-normal embeddings
    assert model.x_embedder.proj.weight.abs().sum() > 0 and model.t_embedder.mlp[0].weight.std() > 0.01


def test_at_init_the_fixed_point_block_is_the_identity_so_f_is_the_projection_mlp():
    model = build_model("FPDM-tiny").eval()
    x, t, y = inputs(model.config)
    with torch.no_grad():
        enc = model.encode(x, t, y)
        z = torch.randn_like(enc.x_pre)
        fz = model.fixed_point_map(z, enc.inj, enc.c_fp)
        u = torch.cat([z, enc.inj], dim=-1)  # (B, N, 2D)
        proj = F.linear(F.gelu(F.linear(u, model.block_fixed_point_projection_fc1.weight,
                                         model.block_fixed_point_projection_fc1.bias), approximate="tanh"),
                        model.block_fixed_point_projection_fc2.weight, model.block_fixed_point_projection_fc2.bias)
    assert torch.equal(fz, proj)
    assert not torch.allclose(fz, z)  # the projection itself is not the identity


def test_linear_layers_are_xavier_uniform_with_zero_bias():
    model = build_model("FPDM-FM-S")
    w = model.block_fixed_point.mlp.fc1.weight  # (4D, D)
    bound = math.sqrt(6 / (w.shape[0] + w.shape[1]))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert torch.count_nonzero(model.block_fixed_point.mlp.fc1.bias) == 0
    assert torch.count_nonzero(model.block_pre_projection.bias) == 0


# ----------------------------------------------------------------------------- reference math
def ref_block(block, x, c):
    """adaLN-Zero block written out by hand, with attention computed explicitly (no SDPA)."""
    B, N, D = x.shape
    H = block.attn.num_heads
    mod = F.linear(F.silu(c), block.adaLN_modulation[1].weight, block.adaLN_modulation[1].bias)  # (B, 6D)
    s1, sc1, g1, s2, sc2, g2 = (m[:, None] for m in mod.chunk(6, dim=1))  # each (B, 1, D)
    h = F.layer_norm(x, (D,), eps=1e-6) * (1 + sc1) + s1
    q, k, v = F.linear(h, block.attn.qkv.weight, block.attn.qkv.bias).split(D, dim=-1)  # 3 x (B, N, D)
    q, k, v = (a.reshape(B, N, H, D // H).transpose(1, 2) for a in (q, k, v))  # (B, H, N, d)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // H), dim=-1) @ v  # (B, H, N, d)
    x = x + g1 * F.linear(att.transpose(1, 2).reshape(B, N, D), block.attn.proj.weight, block.attn.proj.bias)
    h = F.layer_norm(x, (D,), eps=1e-6) * (1 + sc2) + s2
    h = F.linear(F.gelu(F.linear(h, block.mlp.fc1.weight, block.mlp.fc1.bias), approximate="tanh"),
                 block.mlp.fc2.weight, block.mlp.fc2.bias)
    return x + g2 * h


def ref_unpatchify(tokens, p, C):
    """(B, N, p*p*C) -> (B, C, H, W) through F.fold (channel-major patches), independent of the model's einsum."""
    B, N, _ = tokens.shape
    g = math.isqrt(N)
    cols = tokens.reshape(B, N, p, p, C).permute(0, 4, 2, 3, 1).reshape(B, C * p * p, N)
    return F.fold(cols, output_size=(g * p, g * p), kernel_size=p, stride=p)


def ref_final(model, h, c):
    fl = model.final_layer
    shift, scale = F.linear(F.silu(c), fl.adaLN_modulation[1].weight, fl.adaLN_modulation[1].bias).chunk(2, dim=1)
    h = F.layer_norm(h, (h.shape[-1],), eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    return ref_unpatchify(F.linear(h, fl.linear.weight, fl.linear.bias), model.config.patch_size, model.config.out_channels)


def ref_embed(model, x, t, y):
    h = model.x_embedder.proj(x).flatten(2).transpose(1, 2) + model.pos_embed  # (B, N, D)
    return h, model.t_embedder(t), model.y_embedder.embedding_table.weight[y]


def test_block_matches_hand_written_adaln_zero_math():
    model = perturbed("DiT-tiny", input_size=8)
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(3, 4, 32, generator=g), torch.randn(3, 32, generator=g)
    with torch.no_grad():
        assert torch.allclose(model.blocks[0](x, c), ref_block(model.blocks[0], x, c), atol=1e-5, rtol=1e-5)


def test_unpatchify_matches_fold():
    model = build_model("DiT-tiny", in_channels=3, input_size=8, learn_sigma=True)  # p=4, C_out=6
    tokens = torch.randn(2, 4, 4 * 4 * 6)
    assert torch.equal(model.unpatchify(tokens), ref_unpatchify(tokens, 4, 6))


def test_dit_forward_equals_an_explicit_stack_by_hand():
    model = perturbed("DiT-tiny", input_size=8, depth=3)
    x, t, y = inputs(model.config, batch=3)
    with torch.no_grad():
        h, t_emb, y_emb = ref_embed(model, x, t, y)
        c = t_emb + y_emb
        for block in model.blocks:
            h = ref_block(block, h, c)
        expected = ref_final(model, h, c)
        assert torch.allclose(model(x, t, y), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cond_pre_post", [False, True])
@pytest.mark.parametrize("K", [1, 3])
def test_fpdm_unrolled_k_times_equals_a_dit_stack_whose_middle_k_blocks_share_weights(K, cond_pre_post):
    model = perturbed("FPDM-tiny", input_size=8, pre_depth=2, post_depth=1, timestep_cond_pre_post=cond_pre_post)
    x, t, y = inputs(model.config, batch=3)
    fc1, fc2 = model.block_fixed_point_projection_fc1, model.block_fixed_point_projection_fc2
    with torch.no_grad():
        # encode
        h, t_emb, y_emb = ref_embed(model, x, t, y)
        c_fp = t_emb + y_emb
        c_io = c_fp if cond_pre_post else y_emb
        for block in model.blocks_pre:
            h = ref_block(block, h, c_io)
        inj = F.linear(h, model.block_pre_projection.weight, model.block_pre_projection.bias)
        # K explicit layers, all sharing the fixed-point block's weights
        z = h
        for _ in range(K):
            u = F.linear(torch.cat([z, inj], dim=-1), fc1.weight, fc1.bias)
            u = F.linear(F.gelu(u, approximate="tanh"), fc2.weight, fc2.bias)
            z = ref_block(model.block_fixed_point, u, c_fp)
        # decode
        for block in model.blocks_post:
            z = ref_block(block, z, c_io)
        expected = ref_final(model, z, c_io)
        got = model(x, t, y, max_iter=K, tol=None)
    assert got.stats.iterations == K
    assert torch.allclose(got.out, expected, atol=1e-5, rtol=1e-4)
    # the check has teeth: one iteration more or less gives a different output
    with torch.no_grad():
        other = model(x, t, y, max_iter=K + 1).out
    assert not torch.allclose(other, expected, atol=1e-4)


@pytest.mark.parametrize("K", [1, 2, 5])
def test_k_solver_iterations_equal_k_explicit_fixed_point_map_applications(K):
    model = perturbed("FPDM-tiny", input_size=8)
    x, t, y = inputs(model.config)
    with torch.no_grad():
        enc = model.encode(x, t, y)
        z = enc.x_pre
        for _ in range(K):
            z = model.fixed_point_map(z, enc.inj, enc.c_fp)
        out = model(x, t, y, max_iter=K, tol=None)
        z_solve, stats = solve(lambda v: model.fixed_point_map(v, enc.inj, enc.c_fp), enc.x_pre, max_iter=K)
    assert torch.equal(out.z, z) and torch.equal(z_solve, z)
    assert torch.equal(out.out, model.decode(z, enc.c_io))
    assert stats.iterations == K and stats.abs_trace.shape == (2, K)


def test_z0_is_the_starting_iterate():
    model = perturbed("FPDM-tiny", input_size=8)
    x, t, y = inputs(model.config)
    with torch.no_grad():
        enc = model.encode(x, t, y)
        z0 = torch.randn_like(enc.x_pre)
        out = model(x, t, y, z0=z0, max_iter=1)
        assert torch.equal(out.z, model.fixed_point_map(z0, enc.inj, enc.c_fp))


def test_timestep_cond_pre_post_changes_outputs_but_not_the_state_dict_keys():
    a = perturbed("FPDM-tiny", input_size=8, timestep_cond_pre_post=False)
    b = build_model("FPDM-tiny", input_size=8, timestep_cond_pre_post=True).eval()
    assert list(a.state_dict()) == list(b.state_dict())
    b.load_state_dict(a.state_dict())  # strict: same names and shapes
    x, t, y = inputs(a.config)
    with torch.no_grad():
        assert not torch.allclose(a(x, t, y, max_iter=3).out, b(x, t, y, max_iter=3).out, atol=1e-4)


def test_label_dropout_only_in_training_and_reproducible_with_a_generator():
    model = build_model("FPDM-tiny", input_size=8, class_dropout=0.5)
    y = torch.arange(10).repeat(20)  # (200,)
    table = model.y_embedder.embedding_table.weight
    model.train()
    a = model.y_embedder(y, torch.Generator().manual_seed(3))
    b = model.y_embedder(y, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    null = (a == table[10]).all(dim=1)  # (200,)
    assert 60 < int(null.sum()) < 140
    model.eval()
    assert torch.equal(model.y_embedder(y), table[y])


@pytest.mark.parametrize("training", [True, False])
def test_a_given_drop_mask_replaces_the_random_label_dropout(training):
    model = build_model("FPDM-tiny", input_size=8, class_dropout=0.5).train(training)
    y, drop = torch.arange(10), torch.arange(10) % 3 == 0  # (10,), (10,)
    table = model.y_embedder.embedding_table.weight
    assert torch.equal(model.y_embedder(y, drop=drop), table[torch.where(drop, 10, y)])
    assert torch.equal(model.y_embedder(y, drop=torch.zeros(10, dtype=torch.bool)), table[y])  # no dropout at all
    x, t = torch.randn(10, 1, 8, 8), torch.full((10,), 500)
    with torch.no_grad():  # the mask reaches the embedder through the model
        assert torch.equal(model(x, t, y, drop_labels=drop, max_iter=2).out,
                           model(x, t, torch.where(drop, 10, y), drop_labels=torch.zeros_like(drop), max_iter=2).out)


# ----------------------------------------------------------------------------- state-dict names (notes)
BLOCK_KEYS = [f"{m}.{w}" for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1")
              for w in ("weight", "bias")]
SHARED_KEYS = ["pos_embed", "x_embedder.proj.weight", "x_embedder.proj.bias",
               "t_embedder.mlp.0.weight", "t_embedder.mlp.0.bias", "t_embedder.mlp.2.weight", "t_embedder.mlp.2.bias",
               "y_embedder.embedding_table.weight", "final_layer.linear.weight", "final_layer.linear.bias",
               "final_layer.adaLN_modulation.1.weight", "final_layer.adaLN_modulation.1.bias"]


def test_fpdm_state_dict_keys_are_the_authors_names():
    model = build_model("FPDM-tiny", pre_depth=2, post_depth=1)
    expected = set(SHARED_KEYS)
    expected |= {f"blocks_pre.{i}.{k}" for i in range(2) for k in BLOCK_KEYS}
    expected |= {f"blocks_post.0.{k}" for k in BLOCK_KEYS}
    expected |= {f"block_fixed_point.{k}" for k in BLOCK_KEYS}
    expected |= {f"{m}.{w}" for m in ("block_pre_projection", "block_fixed_point_projection_fc1",
                                      "block_fixed_point_projection_fc2") for w in ("weight", "bias")}
    assert set(model.state_dict()) == expected


def test_dit_state_dict_keys_are_the_authors_names():
    model = build_model("DiT-tiny", depth=3)
    expected = set(SHARED_KEYS) | {f"blocks.{i}.{k}" for i in range(3) for k in BLOCK_KEYS}
    assert set(model.state_dict()) == expected


# ----------------------------------------------------------------------------- errors
@pytest.fixture(scope="module")
def tiny_fpdm():
    return build_model("FPDM-tiny", input_size=8).eval()


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 3, 8, 8), (2, 8, 8), (2, 1, 8, 4)])
def test_wrong_input_shape_is_refused(tiny_fpdm, shape):
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, 8, 8\)"):
        tiny_fpdm(torch.zeros(shape), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))


def test_t_and_y_batch_must_match(tiny_fpdm):
    with pytest.raises(ValueError, match="t and y must have shape"):
        tiny_fpdm(torch.zeros(2, 1, 8, 8), torch.zeros(3, dtype=torch.long), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("bad", [11, -1])
def test_class_id_out_of_range_is_refused(tiny_fpdm, bad):
    y = torch.tensor([0, bad])
    with pytest.raises(ValueError, match="class ids must be in 0..9"):
        tiny_fpdm(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), y)


def test_null_class_is_accepted(tiny_fpdm):
    out = tiny_fpdm(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), torch.tensor([10, 10]), max_iter=1)
    assert out.out.shape == (2, 1, 8, 8)


def test_z0_of_wrong_shape_is_refused(tiny_fpdm):
    with pytest.raises(ValueError, match=r"z0 must have shape \(2, 4, 32\)"):
        tiny_fpdm(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                  z0=torch.zeros(2, 5, 32))


def test_unknown_preset_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"unknown preset 'FPDM-XXL/2'.*FPDM-XL/2"):
        build_model("FPDM-XXL/2")
    with pytest.raises(ValueError, match="unknown preset"):
        count_parameters("nope")


@pytest.mark.parametrize("fields, message", [
    (dict(hidden_size=30, num_heads=4), "not divisible by num_heads"),
    (dict(hidden_size=34, num_heads=2), "divisible by 4"),  # 2-D sin-cos positions need D % 4 == 0
    (dict(num_heads=0), "must be >= 1"),
    (dict(input_size=30, patch_size=4), "not divisible by patch_size"),
    (dict(kind="unet"), "kind must be"),
    (dict(pre_depth=-1), ">= 0"),
])
def test_bad_config_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**fields)


def test_config_round_trips_through_a_dict_and_refuses_unknown_fields():
    cfg = PRESETS["FPDM-XL/2"]
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config fields"):
        ModelConfig.from_dict({**cfg.to_dict(), "deq_mode": True})


# ----------------------------------------------------------------------------- bf16 autocast
@pytest.mark.parametrize("solver", ["picard", "anderson"])
def test_under_autocast_only_the_map_runs_in_bf16_and_the_solver_in_float32(monkeypatch, solver):
    import fpdm_core.models as models

    model = perturbed("FPDM-tiny", input_size=8)
    x, t, y = inputs(model.config)
    seen = []

    def spy_solve(f, z0, **kw):  # the solver's own arithmetic (residuals, Anderson mixing) sees no autocast
        seen.append(("solver", torch.is_autocast_enabled("cpu")))
        return solve(lambda z: seen.append(("map", torch.is_autocast_enabled("cpu"))) or f(z), z0, **kw)

    monkeypatch.setattr(models, "solve", spy_solve)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        out, z, stats = model(x, t, y, max_iter=4, solver=solver)
    assert seen == [("solver", False)] + [("map", False)] * 4  # the spy sits outside the map's own autocast
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all() and stats.rel_trace.dtype == torch.float32
    monkeypatch.undo()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        map_dtypes = []
        model.block_fixed_point.register_forward_hook(lambda m, i, o: map_dtypes.append(o.dtype))
        model(x, t, y, max_iter=2, solver=solver)
    assert map_dtypes == [torch.bfloat16] * 2  # ... while the map itself is in bf16


def test_bf16_picard_equals_solving_inside_autocast_bit_for_bit():
    """Picard has no matrix products of its own: moving the solver out of autocast changes no bit."""
    model = perturbed("FPDM-tiny", input_size=8)
    x, t, y = inputs(model.config)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        out = model(x, t, y, max_iter=3).out
        enc = model.encode(x, t, y)
        z, _ = solve(lambda z: model.fixed_point_map(z, enc.inj, enc.c_fp), enc.x_pre, max_iter=3)
        assert torch.equal(out, model.decode(z, enc.c_io))


def test_explicit_attention_is_scaled_dot_product_attention():
    from fpdm_core.models import explicit_attention

    q, k, v = torch.randn(3, 2, 4, 9, 8, dtype=torch.float64).unbind(0)  # (B, H, N, d) each
    torch.testing.assert_close(explicit_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


def test_cpu_bf16_autocast_training_takes_the_explicit_attention_and_the_rest_the_fused_kernel(monkeypatch):
    import fpdm_core.models as models

    calls = []
    monkeypatch.setattr(models, "explicit_attention", lambda q, k, v: calls.append(q.dtype) or
                        F.scaled_dot_product_attention(q, k, v))
    attn, x = models.Attention(16, 2), torch.randn(2, 5, 16)
    ref = attn(x)
    assert calls == []
    with torch.autocast("cpu", torch.bfloat16):
        out = attn(x)
        with torch.no_grad():  # sampling: the fused kernel's forward is as fast
            attn(x)
    assert calls == [torch.bfloat16]
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.02)  # bf16 rounding
