"""Benchmarks that measure the paper's claims on this machine: `python -m fpdm_core.bench --help`.

Layout: `harness` (modes, run context, timing, JSON, figures), `report` (RESULTS.md), `scoring`
(image-by-image accuracy for paired intervals), `points` (one scored sampling point), `app_latency`
(the app's request, timed for `speed`), `cli` (the command line) and one module per benchmark. Each
benchmark module holds its run, figure, table and verdicts together and has:

    NAME: str              # sub-command, JSON `<out>/bench/NAME.json`, figure `<out>/NAME.png`
    TITLE: str             # heading in RESULTS.md
    CLAIMS: list[str]      # the claims it tests, as the paper states them
    run(ctx) -> Path       # measure, write the JSON with harness.write_result, draw the figure
    verdicts(data) -> list[dict]   # harness.finding(status, claim, sentence): stats.verdict or "measured"
    section(data) -> str   # markdown body (tables) for RESULTS.md

Its docstring's first line is its help in the command line. Add a benchmark: write the module and
add its name to ORDER (report order). `report` skips benchmarks whose JSON is missing.
"""
from __future__ import annotations

import importlib

ORDER = (
    "params",
    "memory",
    "speed",
    "landscape",
    "headline",
    "precision",
    "quality",
    "convergence",
    "ablations",
    "depth",
)
BENCHMARKS = {name: importlib.import_module(f".{name}", __name__) for name in ORDER}

from .cli import main  # noqa: E402 - the command line reads BENCHMARKS
from .harness import timed  # noqa: E402
from .memory import estimate_step_memory, saved_tensor_bytes  # noqa: E402
from .params import PARAM_PAIRS  # noqa: E402

__all__ = ["BENCHMARKS", "ORDER", "PARAM_PAIRS", "estimate_step_memory", "main", "saved_tensor_bytes", "timed"]
