"""The on-disk format of encoded latents (what `python -m fpdm_core.latents encode` writes) and its reader.

A folder holds `latents.json` (format, scale, VAE, size, classes, shard list) and shards
`latents-00000.safetensors`, ... with `latents` (n, 4, h, w), `labels` (n,) and the format in
their metadata. Reading needs neither diffusers nor the VAE, so the `latents` training dataset
(`fpdm_core.data.load_dataset`) depends on this module alone.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

FORMAT = "fpdm-latents/1"
SHARD_PATTERN = "latents-{:05d}.safetensors"
INDEX_NAME = "latents.json"
STORE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class LatentsError(ValueError):
    """A missing or unreadable latent folder, or a VAE that cannot be loaded locally."""


def read_latents_info(folder: str | Path) -> dict:
    """The folder's latents.json (format, scale, vae, size, classes, shards)."""
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        raise LatentsError(f"{folder} has no {INDEX_NAME}: encode images first with "
                           f"`python -m fpdm_core.latents encode`")
    info = json.loads(path.read_text())
    if info.get("format") != FORMAT:
        raise LatentsError(f"{path} has format {info.get('format')!r}, expected {FORMAT!r}")
    return info


def load_latents(folder: str | Path, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All shards of `folder`, in order: latents (N, 4, h, w) (stored dtype unless `dtype`) and labels (N,)."""
    info = read_latents_info(folder)
    xs, ys = [], []
    for shard in info["shards"]:
        path = Path(folder) / shard["file"]
        if not path.is_file():
            raise LatentsError(f"{path} is missing (listed in {INDEX_NAME})")
        with safe_open(path, "pt") as f:
            meta = json.loads((f.metadata() or {}).get("fpdm_latents", "{}"))
            if meta.get("format") != FORMAT:
                raise LatentsError(f"{path} is not a latent shard of this kit")
            x, y = f.get_tensor("latents"), f.get_tensor("labels")
        if len(x) != len(y) or len(x) != shard["count"]:
            raise LatentsError(f"{path}: {len(x)} latents, {len(y)} labels, index says {shard['count']}")
        xs.append(x if dtype is None else x.to(dtype))
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)
