import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fpdm_core.diffusion import (
    BETA_SCHEDULES,
    MAX_TIMESTEPS,
    PREDICTIONS,
    SPACINGS,
    DiffusionConfig,
    GaussianDiffusion,
    make_betas,
    spaced_timesteps,
)

# Tiny hand-checkable schedule: abar = 0.9, 0.72, 0.504, 0.3024.
TINY_BETAS = [0.1, 0.2, 0.3, 0.4]
TINY_ABAR = [0.9, 0.72, 0.504, 0.3024]


def tiny(prediction="epsilon"):
    return GaussianDiffusion(4, TINY_BETAS, prediction)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def oracle_out(diffusion, x0, x_t, t):
    """The model output a perfect model gives at x_t when the clean sample is x0."""
    a = diffusion._abar[t]
    eps = (x_t - math.sqrt(a) * x0) / math.sqrt(1 - a)
    return eps if diffusion.prediction == "epsilon" else math.sqrt(a) * eps - math.sqrt(1 - a) * x0


# ---- schedules ---------------------------------------------------------------------------------


def test_linear_betas_endpoints():
    b = make_betas("linear", 1000)
    assert b.dtype == torch.float64 and b.shape == (1000,)
    assert b[0].item() == 1e-4 and b[-1].item() == 0.02
    assert bool((b.diff() > 0).all())


def test_linear_betas_scale_with_num_timesteps():
    b = make_betas("linear", 250)
    assert b[0].item() == pytest.approx(4e-4) and b[-1].item() == pytest.approx(0.08)
    with pytest.raises(ValueError, match="> 20"):
        make_betas("linear", 20)  # last beta would be 1


@pytest.mark.parametrize("T", [1, 10, 1000])
def test_cosine_betas(T):
    b = make_betas("cosine", T)
    assert b.dtype == torch.float64 and b.shape == (T,)
    assert bool((b > 0).all()) and bool((b <= 0.999).all())
    assert bool((b.diff() >= 0).all())
    assert b[-1].item() == 0.999  # clipped


def test_make_betas_errors():
    with pytest.raises(ValueError, match="linear"):
        make_betas("quadratic")
    with pytest.raises(ValueError):
        make_betas("cosine", 0)
    assert BETA_SCHEDULES == ("linear", "cosine")


# ---- timestep spacing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spacing, expected",
    [
        ("leading", [999, 799, 599, 399, 199]),  # diffusers' leading grid + steps_offset 199
        ("trailing", [999, 799, 599, 399, 199]),
        ("linspace", [999, 749, 500, 250, 0]),
    ],
)
def test_spaced_timesteps_values(spacing, expected):
    steps = spaced_timesteps(5, 1000, spacing)
    assert steps == expected
    assert all(type(s) is int for s in steps)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_spaced_timesteps_full_chain(spacing):
    assert spaced_timesteps(7, 7, spacing) == [6, 5, 4, 3, 2, 1, 0]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), T=st.integers(1, 1000), spacing=st.sampled_from(SPACINGS))
def test_spaced_timesteps_properties(data, T, spacing):
    n = data.draw(st.integers(1, T), label="num_steps")
    steps = spaced_timesteps(n, T, spacing)
    assert len(steps) == n
    assert all(isinstance(s, int) and 0 <= s <= T - 1 for s in steps)
    assert all(a > b for a, b in zip(steps, steps[1:]))
    assert steps[0] == T - 1  # every spacing starts at the noisiest timestep (pure noise in)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_one_step_sampler_starts_from_pure_noise(spacing):
    """A one-step sampler denoises at t = T-1, never at t = 0 (which would return the noise)."""
    assert spaced_timesteps(1, 1000, spacing) == [999]
    assert spaced_timesteps(3, 1000, "leading") == [999, 666, 333]


def test_spaced_timesteps_errors():
    with pytest.raises(ValueError):
        spaced_timesteps(0, 1000)
    with pytest.raises(ValueError):
        spaced_timesteps(1001, 1000)
    with pytest.raises(ValueError, match="trailing"):
        spaced_timesteps(5, 1000, "uniform")


# ---- forward process and training --------------------------------------------------------------


def test_q_sample_closed_form():
    d = GaussianDiffusion(2, [0.1, 0.5])  # abar = 0.9, 0.45
    x0 = torch.tensor([[[1.0, -0.5]], [[0.25, 2.0]]], dtype=torch.float64)  # (2, 1, 2)
    noise = torch.tensor([[[0.3, 0.7]], [[-1.0, 0.5]]], dtype=torch.float64)
    x_t = d.q_sample(x0, torch.tensor([0, 1]), noise)
    expected = torch.tensor(
        [
            [[math.sqrt(0.9) * 1.0 + math.sqrt(0.1) * 0.3, math.sqrt(0.9) * -0.5 + math.sqrt(0.1) * 0.7]],
            [[math.sqrt(0.45) * 0.25 - math.sqrt(0.55), math.sqrt(0.45) * 2.0 + math.sqrt(0.55) * 0.5]],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(x_t, expected, rtol=0, atol=1e-6)


def test_alphas_cumprod_matches_float64_product():
    d = GaussianDiffusion(1000, "cosine")
    assert torch.equal(d.alphas_cumprod, torch.cumprod(1 - make_betas("cosine"), 0).float())
    assert d._abar[3] == pytest.approx(math.prod(1 - b for b in make_betas("cosine", 1000)[:4].tolist()))


def test_target():
    x0, noise = torch.randn(2, 3, 4, 4, generator=gen(0)), torch.randn(2, 3, 4, 4, generator=gen(1))
    t = torch.tensor([10, 900])
    assert torch.equal(GaussianDiffusion().target(x0, t, noise), noise)
    d = GaussianDiffusion(prediction="v")
    a = d.alphas_cumprod[t].view(2, 1, 1, 1)
    torch.testing.assert_close(d.target(x0, t, noise), a.sqrt() * noise - (1 - a).sqrt() * x0)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_training_loss_zero_for_exact_target(prediction):
    d = GaussianDiffusion(100, "linear", prediction)
    x0, noise = torch.rand(3, 2, 4, 4, generator=gen(0)) * 2 - 1, torch.randn(3, 2, 4, 4, generator=gen(1))
    t = d.sample_t(3, gen(2))
    seen = {}

    def model_fn(x_t, tt):
        seen["x_t"], seen["t"] = x_t, tt
        return d.target(x0, t, noise)

    loss, per_sample = d.training_loss(model_fn, x0, t, noise)
    assert loss.item() == 0.0 and per_sample.shape == (3,) and not per_sample.any()
    torch.testing.assert_close(seen["x_t"], d.q_sample(x0, t, noise))
    assert seen["t"] is t


def test_training_loss_uses_first_half_of_learned_sigma_output():
    d = GaussianDiffusion(100)
    x0, noise = torch.rand(2, 3, 4, 4, generator=gen(0)), torch.randn(2, 3, 4, 4, generator=gen(1))
    t = torch.tensor([5, 50])
    loss, _ = d.training_loss(lambda x_t, tt: torch.cat([noise, 100 + noise], dim=1), x0, t, noise)
    assert loss.item() == 0.0
    loss, per_sample = d.training_loss(lambda x_t, tt: torch.zeros(2, 6, 4, 4), x0, t, noise)
    torch.testing.assert_close(per_sample, (noise**2).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(loss, (noise**2).mean())
    with pytest.raises(ValueError, match="does not match"):
        d.training_loss(lambda x_t, tt: torch.zeros(2, 1, 4, 4), x0, t, noise)


def test_sample_t_reproducible():
    d = GaussianDiffusion(1000)
    a, b = d.sample_t(64, gen(3)), d.sample_t(64, gen(3))
    assert a.dtype == torch.long and a.shape == (64,) and torch.equal(a, b)
    assert not torch.equal(a, d.sample_t(64, gen(4)))
    assert int(a.min()) >= 0 and int(a.max()) <= 999
    assert int(GaussianDiffusion(2, "cosine").sample_t(256, gen(5)).max()) == 1


def test_buffers_follow_to():
    d = GaussianDiffusion(10, "cosine")
    buffers = dict(d.named_buffers())
    assert {"betas", "alphas_cumprod"} <= buffers.keys()
    assert buffers["betas"].dtype == torch.float32 and buffers["alphas_cumprod"].shape == (10,)
    assert d.state_dict() == {}  # derived from the constructor arguments
    d.to(torch.float64)
    assert d.betas.dtype == torch.float64 and d.alphas_cumprod.dtype == torch.float64
    d.to("meta")
    assert all(b.device.type == "meta" for b in d.buffers())


def test_constructor_errors():
    with pytest.raises(ValueError, match="epsilon"):
        GaussianDiffusion(prediction="x0")
    with pytest.raises(ValueError, match="num_timesteps"):
        GaussianDiffusion(3, TINY_BETAS)
    with pytest.raises(ValueError, match="open interval"):
        GaussianDiffusion(2, [0.1, 1.0])


# ---- the config that checkpoints store ---------------------------------------------------------


@pytest.mark.parametrize("fields", [dict(), dict(num_timesteps=250, beta_schedule="cosine", prediction="v"),
                                    dict(num_timesteps=21), dict(num_timesteps=1, beta_schedule="cosine")])
def test_from_config_builds_the_named_process(fields):
    config = DiffusionConfig(**fields)
    d = GaussianDiffusion.from_config(config)
    named = GaussianDiffusion(config.num_timesteps, config.beta_schedule, config.prediction)
    assert d.config == named.config == config and d.prediction == config.prediction
    assert torch.equal(d.alphas_cumprod, named.alphas_cumprod)
    assert d.num_timesteps == len(d.betas) == config.num_timesteps
    assert DiffusionConfig.from_dict(config.to_dict()) == config  # the JSON round trip checkpoints rely on


def test_defaults_are_declared_once_and_explicit_betas_have_no_config():
    assert GaussianDiffusion().config == DiffusionConfig() == DiffusionConfig(1000, "linear", "epsilon")
    assert DiffusionConfig.from_dict({}) == DiffusionConfig()  # what a checkpoint without the key means
    assert tiny().config is None  # an explicit sequence has no name to store


@pytest.mark.parametrize("fields, match", [
    (dict(num_timesteps=0), r"DiffusionConfig.num_timesteps must be an integer in 1..100000, got 0"),
    (dict(num_timesteps=MAX_TIMESTEPS + 1), "num_timesteps must be an integer"),
    (dict(num_timesteps=True), "num_timesteps must be an integer"),
    (dict(num_timesteps=2.0), "num_timesteps must be an integer"),
    (dict(num_timesteps=20), "linear schedule needs num_timesteps > 20"),
    (dict(beta_schedule="quadratic"), "beta_schedule must be one of linear, cosine; got 'quadratic'"),
    (dict(prediction="x0"), "prediction must be one of epsilon, v; got 'x0'"),
])
def test_config_refuses_bad_values(fields, match):
    with pytest.raises(ValueError, match=match):
        DiffusionConfig(**fields)
    with pytest.raises(ValueError, match=match):
        DiffusionConfig.from_dict(fields)


def test_config_from_dict_refuses_unknown_fields_and_non_objects():
    with pytest.raises(ValueError, match=r"unknown diffusion config field\(s\) \['steps'\]"):
        DiffusionConfig.from_dict({"steps": 10})
    with pytest.raises(ValueError, match="expected a JSON object, got list"):
        DiffusionConfig.from_dict([1000, "linear"])


# ---- reverse steps -----------------------------------------------------------------------------


def test_ddim_step_eta0_hand_computed():
    d = tiny()
    x_t = torch.tensor([[[0.3, -1.2]]], dtype=torch.float64)  # (1, 1, 2)
    eps = torch.tensor([[[0.5, 0.1]]], dtype=torch.float64)
    g = gen(0)
    state = g.get_state()
    x_prev, x0 = d.ddim_step(eps, 2, 0, x_t, generator=g)
    x0_hand = [(0.3 - math.sqrt(0.496) * 0.5) / math.sqrt(0.504), (-1.2 - math.sqrt(0.496) * 0.1) / math.sqrt(0.504)]
    prev_hand = [math.sqrt(0.9) * x0_hand[0] + math.sqrt(0.1) * 0.5, math.sqrt(0.9) * x0_hand[1] + math.sqrt(0.1) * 0.1]
    torch.testing.assert_close(x0, torch.tensor([[x0_hand]], dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(x_prev, torch.tensor([[prev_hand]], dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.equal(g.get_state(), state)  # no noise drawn when sigma == 0


def test_ddpm_step_hand_computed():
    d = tiny()
    x_t = torch.tensor([[[0.3, -1.2]]], dtype=torch.float64)
    eps = torch.tensor([[[0.5, 0.1]]], dtype=torch.float64)
    a_t, a_p = 0.3024, 0.72
    beta = 1 - a_t / a_p  # 0.58
    x0_hand = [(0.3 - math.sqrt(1 - a_t) * 0.5) / math.sqrt(a_t), (-1.2 - math.sqrt(1 - a_t) * 0.1) / math.sqrt(a_t)]
    x0_hand = torch.tensor([[x0_hand]], dtype=torch.float64)
    mean = beta * math.sqrt(a_p) / (1 - a_t) * x0_hand + (1 - a_p) * math.sqrt(1 - beta) / (1 - a_t) * x_t
    std = math.sqrt(beta * (1 - a_p) / (1 - a_t))
    z = torch.randn((1, 1, 2), generator=gen(7), dtype=torch.float64)
    x_prev, x0 = d.ddpm_step(eps, 3, 1, x_t, generator=gen(7))
    x_prev2, _ = d.ddpm_step(eps, 3, 1, x_t, generator=gen(7))
    assert torch.equal(x_prev, x_prev2)
    torch.testing.assert_close(x0, x0_hand, rtol=0, atol=1e-12)
    torch.testing.assert_close(x_prev, mean + std * z, rtol=0, atol=1e-12)


def test_ddpm_final_step_is_x0_without_noise():
    d = tiny()
    x_t, eps = torch.randn(2, 3, 2, 2, generator=gen(0)), torch.randn(2, 3, 2, 2, generator=gen(1))
    g = gen(2)
    state = g.get_state()
    x_prev, x0 = d.ddpm_step(eps, 1, -1, x_t, generator=g)
    torch.testing.assert_close(x_prev, x0)
    assert torch.equal(g.get_state(), state)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("t, t_prev", [(3, 2), (3, 0), (2, 1), (1, -1)])
def test_ddim_eta1_equals_ddpm(prediction, t, t_prev):
    d = tiny(prediction)
    x_t = torch.randn(2, 3, 4, 4, generator=gen(0), dtype=torch.float64)
    out = torch.randn(2, 6, 4, 4, generator=gen(1), dtype=torch.float64)  # learned-sigma layout
    ddim = d.ddim_step(out, t, t_prev, x_t, eta=1.0, generator=gen(9))
    ddpm = d.ddpm_step(out, t, t_prev, x_t, generator=gen(9))
    torch.testing.assert_close(ddim[0], ddpm[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(ddim[1], ddpm[1], rtol=0, atol=1e-12)


def test_ddim_eta_scales_noise():
    d = tiny()
    x_t, eps = torch.randn(1, 2, 3, generator=gen(0)), torch.randn(1, 2, 3, generator=gen(1))
    det, _ = d.ddim_step(eps, 3, 1, x_t)
    half, _ = d.ddim_step(eps, 3, 1, x_t, eta=0.5, generator=gen(2))
    a_t, a_p = TINY_ABAR[3], TINY_ABAR[1]
    sigma = 0.5 * math.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p))
    x0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    z = torch.randn(1, 2, 3, generator=gen(2))
    expected = math.sqrt(a_p) * x0 + math.sqrt(1 - a_p - sigma**2) * eps + sigma * z
    torch.testing.assert_close(half, expected)
    assert not torch.allclose(det, half)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_ddim_recovers_x0_in_one_step_from_true_noise(prediction):
    d = GaussianDiffusion(1000, "linear", prediction)
    x0 = torch.rand(2, 3, 4, 4, generator=gen(0), dtype=torch.float64) * 2 - 1
    noise = torch.randn(2, 3, 4, 4, generator=gen(1), dtype=torch.float64)
    t = 700
    x_t = math.sqrt(d._abar[t]) * x0 + math.sqrt(1 - d._abar[t]) * noise
    out = d.target(x0, torch.full((2,), t), noise).double()
    if prediction == "epsilon":
        assert out is noise
    x_prev, x0_pred = d.ddim_step(out, t, -1, x_t)
    torch.testing.assert_close(x_prev, x0, rtol=0, atol=1e-6)
    torch.testing.assert_close(x0_pred, x0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("clip_x0", [False, True])
def test_ddim_chain_with_oracle_returns_x0(prediction, clip_x0):
    d = GaussianDiffusion(1000, "linear", prediction)
    x0 = torch.rand(2, 3, 4, 4, generator=gen(0), dtype=torch.float64) * 2 - 1
    x = torch.randn(2, 3, 4, 4, generator=gen(1), dtype=torch.float64)
    steps = spaced_timesteps(10, 1000, "trailing")
    for t, t_prev in zip(steps, steps[1:] + [-1]):
        x, _ = d.step("ddim", oracle_out(d, x0, x, t), t, t_prev, x, clip_x0=clip_x0)
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-9)


def test_clip_x0_recomputes_eps():
    d = tiny()
    x_t = torch.tensor([[[2.0, -0.1]]], dtype=torch.float64)
    eps = torch.tensor([[[-0.5, 0.2]]], dtype=torch.float64)  # implies x0[0] > 1
    a_t, a_p = TINY_ABAR[2], TINY_ABAR[0]
    raw_x0, _ = d.predict_x0_eps(eps, x_t, 2)
    assert raw_x0[0, 0, 0] > 1
    x_prev, x0 = d.ddim_step(eps, 2, 0, x_t, clip_x0=True)
    torch.testing.assert_close(x0, raw_x0.clamp(-1, 1))
    eps_c = (x_t - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
    torch.testing.assert_close(x_prev, math.sqrt(a_p) * x0 + math.sqrt(1 - a_p) * eps_c)
    _, x0_ddpm = d.ddpm_step(eps, 2, 0, x_t, generator=gen(0), clip_x0=True)
    torch.testing.assert_close(x0_ddpm, x0)


def test_v_prediction_inverts_target():
    d = GaussianDiffusion(1000, "cosine", "v")
    x0 = torch.rand(2, 3, 4, 4, generator=gen(0), dtype=torch.float64) * 2 - 1
    noise = torch.randn(2, 3, 4, 4, generator=gen(1), dtype=torch.float64)
    for t in (0, 500, 999):
        tt = torch.full((2,), t)
        x_t = d.q_sample(x0, tt, noise)
        v = d.target(x0, tt, noise)
        x0_pred, eps_pred = d.predict_x0_eps(torch.cat([v, v], dim=1), x_t, t)
        torch.testing.assert_close(x0_pred, x0, rtol=0, atol=1e-5)
        torch.testing.assert_close(eps_pred, noise, rtol=0, atol=1e-5)


def test_step_dispatch_and_errors():
    d = tiny()
    x_t, out = torch.randn(1, 2, 3, generator=gen(0)), torch.randn(1, 2, 3, generator=gen(1))
    assert torch.equal(d.step("ddim", out, 3, 1, x_t)[0], d.ddim_step(out, 3, 1, x_t)[0])
    ddpm = d.ddpm_step(out, 3, 1, x_t, generator=gen(2))[0]
    assert torch.equal(d.step("ddpm", out, 3, 1, x_t, generator=gen(2))[0], ddpm)
    with pytest.raises(ValueError, match="ddim"):
        d.step("euler", out, 3, 1, x_t)
    with pytest.raises(ValueError, match="t_prev"):
        d.ddim_step(out, 2, 2, x_t)
    with pytest.raises(ValueError, match="t must"):
        d.ddpm_step(out, 4, 1, x_t)
    with pytest.raises(ValueError, match="eta"):
        d.ddim_step(out, 2, 1, x_t, eta=-1.0)


# ---- classifier-free guidance ------------------------------------------------------------------


def test_guided_output():
    out = torch.randn(4, 6, 2, 2, generator=gen(0))
    cond, uncond = out[:2], out[2:]
    g1 = GaussianDiffusion.guided_output(out, 1.0, channels=3)
    assert g1.shape == out.shape and torch.equal(g1, torch.cat([cond, cond]))
    assert torch.equal(GaussianDiffusion.guided_output(out, 1.0), torch.cat([cond, cond]))
    g = GaussianDiffusion.guided_output(out, 4.0, channels=3)
    assert g.shape == out.shape and torch.equal(g[:2], g[2:])
    torch.testing.assert_close(g[:2, :3], uncond[:, :3] + 4.0 * (cond[:, :3] - uncond[:, :3]))
    assert torch.equal(g[:2, 3:], cond[:, 3:])
    g_all = GaussianDiffusion.guided_output(out, 4.0)
    torch.testing.assert_close(g_all[:2], uncond + 4.0 * (cond - uncond))
    with pytest.raises(ValueError, match="even"):
        GaussianDiffusion.guided_output(out[:3], 2.0)
