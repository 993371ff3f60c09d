"""Gaussian diffusion math for DiT-style models: schedules, noising, losses and DDIM/DDPM steps.

Images live in [-1, 1]. Tensors are (B, C, ...) with the channel axis at dim 1. A
`DiffusionConfig` names the process a model was trained with; checkpoints store it, so sampling
rebuilds the same process (`GaussianDiffusion.from_config`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from .options import check_fields, option

BETA_SCHEDULES = ("linear", "cosine")
SPACINGS = ("leading", "trailing", "linspace")
PREDICTIONS = ("epsilon", "v")
STEP_METHODS = ("ddim", "ddpm")
MAX_TIMESTEPS = 100_000  # a bound for configs read from files: the schedule is held as T python floats
LINEAR_MIN_TIMESTEPS = 21  # the linear schedule's last beta is 20 / T, which must stay below 1


@dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion process a model is trained and sampled with (DiT's: linear, T = 1000, epsilon)."""

    num_timesteps: int = option(1000, "diffusion timesteps T (stored in the checkpoint: sampling uses the same "
                                "process)", lo=1, hi=MAX_TIMESTEPS, app=None)
    beta_schedule: str = option("linear", "noise schedule", choices=BETA_SCHEDULES, app=None)
    prediction: str = option("epsilon", "what the network regresses", choices=PREDICTIONS, app=None)

    def __post_init__(self):
        check_fields(self)
        if self.beta_schedule == "linear" and self.num_timesteps < LINEAR_MIN_TIMESTEPS:
            raise ValueError(f"linear schedule needs num_timesteps > 20 (last beta = 20/T), got "
                             f"{self.num_timesteps}: use more timesteps or the cosine schedule")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DiffusionConfig:
        """The config a JSON dict describes; unknown keys or bad values raise ValueError, missing ones default."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown diffusion config field(s) {unknown}; expected {[f.name for f in fields(cls)]}")
        return cls(**d)


def _check_betas(betas: torch.Tensor) -> torch.Tensor:
    """Return `betas` if it is a non-empty 1-D tensor with all values in (0, 1)."""
    if betas.ndim != 1 or betas.numel() == 0:
        raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}")
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError("betas must all lie in the open interval (0, 1)")
    return betas


def make_betas(kind: str = "linear", num_timesteps: int = 1000) -> torch.Tensor:
    """Float64 betas (T,): ADM-scaled "linear" or Nichol & Dhariwal "cosine" (s=0.008, clipped at 0.999)."""
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if kind == "linear":
        if num_timesteps < LINEAR_MIN_TIMESTEPS:
            raise ValueError(f"linear schedule needs num_timesteps > 20 (last beta = 20/T), got {num_timesteps}")
        scale = 1000 / num_timesteps
        betas = torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)  # (T,)
    elif kind == "cosine":
        s = 0.008
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps  # (T+1,)
        abar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2  # (T+1,)
        betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)  # (T,)
    else:
        raise ValueError(f"unknown beta schedule {kind!r}; expected one of {BETA_SCHEDULES}")
    return _check_betas(betas)


def spaced_timesteps(num_steps: int, num_timesteps: int = 1000, spacing: str = "trailing") -> list[int]:
    """`num_steps` distinct timesteps in [0, T-1], strictly decreasing, the first always T-1.

    Sampling starts from pure noise, so the first step must be the noisiest timestep (Lin et al.
    2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed"), one step included.
    `trailing` and `linspace` follow diffusers; `leading` is diffusers' leading grid (stride T // n)
    shifted up with diffusers' `steps_offset` = T-1 - (n-1)(T // n) so that it, too, starts at T-1.
    """
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"num_steps must be in [1, {num_timesteps}], got {num_steps}")
    if spacing == "linspace":
        steps = np.linspace(num_timesteps - 1, 0, num_steps).round()
    elif spacing == "leading":
        stride = num_timesteps // num_steps
        steps = (num_timesteps - 1) - np.arange(num_steps) * stride
    elif spacing == "trailing":
        # Same values as np.arange(T, 0, -T / n), but never one element too many from float rounding.
        steps = np.round(num_timesteps - np.arange(num_steps) * (num_timesteps / num_steps)) - 1
    else:
        raise ValueError(f"unknown spacing {spacing!r}; expected one of {SPACINGS}")
    return [int(s) for s in steps]


class GaussianDiffusion(torch.nn.Module):
    """Forward process, training targets and reverse steps of a discrete-time Gaussian diffusion.

    `beta_schedule` is a name from BETA_SCHEDULES or an explicit sequence of `num_timesteps` betas.
    `config` is the `DiffusionConfig` of a named schedule (what checkpoints store), None for
    explicit betas; `from_config` builds the process a config names.
    Reverse steps take python-int timesteps and may jump between any t > t_prev (respaced chains);
    t_prev = -1 denotes clean data (abar = 1).
    """

    def __init__(
        self,
        num_timesteps: int = DiffusionConfig.num_timesteps,
        beta_schedule: str | Sequence[float] | torch.Tensor = DiffusionConfig.beta_schedule,
        prediction: str = DiffusionConfig.prediction,
    ):
        super().__init__()
        self.config: DiffusionConfig | None = None
        if isinstance(beta_schedule, str):
            self.config = DiffusionConfig(num_timesteps, beta_schedule, prediction)  # validates all three
            betas = make_betas(beta_schedule, num_timesteps)
        else:
            if prediction not in PREDICTIONS:
                raise ValueError(f"unknown prediction {prediction!r}; expected one of {PREDICTIONS}")
            betas = _check_betas(torch.as_tensor(beta_schedule, dtype=torch.float64))
            if betas.numel() != num_timesteps:
                raise ValueError(f"got {betas.numel()} betas for num_timesteps={num_timesteps}")
        abar = torch.cumprod(1 - betas, dim=0)  # (T,) float64
        self.num_timesteps = num_timesteps
        self.prediction = prediction
        self._abar = abar.tolist()  # float64 python floats for the scalar-timestep samplers
        # Derived from the constructor arguments, so kept out of state_dict.
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas_cumprod", abar.float(), persistent=False)
        self.register_buffer("sqrt_alphas_cumprod", abar.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_one_minus_alphas_cumprod", (1 - abar).sqrt().float(), persistent=False)

    @classmethod
    def from_config(cls, config: DiffusionConfig) -> GaussianDiffusion:
        """The process `config` names (e.g. a checkpoint's, from `checkpoints.load_pipeline`)."""
        return cls(config.num_timesteps, config.beta_schedule, config.prediction)

    def _coef(self, buf: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """buf[t] reshaped to broadcast against `like` (B, ...)."""
        return buf[t].to(like.dtype).view(-1, *([1] * (like.ndim - 1)))  # (B, 1, ...)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise, with t a LongTensor (B,)."""
        a = self._coef(self.sqrt_alphas_cumprod, t, x0)  # (B, 1, ...)
        s = self._coef(self.sqrt_one_minus_alphas_cumprod, t, x0)  # (B, 1, ...)
        return a * x0 + s * noise  # (B, C, ...)

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Regression target: the noise ("epsilon") or v = sqrt(abar) noise - sqrt(1 - abar) x0 ("v")."""
        if self.prediction == "epsilon":
            return noise
        a = self._coef(self.sqrt_alphas_cumprod, t, x0)  # (B, 1, ...)
        s = self._coef(self.sqrt_one_minus_alphas_cumprod, t, x0)  # (B, 1, ...)
        return a * noise - s * x0  # (B, C, ...)

    def training_loss(
        self,
        model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss, per-sample loss (B,)): MSE of model_fn(x_t, t)[:, :C] against target()."""
        x_t = self.q_sample(x0, t, noise)  # (B, C, ...)
        out = model_fn(x_t, t)[:, : x0.shape[1]]  # (B, C, ...); drops learned-sigma channels
        if out.shape != x0.shape:
            raise ValueError(f"model output {tuple(out.shape)} does not match x0 {tuple(x0.shape)}")
        err = (out.float() - self.target(x0, t, noise).float()) ** 2  # (B, C, ...)
        per_sample = err.mean(dim=tuple(range(1, err.ndim)))  # (B,)
        return per_sample.mean(), per_sample

    def sample_t(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Uniform timesteps (B,) in {0..T-1}; drawn on the generator's device, returned on `device`."""
        gen_device = generator.device if generator is not None else "cpu"
        t = torch.randint(0, self.num_timesteps, (batch,), generator=generator, device=gen_device)  # (B,)
        return t.to(device if device is not None else self.betas.device)

    def _check_steps(self, t: int, t_prev: int) -> None:
        if not 0 <= t < self.num_timesteps:
            raise ValueError(f"t must be in [0, {self.num_timesteps - 1}], got {t}")
        if not -1 <= t_prev < t:
            raise ValueError(f"t_prev must be in [-1, t - 1] = [-1, {t - 1}], got {t_prev}")

    def predict_x0_eps(
        self, model_out: torch.Tensor, x_t: torch.Tensor, t: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) implied by the first C channels of `model_out` at python-int timestep t."""
        out = model_out[:, : x_t.shape[1]]  # (B, C, ...)
        a, s = math.sqrt(self._abar[t]), math.sqrt(1 - self._abar[t])
        if self.prediction == "epsilon":
            return (x_t - s * out) / a, out
        return a * x_t - s * out, s * x_t + a * out

    def _x0_eps(
        self, model_out: torch.Tensor, x_t: torch.Tensor, t: int, clip_x0: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """predict_x0_eps, optionally clamping x0 to [-1, 1] and recomputing eps from it."""
        x0, eps = self.predict_x0_eps(model_out, x_t, t)
        if clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = (x_t - math.sqrt(self._abar[t]) * x0) / math.sqrt(1 - self._abar[t])
        return x0, eps

    @staticmethod
    def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Standard normal noise shaped like `like`, drawn on the generator's device."""
        device = generator.device if generator is not None else like.device
        return torch.randn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)

    def ddim_step(
        self,
        model_out: torch.Tensor,
        t: int,
        t_prev: int,
        x_t: torch.Tensor,
        *,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        clip_x0: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """DDIM update x_t -> x_{t_prev}; returns (x_prev, x0_pred). eta=1 equals ddpm_step."""
        self._check_steps(t, t_prev)
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        a_t = self._abar[t]
        a_prev = self._abar[t_prev] if t_prev >= 0 else 1.0
        x0, eps = self._x0_eps(model_out, x_t, t, clip_x0)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        x_prev = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps  # (B, C, ...)
        if sigma > 0:
            x_prev = x_prev + sigma * self._randn(x_t, generator)
        return x_prev, x0

    def ddpm_step(
        self,
        model_out: torch.Tensor,
        t: int,
        t_prev: int,
        x_t: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        clip_x0: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ancestral step of the respaced chain with fixed-small variance; returns (x_prev, x0_pred)."""
        self._check_steps(t, t_prev)
        a_t = self._abar[t]
        a_prev = self._abar[t_prev] if t_prev >= 0 else 1.0
        x0, _ = self._x0_eps(model_out, x_t, t, clip_x0)
        beta = 1 - a_t / a_prev
        c0 = beta * math.sqrt(a_prev) / (1 - a_t)
        ct = (1 - a_prev) * math.sqrt(1 - beta) / (1 - a_t)
        x_prev = c0 * x0 + ct * x_t  # (B, C, ...) posterior mean
        if t_prev >= 0:
            std = math.sqrt(beta * (1 - a_prev) / (1 - a_t))
            x_prev = x_prev + std * self._randn(x_t, generator)
        return x_prev, x0

    def step(
        self,
        kind: str,
        model_out: torch.Tensor,
        t: int,
        t_prev: int,
        x_t: torch.Tensor,
        *,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        clip_x0: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Dispatch to ddim_step or ddpm_step by `kind` (one of STEP_METHODS); `eta` is used by "ddim" only."""
        if kind == "ddim":
            return self.ddim_step(model_out, t, t_prev, x_t, eta=eta, generator=generator, clip_x0=clip_x0)
        if kind == "ddpm":
            return self.ddpm_step(model_out, t, t_prev, x_t, generator=generator, clip_x0=clip_x0)
        raise ValueError(f"unknown step {kind!r}; expected one of {STEP_METHODS}")

    @staticmethod
    def guided_output(model_out: torch.Tensor, scale: float, channels: int | None = None) -> torch.Tensor:
        """Classifier-free guidance on a doubled batch [cond; uncond], returned as [g; g].

        g = uncond + scale * (cond - uncond) on the first `channels` channels (all if None);
        remaining channels come from cond. scale == 1 reproduces cond exactly.
        """
        if model_out.shape[0] % 2:
            raise ValueError(f"guided_output needs an even batch [cond; uncond], got {model_out.shape[0]}")
        cond, uncond = model_out.chunk(2)  # (B, C', ...) each
        k = model_out.shape[1] if channels is None else channels
        guided = cond[:, :k] + (scale - 1) * (cond[:, :k] - uncond[:, :k])  # (B, k, ...)
        g = torch.cat([guided, cond[:, k:]], dim=1)  # (B, C', ...)
        return torch.cat([g, g])  # (2B, C', ...)
