"""The command line: one sub-command per benchmark, `all` (every benchmark, then the report) and `report`.

Modes: default = full settings (the evidence: hours on a 2-core CPU, minutes on a GPU); `--quick` =
minutes on a CPU, a smoke test (no verdicts); `--tiny` = CI-sized settings for the tests.
Timings are medians over `repeats`; spread = (max - min) / median. Bad input and a benchmark that cannot
run (a missing checkpoint, a bad setting) end in one `error:` line each and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from dataclasses import replace
from pathlib import Path

import torch

from .. import cli
from ..devices import pick_device
from . import BENCHMARKS, readme
from .harness import SCALES, Context, jsonable
from .memory import memstep
from .report import write_report


def _help(name: str) -> str:
    """The first paragraph of the benchmark module's docstring, on one line (% escaped for argparse)."""
    return " ".join(BENCHMARKS[name].__doc__.strip().split("\n\n")[0].split()).replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    names = (*BENCHMARKS, "all", "report")
    p = cli.ArgumentParser(prog="python -m fpdm_core.bench", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{" + ",".join(names) + "}")
    helps = {name: _help(name) for name in BENCHMARKS} | {"all": "every benchmark, then the report",
                                                           "report": "write <out>/RESULTS.md from the JSON files"}
    for name in names:
        s = sub.add_parser(name, help=helps[name], description=helps[name])
        s.add_argument("--out", default="figures",
                       help="folder for RESULTS.md and the figures; JSON goes to <out>/bench (default: figures)")
        if name == "report":
            continue
        mode = s.add_mutually_exclusive_group()
        mode.add_argument("--quick", action="store_true", help="minutes instead of hours: a smoke test, no verdicts")
        mode.add_argument("--tiny", action="store_true", help="CI-sized settings for tests (numbers are not evidence)")
        s.add_argument("--seed", type=cli.int_in(0, cli.MAX_SEED), default=0,
                       help="seed of weights, data, noise and draws (default: 0)")
        s.add_argument("--repeats", type=cli.int_in(1), default=None, help="override the mode's number of timing repeats")
        s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (default: cpu)")
        s.add_argument("--threads", type=cli.threads_type(), default=None,
                       help="torch CPU threads (default: torch's choice)")
        s.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                       help="training precision in speed and ablations; sampling follows SamplerConfig (fp32) "
                            "(default: auto = bf16 on CUDA GPUs with bf16 and on CPUs with AMX, else fp32)")
        s.add_argument("--fpdm", default=None, help="FPDM checkpoint (default: the shipped one)")
        s.add_argument("--dit", default=None, help="DiT checkpoint (default: the shipped one)")
        s.add_argument("--dit-deep", default=None,
                       help="headline: a deeper DiT baseline (default: the shipped dit16-fm-m.safetensors if present)")
        s.add_argument("--classifier", default=None, help="Fashion-MNIST judge (default: the shipped one)")
        if name in ("ablations", "all"):
            s.add_argument("--minutes", type=cli.float_in(0.0, lo_open=True), default=None,
                           help="ablations: wall-clock cap per run in minutes (default: the mode's)")
            s.add_argument("--jobs", type=cli.int_in(1), default=1,
                           help="ablations: runs trained at once in worker processes (default: 1)")
        if name == "memory":
            s.add_argument("--only-paper", action="store_true",
                           help="measure only FPDM-XL/2 vs DiT-XL/2 (batch 8, about 20 GiB) and merge into memory.json")
    sub.add_parser("_memstep").add_argument("spec", help=argparse.SUPPRESS)  # hidden: one measured step, JSON in/out
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = build_parser().parse_args(argv)
    if a.command == "_memstep":
        print(json.dumps(jsonable(memstep(json.loads(a.spec)))))
        return 0
    out = Path(a.out)
    if a.command == "report":
        write_report(out, BENCHMARKS)
        readme.sync(out, BENCHMARKS)
        return 0
    if a.threads:
        torch.set_num_threads(a.threads)
    scale = SCALES["tiny" if a.tiny else "quick" if a.quick else "full"]
    if a.repeats:
        scale = replace(scale, repeats=a.repeats)
    try:
        device = pick_device(a.device)
    except ValueError as e:
        return cli.fail(e)
    ctx = Context(out, scale, a.seed, device, a.precision, a.fpdm and Path(a.fpdm), a.dit and Path(a.dit),
                  a.classifier and Path(a.classifier), getattr(a, "minutes", None),
                  "python -m fpdm_core.bench " + " ".join(argv), jobs=getattr(a, "jobs", 1),
                  only_paper=getattr(a, "only_paper", False), dit_deep_path=a.dit_deep and Path(a.dit_deep))
    names = tuple(BENCHMARKS) if a.command == "all" else (a.command,)
    failed = []
    for name in names:
        try:
            BENCHMARKS[name].run(ctx)
        except (FileNotFoundError, ValueError) as e:  # a missing checkpoint or classifier, a bad setting
            cli.fail(f"{name}: {e}")
            failed.append(name)
        except Exception:  # noqa: BLE001 - `all` goes on with the other benchmarks
            if len(names) == 1:
                raise
            traceback.print_exc()
            failed.append(name)
    if a.command == "all":
        write_report(out, BENCHMARKS)
        readme.sync(out, BENCHMARKS)
    return cli.EXIT_BAD_INPUT if failed else 0
