"""fpdm_core: Fixed Point Diffusion Models (Bai & Melas-Kyriazi, CVPR 2024), small and exact.

Modules, one concern each: `models` (DiT, FPDM, presets), `solvers` (fixed-point solvers with
residual traces), `diffusion` (schedules and DDPM/DDIM steps), `budget` (compute budgets and
allocation), `sampling` (budgeted, progressive sampling), `devices`, `data`, `train` (S-JFB),
`checkpoints` (safetensors), `plots`.
"""
from .models import DiT, FPDM, ModelConfig, PRESETS, build_model, count_parameters
from .solvers import NonFiniteError, SolverStats, solve

__version__ = "0.1.0"
__all__ = ["DiT", "FPDM", "ModelConfig", "PRESETS", "build_model", "count_parameters", "NonFiniteError",
           "SolverStats", "solve", "__version__"]
