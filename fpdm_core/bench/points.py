"""One measured point of the quality benchmarks: sample n images with paired noise, score them in both feature spaces.

Points sampled with the same `seed`, n and batch size start from the same noise and labels, so
any two of them get a paired interval of their difference (`scores.paired_differences`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..diffusion import GaussianDiffusion
from ..sampling import SamplerConfig, balanced_labels, per_image_costs, sample_many
from ..scores import METRICS, Reference, Scores, build_reference, paired_differences, score, summarize
from .harness import Context, bench_diffusion, load_judge

BATCH = 500  # images per sampling batch: part of the noise pairing, so fixed across machines
SELECTION_SEED = 10_000  # seed set the landscape chooses splits on; reports use ctx.seed (disjoint batches)
MIN_ACCURACY = 0.3  # a model below this class accuracy (chance: 0.1) makes its comparisons underpowered
REFERENCE = {"full": dict(n_fd=10000, n_pca=10000, n_prdc=1000), "quick": dict(n_fd=2000, n_pca=2000, n_prdc=500),
             "tiny": dict(n_fd=300, n_pca=300, n_prdc=100)}


@dataclass
class Evaluator:
    """Samples and scores points on one device against one real reference."""

    ctx: Context
    n_boot: int
    classifier: torch.nn.Module = field(init=False)
    ref: Reference = field(init=False)
    diffusion: GaussianDiffusion = field(init=False)

    def __post_init__(self):
        self.classifier = load_judge(self.ctx)
        self.ref = build_reference(self.classifier, device=self.ctx.device, **REFERENCE[self.ctx.scale.name])
        self.diffusion = bench_diffusion(self.ctx)  # the checkpoints' process

    def measure(self, model, config: SamplerConfig, n: int, seed: int) -> tuple[Scores, dict]:
        """(per-image scores, summary row): every metric with its interval, costs and wall time."""
        labels = balanced_labels(n, model.config.num_classes)
        start = time.perf_counter()
        images, records = sample_many(model, self.diffusion, labels, config, seed=seed, batch_size=BATCH,
                                      device=self.ctx.device)
        seconds = time.perf_counter() - start
        s = score(images.to(self.ctx.device), labels, self.classifier, self.ref)
        block_evals, flops = per_image_costs(records, n, BATCH)
        row = {"n": n, "seed": seed, "seconds": seconds, "block_evals": block_evals, "flops": flops,
               "steps": records[0].plan["steps"], "iterations": records[0].plan["iterations"],
               "metrics": summarize(s, self.ref, n_boot=self.n_boot, seed=seed)}
        row["diagnostics"] = row["metrics"].pop("diagnostics")
        return s, row

    def compare(self, a: Scores, b: Scores, seed: int) -> dict:
        """{metric: {value, lo, hi}} of a - b over paired images."""
        return paired_differences(a, b, self.ref, n_boot=self.n_boot, seed=seed)


def metric_info() -> dict:
    return {k: dict(v) for k, v in METRICS.items()}
