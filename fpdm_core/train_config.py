"""What a training run is configured with (`TrainConfig`), and reading it back from a checkpoint.

A checkpoint stores the config in two places of its JSON metadata: `meta["train"]` (every field
but `diffusion`) and `meta["diffusion"]` (the `DiffusionConfig`, which sampling needs too).
`TrainConfig.from_meta` reads both, including files written by earlier versions of the kit.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from .diffusion import DiffusionConfig
from .models import PRESETS, ModelConfig

GRADIENTS = ("sjfb", "jfb", "full")  # how FPDM's fixed-point iterations are differentiated
# ModelConfig fields the trainer sets itself: the data decides the image shape, the flag has its own option
DATA_FIELDS = ("kind", "input_size", "in_channels", "timestep_cond_pre_post")
LEGACY_NAMES = {"method": "gradient"}  # meta["train"] keys of earlier versions -> TrainConfig fields


@dataclass
class TrainConfig:
    model: str = "FPDM-FM-S"
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields replacing the preset's: {"pre_depth": 2}
    diffusion: DiffusionConfig = DiffusionConfig()  # the process trained (and then sampled) with
    timestep_cond_pre_post: bool = False
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    subset: int | None = None  # train on the first N images only
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True  # decay min(ema_decay, (1 + step) / (10 + step)): early EMA not stuck at the init
    gradient: str = "sjfb"  # FPDM only, one of GRADIENTS: S-JFB, JFB (n_grad = 1) or backprop through all
    no_grad_iters: tuple[int, int] = (0, 10)  # n_ng ~ U{a..b}
    grad_iters: tuple[int, int] = (1, 12)  # n_g ~ U{c..d}
    recompute: bool = False  # recompute each gradient iteration in backward (memory flat in n_g)
    grad_checkpoint: bool = False  # recompute the explicit blocks (DiT blocks, FPDM pre/post) in backward
    compile: bool = False  # torch.compile the fixed-point map (FPDM) or the whole model (DiT)
    tf32: bool = True  # CUDA only: TF32 matmuls for float32 work
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    max_steps: int | None = None
    max_minutes: float | None = None
    log_every: int = 50
    sample_every: int = 1000
    save_every: int = 500

    def __post_init__(self):
        if self.model not in PRESETS:
            raise ValueError(f"unknown model preset {self.model!r}; choose one of {sorted(PRESETS)}")
        self.model_config()  # checks the overrides
        if not isinstance(self.diffusion, DiffusionConfig):
            raise ValueError(f"diffusion must be a DiffusionConfig, got {type(self.diffusion).__name__}")
        if self.gradient not in GRADIENTS:
            raise ValueError(f"unknown gradient {self.gradient!r}; choose one of {GRADIENTS}")
        for name in ("no_grad_iters", "grad_iters"):
            lo, hi = getattr(self, name)
            if lo > hi or lo < (1 if name == "grad_iters" else 0):
                raise ValueError(f"{name} must be a range lo <= hi with lo >= {1 if name == 'grad_iters' else 0}, got {(lo, hi)}")
        if self.batch_size < 1 or self.lr <= 0:
            raise ValueError("batch_size must be >= 1 and lr > 0")
        if self.max_steps is None and self.max_minutes is None:
            raise ValueError("give --max-steps or --max-minutes (or both)")
        if self.log_every < 1 or self.save_every < 1 or self.sample_every < 0:
            raise ValueError(f"log_every and save_every must be >= 1 and sample_every >= 0 (0 = never), "
                             f"got {self.log_every}, {self.save_every}, {self.sample_every}")

    def model_config(self) -> ModelConfig:
        """The preset with `model_overrides` applied (image shape and classes still come from the data)."""
        preset = PRESETS[self.model]
        for key, value in self.model_overrides.items():
            if key not in ModelConfig.__dataclass_fields__ or key in DATA_FIELDS:
                allowed = sorted(set(ModelConfig.__dataclass_fields__) - set(DATA_FIELDS))
                raise ValueError(f"model override {key!r} is not allowed; choose from {allowed}")
            default = getattr(preset, key)
            kinds = {bool: (bool, "true or false"), int: (int, "an integer"), float: ((int, float), "a number")}
            kind = kinds[type(default)]
            if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, kind[0]):
                raise ValueError(f"model override {key}={value!r} must be {kind[1]}")
        return replace(preset, **self.model_overrides)  # ModelConfig checks the values

    def to_meta(self) -> dict:
        """`meta["train"]`: every field as JSON but `diffusion`, which checkpoints store as `meta["diffusion"]`."""
        return {k: v for k, v in asdict(self).items() if k != "diffusion"}

    @classmethod
    def from_meta(cls, meta: dict) -> TrainConfig:
        """The config a checkpoint's metadata records (`meta["train"]` and `meta["diffusion"]`).

        The one place that reads files of earlier versions: keys renamed since (LEGACY_NAMES, e.g. the
        gradient estimator was `method`) are mapped, fields they lack take the defaults (which those
        runs used: a file without "diffusion" was trained with `DiffusionConfig()`). Raises ValueError.
        """
        train = {LEGACY_NAMES.get(k, k): v for k, v in meta["train"].items()}
        unknown = sorted(set(train) - {f.name for f in fields(cls)} | ({"diffusion"} & set(train)))
        if unknown:
            raise ValueError(f"unknown training config field(s) {unknown}")
        for key in ("no_grad_iters", "grad_iters"):
            if key in train:
                train[key] = tuple(train[key])
        return cls(**train, diffusion=DiffusionConfig.from_dict(meta.get("diffusion", {})))
