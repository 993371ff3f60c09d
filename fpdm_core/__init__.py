"""fpdm_core: Fixed Point Diffusion Models (Bai & Melas-Kyriazi, CVPR 2024), small and exact.

Modules, one concern each:
- the method: `models` (DiT, FPDM, presets), `solvers` (fixed-point solvers with residual traces),
  `diffusion` (`DiffusionConfig`, schedules, DDPM/DDIM steps), `budget` (compute budgets, allocation,
  timestep smoothing), `sampling` (`SamplerConfig`, budgeted progressive sampling), `options`
  (settings declared once, from which flags and app controls are derived);
- training and files: `train` / `train_config` (S-JFB, JFB, full backprop), `checkpoints`
  (safetensors with model and diffusion configs), `assets` (where shipped files are), `data`,
  `latent_shards`, `latents`, `interop` (the authors' and DiT's checkpoints), `distributed`, `devices`;
- judging: `classifier` (the Fashion-MNIST judge), `metrics` (FCD), `scores` (two feature spaces),
  `stats` (intervals and verdicts), `bench/` (the benchmarks), `plots`;
- front ends: `sample` (command line), `app_*` (the Gradio app's back end), `tutorial` and
  `toy_problems` (the notebooks), `cli` (the command-line convention).
"""
from .checkpoints import load_model, load_pipeline
from .diffusion import DiffusionConfig, GaussianDiffusion
from .models import DiT, FPDM, ModelConfig, PRESETS, build_model, count_parameters
from .sampling import SamplerConfig  # not `sample`: that name is the `fpdm_core.sample` command-line module
from .solvers import NonFiniteError, SolverStats, solve

__version__ = "0.1.0"
__all__ = ["DiT", "DiffusionConfig", "FPDM", "GaussianDiffusion", "ModelConfig", "NonFiniteError", "PRESETS",
           "SamplerConfig", "SolverStats", "__version__", "build_model", "count_parameters", "load_model",
           "load_pipeline", "solve"]
