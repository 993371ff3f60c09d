"""What a training run is configured with (`TrainConfig`), and reading it back from a checkpoint.

A checkpoint stores the config in two places of its JSON metadata: `meta["train"]` (every field
but `diffusion`) and `meta["diffusion"]` (the `DiffusionConfig`, which sampling needs too).
`TrainConfig.from_meta` reads both, including files written by earlier versions of the kit.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from .cli import MAX_SEED
from .data import DATASETS
from .devices import PRECISIONS
from .diffusion import DiffusionConfig
from .models import PRESETS, ModelConfig
from .options import check_fields, option

GRADIENTS = ("sjfb", "jfb", "full")  # how FPDM's fixed-point iterations are differentiated
# ModelConfig fields the trainer sets itself: the data decides the image shape, the flag has its own option
DATA_FIELDS = ("kind", "input_size", "in_channels", "timestep_cond_pre_post")
LEGACY_NAMES = {"method": "gradient"}  # meta["train"] keys of earlier versions -> TrainConfig fields


def train_option(default, help: str, **declaration):
    """A declared `TrainConfig` field (`options.option`): training flags are not on the app's page."""
    return option(default, help, app=None, **declaration)


@dataclass
class TrainConfig:
    """A training run's settings. Declared fields (`train_option`) give `python -m fpdm_core.train` its flags and
    checks; `model_overrides`, `diffusion` and the two iteration ranges have flags of their own shape."""

    model: str = train_option("FPDM-FM-S", "model preset", choices=tuple(sorted(PRESETS)))
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields replacing the preset's: {"pre_depth": 2}
    diffusion: DiffusionConfig = DiffusionConfig()  # the process trained (and then sampled) with
    timestep_cond_pre_post: bool = train_option(False, "FPDM: condition the pre/post blocks on t too")
    dataset: str = train_option("fashion-mnist", "training images", choices=DATASETS)
    data_dir: str | None = train_option(None, "dataset folder (Fashion-MNIST IDX files, your image folder, or "
                                              "latents from `python -m fpdm_core.latents encode`)")
    subset: int | None = train_option(None, "use only the first N training images", lo=1)
    batch_size: int = train_option(128, "images per optimizer step", lo=1)
    lr: float = train_option(1e-3, "AdamW learning rate", lo=0.0, lo_open=True)
    weight_decay: float = train_option(0.0, "AdamW weight decay", lo=0.0)
    warmup_steps: int = train_option(200, "linear lr warm-up", lo=0)
    grad_clip: float = train_option(1.0, "max gradient norm", lo=0.0, lo_open=True)
    ema_decay: float = train_option(0.999, "EMA decay of the sampling weights", lo=0.0, hi=1.0)
    ema_warmup: bool = train_option(True, "EMA decay min(ema_decay, (1 + step) / (10 + step)), so the early EMA "
                                          "is not stuck at the init; off: ema_decay from the first step")
    gradient: str = train_option("sjfb", "FPDM gradient: sjfb (stochastic JFB), jfb (n_grad = 1), full (backprop "
                                         "through all iterations)", choices=GRADIENTS)
    no_grad_iters: tuple[int, int] = (0, 10)  # n_ng ~ U{a..b}
    grad_iters: tuple[int, int] = (1, 12)  # n_g ~ U{c..d}
    recompute: bool = train_option(False, "recompute each gradient iteration in backward (memory flat in n_grad)")
    grad_checkpoint: bool = train_option(False, "recompute the explicit blocks (DiT blocks, FPDM pre/post blocks) "
                                                "in backward (less memory)")
    compile: bool = train_option(False, "torch.compile the fixed-point map (FPDM) or the model (DiT); first steps "
                                        "are slow")
    tf32: bool = train_option(True, "CUDA: TF32 matmuls for float32 work")
    precision: str = train_option("auto", "auto = bf16 autocast on CUDA and on CPUs with AMX", choices=PRECISIONS)
    device: str = train_option("auto", "auto, cpu, cuda, cuda:N or mps")
    seed: int = train_option(0, "0..2**32-1 (torch's generator keeps 32 bits)", lo=0, hi=MAX_SEED)
    max_steps: int | None = train_option(None, "stop after this many training steps in all", lo=1)
    max_minutes: float | None = train_option(None, "wall-clock limit of this sitting", lo=0.0, lo_open=True)
    log_every: int = train_option(50, "log the loss every N steps", lo=1)
    sample_every: int = train_option(1000, "save a sample grid every N steps (0 = never)", lo=0)
    save_every: int = train_option(500, "save the checkpoint every N steps", lo=1)

    def __post_init__(self):
        check_fields(self)
        self.model_config()  # checks the overrides
        if not isinstance(self.diffusion, DiffusionConfig):
            raise ValueError(f"diffusion must be a DiffusionConfig, got {type(self.diffusion).__name__}")
        for name in ("no_grad_iters", "grad_iters"):
            lo, hi = getattr(self, name)
            if lo > hi or lo < (1 if name == "grad_iters" else 0):
                raise ValueError(f"{name} must be a range lo <= hi with lo >= {1 if name == 'grad_iters' else 0}, got {(lo, hi)}")
        if self.max_steps is None and self.max_minutes is None:
            raise ValueError("give --max-steps or --max-minutes (or both)")

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
