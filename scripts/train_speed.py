"""Training steps/s before and after a code change, measured side by side in one process.

    python scripts/train_speed.py --before REV     # minutes: FPDM-FM-M and DiT-FM-M, batch 128, fp32

Extracts the package at REV as `fpdm_core_before` (its imports are relative), builds one trainer of each
version per preset from the same seed, so both see the same batches and S-JFB draws, and alternates
their steps (old first on even steps, new first on odd ones) after one warm-up step each: a change of
load on a shared machine hits both versions alike. The float32 matmul peak is measured in the same
run, before and after. Writes `figures/bench/train_before_after.json` and copies it into
`figures/bench/speed.json` (if present), whose report section (`python -m fpdm_core.bench report`)
shows the table.
"""
from __future__ import annotations

import argparse
import importlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from fpdm_core import train
from fpdm_core.bench.harness import dump_json, machine_info, result_path, spread
from fpdm_core.bench.speed import BEFORE_AFTER, matmul_peaks, train_step_flops
from fpdm_core.budget import CostModel
from fpdm_core.models import PRESETS

ROOT = Path(__file__).resolve().parents[1]
PRESET_NAMES = ("FPDM-FM-M", "DiT-FM-M")
OLD = "fpdm_core_before"


def extract_old(rev: str, folder: Path):
    """`fpdm_core` at git revision `rev`, importable as `fpdm_core_before.train` from `folder`."""
    tar = subprocess.run(["git", "archive", rev, "fpdm_core"], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(folder, filter="data")
    (folder / "fpdm_core").rename(folder / OLD)
    sys.path.insert(0, str(folder))
    return importlib.import_module(f"{OLD}.train")


def time_side_by_side(modules: dict, preset: str, args) -> dict[str, list[list[float]]]:
    """{version: [[seconds, n_no_grad, n_grad] per step] per repeat}, the versions' steps alternating."""
    trainers = {v: m.Trainer(m.TrainConfig(model=preset, batch_size=args.batch, max_steps=1, precision="fp32",
                                           device="cpu", seed=args.seed, sample_every=0))
                for v, m in modules.items()}
    for t in trainers.values():
        t.step()  # warm-up
    runs = {v: [] for v in trainers}
    for r in range(args.repeats):
        print(f"[train_speed] {preset}: repeat {r + 1}/{args.repeats}", file=sys.stderr)
        for v in runs:
            runs[v].append([])
        for i in range(args.steps):
            for v in tuple(trainers)[:: 1 if (r * args.steps + i) % 2 == 0 else -1]:
                start = time.perf_counter()
                row = trainers[v].step()
                runs[v][-1].append([time.perf_counter() - start, row.get("n_no_grad", 0), row.get("n_grad", 0)])
    return runs


def summarize(preset: str, runs: dict[str, list], batch: int, peak: float) -> dict:
    """steps/s and GFLOP/s per version, the old/new time ratio of each pair of steps, fractions of the fp32 peak."""
    cost = CostModel.of(PRESETS[preset])
    out = {"preset": preset, "batch": batch}
    for version, repeats in runs.items():
        secs = [sum(s for s, _, _ in rows) for rows in repeats]
        flops = [sum(train_step_flops(cost, batch, n_ng, n_g) for _, n_ng, n_g in rows) for rows in repeats]
        gflops = spread([f / s / 1e9 for f, s in zip(flops, secs)])
        out[version] = {"steps_per_s": spread([len(rows) / s for rows, s in zip(repeats, secs)]),
                        "gflops_per_s": gflops, "fraction_of_fp32_peak": gflops["median"] / peak,
                        "draws": [[n_ng, n_g] for _, n_ng, n_g in repeats[0]]}
    # each step of the new code against the same step (same batch and draws) of the old code, run next to it
    out["speedup"] = spread([b[0] / a[0] for rb, ra in zip(runs["before"], runs["after"]) for b, a in zip(rb, ra)])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="git revision of the old code (e.g. a commit id)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=4, help="timed training steps per version and repeat")
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
        modules = {"before": extract_old(before, Path(tmp)), "after": train}
        runs = {preset: time_side_by_side(modules, preset, a) for preset in PRESET_NAMES}
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
