"""DiT and Fixed Point Diffusion Models (FPDM).

Blocks first, then the two models, then a registry of size presets. A model is built
from a `ModelConfig`; `build_model("FPDM-XL/2")` builds a preset. FPDM splits DiT's
depth into `pre_depth` explicit blocks, ONE weight-tied block solved as a fixed point,
and `post_depth` explicit blocks. The model keeps no state between calls: the previous
fixed point (solution reuse) goes in as `z0` and comes out in the result.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from types import MappingProxyType
from typing import Mapping, NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .solvers import SolverStats, solve


# ----------------------------------------------------------------------------- config
# Upper limits of a config, checked before any model is built (a file's metadata can claim anything).
# They leave room above the paper's largest setting (DiT-XL/2: 1152 wide, 28 blocks, 1000 classes,
# 256 tokens; 1024 tokens at 512 px) and keep a refused config cheap to refuse.
LIMITS = {"input_size": 1024, "in_channels": 64, "patch_size": 64, "hidden_size": 8192, "num_heads": 256,
          "num_classes": 100_000, "depth": 256, "pre_depth": 256, "post_depth": 256}
MAX_TOKENS = 16_384  # (input_size / patch_size)^2
MAX_MLP_RATIO = 16.0
MAX_PARAMETERS = 4_000_000_000  # about 6x DiT-XL/2 (675M)
_BOOLS = ("learn_sigma", "timestep_cond_pre_post")
_FLOATS = ("mlp_ratio", "class_dropout")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model (stored as JSON next to the weights)."""

    kind: str = "fpdm"  # "fpdm" or "dit"
    input_size: int = 28
    in_channels: int = 1
    patch_size: int = 4
    hidden_size: int = 192
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 10  # 0 = unconditional (only the null class exists)
    class_dropout: float = 0.1
    learn_sigma: bool = False
    depth: int = 8  # DiT only
    pre_depth: int = 1  # FPDM only
    post_depth: int = 1  # FPDM only
    timestep_cond_pre_post: bool = False  # FPDM: pre/post blocks see t_emb + y_emb (else y_emb)

    def __post_init__(self):
        """Types, then ranges (`LIMITS`), then shapes, then the parameter count: all before anything is built."""
        if self.kind not in ("fpdm", "dit"):
            raise ValueError(f"kind must be 'fpdm' or 'dit', got {self.kind!r}")
        for name in _BOOLS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in _FLOATS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name, hi in LIMITS.items():
            value = getattr(self, name)
            optional = name in ("num_classes", "pre_depth", "post_depth") or (name == "depth" and self.kind == "fpdm")
            lo = 0 if optional else 1
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if not lo <= value <= hi:
                raise ValueError(f"{name} must be >= {lo} and <= {hi}, got {value}")
        if not 0 < self.mlp_ratio <= MAX_MLP_RATIO or int(self.hidden_size * self.mlp_ratio) < 1:
            raise ValueError(f"mlp_ratio must be > 0 and <= {MAX_MLP_RATIO} (and give an MLP at least 1 wide), "
                             f"got {self.mlp_ratio}")
        if not 0 <= self.class_dropout < 1:
            raise ValueError(f"class_dropout must be >= 0 and < 1, got {self.class_dropout}")
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_size % 4:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by 4 (2-D sin-cos positions)")
        if self.num_tokens > MAX_TOKENS:
            raise ValueError(f"(input_size / patch_size)^2 = {self.num_tokens} tokens, more than the limit "
                             f"{MAX_TOKENS}: use a larger patch_size")
        if self.parameter_count() > MAX_PARAMETERS:
            raise ValueError(f"this config has {self.parameter_count():,} parameters, more than the limit "
                             f"{MAX_PARAMETERS:,}: lower hidden_size, depths, mlp_ratio or num_classes")

    def parameter_count(self) -> int:
        """Number of parameters, computed from the sizes alone (equal to `count_parameters`, which builds on meta)."""
        D, H, P = self.hidden_size, int(self.hidden_size * self.mlp_ratio), self.patch_size ** 2
        block = (D * 3 * D + 3 * D) + (D * D + D) + (D * H + H + H * D + D) + (D * 6 * D + 6 * D)  # attn, MLP, adaLN
        embed = D * self.in_channels * P + D + (256 * D + D + D * D + D) + (self.num_classes + 1) * D  # x, t, y
        final = D * P * self.out_channels + P * self.out_channels + D * 2 * D + 2 * D
        if self.kind == "dit":
            return embed + self.depth * block + final
        fixed_point = (D * D + D) + (4 * D * D + 2 * D) + (2 * D * D + D) + block  # injection, fc1, fc2, block
        return embed + (self.pre_depth + self.post_depth) * block + fixed_point + final

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def num_tokens(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        if not isinstance(d, dict):
            raise ValueError(f"a model config must be a JSON object, got {type(d).__name__}")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**d)


# ----------------------------------------------------------------------------- layers
def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def sincos_pos_embed_2d(dim: int, grid: int) -> np.ndarray:
    """Fixed 2-D sin-cos positions, (grid*grid, dim), as in MAE/DiT."""
    coords = np.stack(np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64)), 0)
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))  # (D/4,)

    def embed_1d(pos):  # (M,) -> (M, D/2)
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([embed_1d(coords[0]), embed_1d(coords[1])], axis=1)  # (M, D)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)

    def forward(self, x):  # (B, C, H, W) -> (B, N, D)
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """Sinusoidal frequencies -> MLP with SiLU."""

    def __init__(self, hidden_size: int, freq_size: int = 256):
        super().__init__()
        self.freq_size = freq_size
        self.mlp = nn.Sequential(nn.Linear(freq_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, D)
        half = self.freq_size // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]  # (B, half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, freq_size)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class table with one extra 'null' row (index num_classes) for classifier-free guidance."""

    def __init__(self, num_classes: int, hidden_size: int, dropout: float):
        super().__init__()
        self.num_classes, self.dropout = num_classes, dropout
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y: torch.Tensor, generator: torch.Generator | None = None,
                drop: torch.Tensor | None = None) -> torch.Tensor:
        """drop: (B,) bool, the labels to replace by the null class, decided by the caller (e.g. drawn once
        for a whole data-parallel batch); None draws them here (training mode, rate `dropout`)."""
        if drop is None and self.training and self.dropout > 0:
            drop = torch.rand(y.shape, generator=generator, device="cpu").to(y.device) < self.dropout  # (B,)
        if drop is not None:
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return self.embedding_table(y)  # (B, D)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v with plain matrix products; (B, H, N, d) each -> (B, H, N, d).

    Used for training on the CPU under bf16 autocast, where `scaled_dot_product_attention`'s flash
    kernel took about 5x as long (forward + backward; 49 tokens, head size 48, measured on an
    AVX512-BF16 CPU); its forward alone is as fast as this, so sampling keeps it.
    """
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, H, N, N)
    return scores.softmax(dim=-1) @ v  # (B, H, N, d)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):  # (B, N, D)
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)  # (3, B, H, N, d)
        q, k, v = qkv.unbind(0)  # 3 x (B, H, N, d); backward stacks the three gradients (indexing zero-fills 3 times)
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and torch.is_grad_enabled():
            x = explicit_attention(q, k, v)  # (B, H, N, d)
        else:  # float32 (bit-identical to the authors' code), sampling, GPUs
            x = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, d)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c):  # x (B, N, D), c (B, D)
        s_msa, sc_msa, g_msa, s_mlp, sc_mlp, g_mlp = self.adaLN_modulation(c).chunk(6, dim=1)  # 6 x (B, D)
        x = x + g_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), s_msa, sc_msa))
        return x + g_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), s_mlp, sc_mlp))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, c):  # (B, N, D) -> (B, N, p*p*C)
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


# ----------------------------------------------------------------------------- models
class DiffusionTransformer(nn.Module):
    """Shared DiT skeleton: embeddings, final layer, unpatchify, input checks and init.

    grad_checkpoint: recompute each explicit block in backward (while autograd records), so its
    activations are not stored; outputs, gradients and the state dict are unchanged.
    """

    def __init__(self, config: ModelConfig, *, grad_checkpoint: bool = False):
        super().__init__()
        self.config, self.grad_checkpoint = config, grad_checkpoint
        c = config
        self.x_embedder = PatchEmbed(c.patch_size, c.in_channels, c.hidden_size)
        self.t_embedder = TimestepEmbedder(c.hidden_size)
        self.y_embedder = LabelEmbedder(c.num_classes, c.hidden_size, c.class_dropout)
        grid = c.input_size // c.patch_size
        self.register_buffer("pos_embed", torch.from_numpy(sincos_pos_embed_2d(c.hidden_size, grid)).float()[None])
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size, c.out_channels)

    def _init_weights(self):
        def xavier(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

        self.apply(xavier)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for m in self.modules():
            if isinstance(m, (DiTBlock, FinalLayer)):
                nn.init.zeros_(m.adaLN_modulation[-1].weight)
                nn.init.zeros_(m.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor):
        c = self.config
        want = (c.in_channels, c.input_size, c.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"expected images of shape (B, {', '.join(map(str, want))}), got {tuple(x.shape)}")
        if t.shape != (x.shape[0],) or y.shape != (x.shape[0],):
            raise ValueError(f"t and y must have shape ({x.shape[0]},), got {tuple(t.shape)} and {tuple(y.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) > c.num_classes):
            raise ValueError(
                f"class ids must be in 0..{c.num_classes - 1} (or {c.num_classes} for the null class), "
                f"got {y.min().item()}..{y.max().item()}"
            )

    def embed(self, x, t, y, generator=None, drop_labels=None):
        """Tokens (B, N, D), timestep embedding (B, D) and class embedding (B, D); see `LabelEmbedder`."""
        self.check_inputs(x, t, y)
        h = self.x_embedder(x) + self.pos_embed  # (B, N, D)
        return h, self.t_embedder(t), self.y_embedder(y, generator, drop_labels)

    def run_blocks(self, blocks: nn.ModuleList, h, c):  # (B, N, D), (B, D) -> (B, N, D)
        """Explicit blocks in order (recomputed in backward with `grad_checkpoint`)."""
        for block in blocks:
            if self.grad_checkpoint and torch.is_grad_enabled():
                h = checkpoint(block, h, c, use_reentrant=False)
            else:
                h = block(h, c)
        return h

    def unpatchify(self, x):  # (B, N, p*p*C) -> (B, C, H, W)
        c = self.config
        p, g, C = c.patch_size, c.input_size // c.patch_size, c.out_channels
        x = x.reshape(x.shape[0], g, g, p, p, C)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], C, g * p, g * p)


class DiT(DiffusionTransformer):
    """The explicit baseline: `depth` adaLN-Zero blocks."""

    def __init__(self, config: ModelConfig, *, grad_checkpoint: bool = False):
        super().__init__(config, grad_checkpoint=grad_checkpoint)
        self.blocks = nn.ModuleList(DiTBlock(config.hidden_size, config.num_heads, config.mlp_ratio) for _ in range(config.depth))
        self._init_weights()

    def forward(self, x, t, y, generator=None, drop_labels=None):  # (B, C, H, W) -> (B, C_out, H, W)
        h, t_emb, y_emb = self.embed(x, t, y, generator, drop_labels)
        c = t_emb + y_emb  # (B, D)
        h = self.run_blocks(self.blocks, h, c)
        return self.unpatchify(self.final_layer(h, c))


class Encoded(NamedTuple):
    """What FPDM computes once per forward pass, before the fixed-point solve."""

    x_pre: torch.Tensor  # (B, N, D) output of the pre blocks
    inj: torch.Tensor  # (B, N, D) input injection
    c_fp: torch.Tensor  # (B, D) conditioning of the fixed-point block
    c_io: torch.Tensor  # (B, D) conditioning of pre/post blocks and the final layer


class FPDMOutput(NamedTuple):
    out: torch.Tensor  # (B, C_out, H, W)
    z: torch.Tensor  # (B, N, D) fixed-point solution (pass as z0 next step to reuse it)
    stats: SolverStats


class FPDM(DiffusionTransformer):
    """Fixed Point Diffusion Model: pre blocks -> weight-tied fixed-point block -> post blocks."""

    def __init__(self, config: ModelConfig, *, grad_checkpoint: bool = False):
        super().__init__(config, grad_checkpoint=grad_checkpoint)
        D, H, r = config.hidden_size, config.num_heads, config.mlp_ratio
        self.blocks_pre = nn.ModuleList(DiTBlock(D, H, r) for _ in range(config.pre_depth))
        self.block_pre_projection = nn.Linear(D, D)  # input injection
        self.block_fixed_point_projection_fc1 = nn.Linear(2 * D, 2 * D)
        self.block_fixed_point_projection_fc2 = nn.Linear(2 * D, D)
        self.block_fixed_point = DiTBlock(D, H, r)
        self.blocks_post = nn.ModuleList(DiTBlock(D, H, r) for _ in range(config.post_depth))
        self._init_weights()

    def encode(self, x, t, y, generator=None, drop_labels=None) -> Encoded:
        h, t_emb, y_emb = self.embed(x, t, y, generator, drop_labels)
        c_fp = t_emb + y_emb  # (B, D)
        c_io = c_fp if self.config.timestep_cond_pre_post else y_emb
        h = self.run_blocks(self.blocks_pre, h, c_io)  # (B, N, D)
        return Encoded(h, self.block_pre_projection(h), c_fp, c_io)

    def fixed_point_map(self, z, inj, c_fp):
        """f(z) = Block(fc2(GELU(fc1([z ; inj]))), c); (B, N, D) -> (B, N, D)."""
        u = self.block_fixed_point_projection_fc1(torch.cat([z, inj], dim=-1))  # (B, N, 2D)
        u = self.block_fixed_point_projection_fc2(F.gelu(u, approximate="tanh"))  # (B, N, D)
        return self.block_fixed_point(u, c_fp)

    def decode(self, z, c_io):  # (B, N, D) -> (B, C_out, H, W)
        z = self.run_blocks(self.blocks_post, z, c_io)
        return self.unpatchify(self.final_layer(z, c_io))

    def forward(self, x, t, y, *, z0=None, max_iter: int = 12, generator=None, drop_labels=None,
                **solver_kwargs) -> FPDMOutput:
        """Denoiser output via the solver (`solvers.solve` options pass through).

        z0: initial iterate (B, N, D), e.g. the previous timestep's solution; None starts at x_pre.
        drop_labels: (B,) bool, labels to replace by the null class (see `LabelEmbedder`).
        """
        enc = self.encode(x, t, y, generator, drop_labels)
        if z0 is None:
            z0 = enc.x_pre.detach()
        elif z0.shape != enc.x_pre.shape:
            raise ValueError(f"z0 must have shape {tuple(enc.x_pre.shape)}, got {tuple(z0.shape)}")
        z, stats = solve_outside_autocast(lambda z: self.fixed_point_map(z, enc.inj, enc.c_fp), z0, max_iter=max_iter,
                                          **solver_kwargs)
        return FPDMOutput(self.decode(z, enc.c_io), z, stats)


def solve_outside_autocast(f, z0: torch.Tensor, **solver_kwargs) -> tuple[torch.Tensor, SolverStats]:
    """`solvers.solve` with the caller's autocast (e.g. bf16) applied to `f` only.

    Residual norms and Anderson's least-squares mixing then run in >= float32: autocast would
    otherwise turn their matrix products into bf16. Without autocast this is just `solve`.
    """
    device = z0.device.type
    if not torch.is_autocast_enabled(device):
        return solve(f, z0, **solver_kwargs)
    dtype = torch.get_autocast_dtype(device)

    def f_autocast(z):
        with torch.autocast(device, dtype):
            return f(z)

    with torch.autocast(device, enabled=False):
        return solve(f_autocast, z0, **solver_kwargs)


# ----------------------------------------------------------------------------- registry
_XL = dict(input_size=32, in_channels=4, patch_size=2, hidden_size=1152, num_heads=16, num_classes=1000, learn_sigma=True)
_FM = dict(input_size=28, in_channels=1, patch_size=4, num_classes=10)

PRESETS: Mapping[str, ModelConfig] = MappingProxyType({  # read-only: change a model with overrides, not here
    # CI-sized: a forward pass in milliseconds
    "DiT-tiny": ModelConfig(kind="dit", **_FM, hidden_size=32, num_heads=2, depth=4),
    "FPDM-tiny": ModelConfig(kind="fpdm", **_FM, hidden_size=32, num_heads=2, pre_depth=1, post_depth=1),
    # Fashion-MNIST sizes that train on a 2-core CPU (49 tokens of 4x4 pixels)
    "DiT-FM-S": ModelConfig(kind="dit", **_FM, hidden_size=128, num_heads=4, depth=8),
    "FPDM-FM-S": ModelConfig(kind="fpdm", **_FM, hidden_size=128, num_heads=4, pre_depth=1, post_depth=1),
    "DiT-FM-M": ModelConfig(kind="dit", **_FM, hidden_size=192, num_heads=4, depth=8),
    "FPDM-FM-M": ModelConfig(kind="fpdm", **_FM, hidden_size=192, num_heads=4, pre_depth=1, post_depth=1),
    # the paper's ImageNet 256 px latent setting
    "DiT-XL/2": ModelConfig(kind="dit", **_XL, depth=28),
    "FPDM-XL/2": ModelConfig(kind="fpdm", **_XL, pre_depth=1, post_depth=1),
})


def build_model(config: ModelConfig | str, *, grad_checkpoint: bool = False, **overrides) -> DiT | FPDM:
    """Build a model from a config or a preset name; keyword overrides replace config fields.

    grad_checkpoint: recompute the explicit blocks in backward (see `DiffusionTransformer`).
    """
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"unknown preset {config!r}; choose one of {sorted(PRESETS)}")
        config = PRESETS[config]
    config = replace(config, **overrides)
    return (FPDM if config.kind == "fpdm" else DiT)(config, grad_checkpoint=grad_checkpoint)


def count_parameters(config: ModelConfig | str, **overrides) -> int:
    """Number of parameters, counted on the meta device (no weights allocated)."""
    with torch.device("meta"):
        model = build_model(config, **overrides)
    return sum(p.numel() for p in model.parameters())
