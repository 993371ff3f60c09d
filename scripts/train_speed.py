"""Training steps/s before and after a code change, measured side by side.

    python scripts/train_speed.py --before REV     # minutes: FPDM-FM-M and DiT-FM-M, batch 128, fp32

Checks REV out in a temporary git worktree and alternates fresh processes of the old and the new
code (old first on even repeats, new first on odd ones). Each process trains one preset from the
same seed, so both versions see the same batches and S-JFB draws, and times `--steps` steps after
one warm-up step. The float32 matmul peak is measured in the same run, before and after. Writes
`figures/bench/train_before_after.json` and copies it into `figures/bench/speed.json` (if present),
whose report section (`python -m fpdm_core.bench report`) shows the table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from fpdm_core.bench.harness import dump_json, machine_info, result_path, spread
from fpdm_core.bench.speed import BEFORE_AFTER, matmul_peaks, train_step_flops
from fpdm_core.budget import CostModel
from fpdm_core.models import PRESETS

ROOT = Path(__file__).resolve().parents[1]
PRESET_NAMES = ("FPDM-FM-M", "DiT-FM-M")
WORKER = """
import json, time, torch
torch.set_num_threads({threads})
from fpdm_core.train import TrainConfig, Trainer
trainer = Trainer(TrainConfig(model={preset!r}, batch_size={batch}, max_steps=1, precision="fp32", device="cpu",
                              seed={seed}, sample_every=0))
trainer.step()  # warm-up
rows = []
for _ in range({steps}):
    start = time.perf_counter()
    row = trainer.step()
    rows.append([time.perf_counter() - start, row.get("n_no_grad", 0), row.get("n_grad", 0)])
print(json.dumps(rows))
"""


def run_worker(tree: Path, preset: str, args) -> list[list[float]]:
    """[[seconds, n_no_grad, n_grad] per step] of `preset` trained with the code in `tree`."""
    code = WORKER.format(threads=args.threads, preset=preset, batch=args.batch, seed=args.seed, steps=args.steps)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, text=True, capture_output=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(preset: str, runs: dict[str, list], batch: int, peak: float) -> dict:
    """steps/s and GFLOP/s per version, the new/old ratio per repeat, fractions of the fp32 peak."""
    cost = CostModel.of(PRESETS[preset])
    out = {"preset": preset, "batch": batch}
    for version, repeats in runs.items():
        secs = [sum(s for s, _, _ in rows) for rows in repeats]
        flops = [sum(train_step_flops(cost, batch, n_ng, n_g) for _, n_ng, n_g in rows) for rows in repeats]
        gflops = spread([f / s / 1e9 for f, s in zip(flops, secs)])
        out[version] = {"steps_per_s": spread([len(rows) / s for rows, s in zip(repeats, secs)]),
                        "gflops_per_s": gflops, "fraction_of_fp32_peak": gflops["median"] / peak,
                        "draws": [[n_ng, n_g] for _, n_ng, n_g in repeats[0]]}
    out["speedup"] = spread([sum(s for s, _, _ in a) / sum(s for s, _, _ in b)
                             for a, b in zip(runs["before"], runs["after"])])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="git revision of the old code (e.g. a commit id)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="timed training steps per process")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "figures"), help="figures folder (JSON goes to <out>/bench)")
    a = p.parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(a.threads)
    before = subprocess.run(["git", "rev-parse", "--short", a.before], cwd=ROOT, text=True, capture_output=True,
                            check=True).stdout.strip()
    peaks = [matmul_peaks((2048,), 3, torch.device("cpu"))["fp32"]["peak_gflops"]]
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(old), before], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            trees = {"before": old, "after": ROOT}
            runs = {preset: {v: [] for v in trees} for preset in PRESET_NAMES}
            for r in range(a.repeats):
                for preset in PRESET_NAMES:
                    for version in tuple(trees)[:: 1 if r % 2 == 0 else -1]:
                        print(f"[train_speed] repeat {r + 1}/{a.repeats}: {preset}, {version}", file=sys.stderr)
                        runs[preset][version].append(run_worker(trees[version], preset, a))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
    peaks.append(matmul_peaks((2048,), 3, torch.device("cpu"))["fp32"]["peak_gflops"])
    peak = max(peaks)
    data = {"command": "python scripts/train_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "before": before, "machine": machine_info("cpu"), "repeats": a.repeats, "steps": a.steps,
            "precision": "fp32", "fp32_peak_gflops": peak, "fp32_peaks_measured": peaks,
            "rows": [summarize(preset, runs[preset], a.batch, peak) for preset in PRESET_NAMES],
            "elapsed_s": round(time.perf_counter() - started, 1)}
    out = Path(a.out)
    dump_json(result_path(out, BEFORE_AFTER), data)
    speed = result_path(out, "speed")
    if speed.is_file():
        d = json.loads(speed.read_text())
        d["results"][BEFORE_AFTER] = data
        dump_json(speed, d)
    print(json.dumps({r["preset"]: r["speedup"]["median"] for r in data["rows"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
