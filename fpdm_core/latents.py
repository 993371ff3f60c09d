"""Latent space, as in the paper: Stable-Diffusion VAE latents (4 x H/8 x W/8, scaled by 0.18215).

    python -m fpdm_core.latents encode --vae PATH --images DIR --out DIR --size 256
    python -m fpdm_core.train --dataset latents --data-dir DIR --model FPDM-XL/2 ...
    python -m fpdm_core.latents sample --vae PATH --checkpoint RUN/checkpoint.safetensors --out grid.png

`encode` turns an image folder (the `fpdm_core.data.load_image_folder` rules: one class per
subfolder, sorted names) into shards `latents-00000.safetensors`, ... each holding `latents`
(n, 4, h, w) already multiplied by the scale, `labels` (n,) and, in its metadata, the image
files they came from in order; latent i and label i always come from the same file, so labels
can never be paired with the wrong features. `load_latents(dir)` reads them back (the
`latents` dataset of training). `decode_latents(vae, z)` maps sampled latents to images.

The VAE is a diffusers `AutoencoderKL` read from a local folder, or from your Hugging Face cache
by repository id, always with `local_files_only=True`: nothing is ever downloaded here.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from . import cli
from .checkpoints import load_checkpoint, load_pipeline
from .data import IMAGE_SUFFIXES
from .latent_shards import FORMAT, INDEX_NAME, SHARD_PATTERN, STORE_DTYPES, LatentsError
from .devices import pick_device
from .plots import save_grid
from .sampling import SamplerConfig, sample

HEADLINE = SamplerConfig()  # the kit's default sampler: steps, iterations and guidance of `sample`

LATENT_SCALE = 0.18215  # Stable Diffusion's VAE (sd-vae-ft-ema / -mse), used by DiT and FPDM
POSTERIORS = ("mean", "sample")


# ----------------------------------------------------------------------------- VAE
def load_vae(path_or_id: str | Path, *, subfolder: str | None = None, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32):
    """A diffusers `AutoencoderKL` from a local folder or the local Hugging Face cache; never downloads.

    path_or_id: a folder written by `save_pretrained` (or a model repository's folder; pass
    subfolder="vae" for a full Stable Diffusion checkout), or a repository id such as
    "stabilityai/sd-vae-ft-ema" that is already in your cache.
    """
    try:
        from diffusers import AutoencoderKL
    except ImportError as e:
        raise LatentsError("latent space needs diffusers, the kit's [latents] extra: `pip install -e '.[latents]'`") from e
    try:
        vae = AutoencoderKL.from_pretrained(str(path_or_id), subfolder=subfolder, local_files_only=True,
                                            torch_dtype=dtype, low_cpu_mem_usage=False)
    except (OSError, ValueError, EnvironmentError) as e:
        raise LatentsError(
            f"cannot load a VAE from {str(path_or_id)!r} without downloading ({type(e).__name__}: {e}). Give a folder "
            f"written by `AutoencoderKL.save_pretrained`, or fetch the weights yourself first, e.g. "
            f"`huggingface-cli download stabilityai/sd-vae-ft-ema --local-dir vae/sd-vae-ft-ema`, then --vae "
            f"vae/sd-vae-ft-ema") from e
    return vae.to(device).eval().requires_grad_(False)


def vae_downsampling(vae) -> int:
    """How many pixels one latent covers per side: 8 for Stable Diffusion's VAE (4 resolution levels)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def vae_scale(vae, scale: float | None = None) -> float:
    """`scale` if given, else the VAE's `config.scaling_factor` (0.18215 for Stable Diffusion's VAE)."""
    return float(scale if scale is not None else getattr(vae.config, "scaling_factor", LATENT_SCALE))


@torch.no_grad()
def encode_images(vae, x: torch.Tensor, *, scale: float | None = None, posterior: str = "mean",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Images in [-1, 1] (B, 3, H, W) -> scaled latents (B, 4, H/8, W/8) on the VAE's device, float32.

    posterior: "mean" (deterministic) or "sample" (one draw from the VAE posterior, as DiT does).
    """
    if posterior not in POSTERIORS:
        raise ValueError(f"posterior must be one of {POSTERIORS}, got {posterior!r}")
    p = next(vae.parameters())
    dist = vae.encode(x.to(p.device, p.dtype)).latent_dist
    if posterior == "mean":
        z = dist.mean
    else:  # drawn on the CPU from `generator`, so a seed gives the same latents on any device
        eps = torch.randn(dist.mean.shape, generator=generator, dtype=torch.float32).to(p.device, dist.mean.dtype)
        z = dist.mean + dist.std * eps
    return z.float() * vae_scale(vae, scale)


@torch.no_grad()
def decode_latents(vae, z: torch.Tensor, *, scale: float | None = None, batch_size: int = 16) -> torch.Tensor:
    """Scaled latents (B, 4, h, w) -> images in [-1, 1] (B, 3, 8h, 8w), float32 on z's device.

    The inverse of `encode_images` up to the VAE's reconstruction error: divides by the scale,
    decodes in chunks of `batch_size` (VAE decoding at 256 px is memory hungry) and clamps.
    """
    p = next(vae.parameters())
    s = vae_scale(vae, scale)
    out = [vae.decode(chunk.to(p.device, p.dtype) / s).sample.float().clamp(-1, 1).to(z.device)
           for chunk in z.split(batch_size)]
    return torch.cat(out)


# ----------------------------------------------------------------------------- image folder
def list_image_folder(root: str | Path) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names) in exactly the order `data.load_image_folder` reads them.

    One class per subfolder (sorted names -> ids); images directly in `root` form one class "all";
    hidden entries (".ipynb_checkpoints", "._x.png") are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    groups = [(d.name, d) for d in subdirs] or [("all", root)]
    files, labels = [], []
    for label, (_, folder) in enumerate(groups):
        for path in sorted(p for p in folder.iterdir()
                           if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")):
            files.append(path)
            labels.append(label)
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {root}")
    return files, labels, [name for name, _ in groups]


def load_image(path: Path, size: int, channels: int = 3) -> np.ndarray:
    """One image resized (shorter side) and centre-cropped to size x size: uint8 (size, size, channels).

    The same preprocessing as `data.load_image_folder` (a test checks they agree), one file at a
    time, so folders far larger than memory (ImageNet) can be encoded.
    """
    from PIL import Image

    img = Image.open(path).convert("L" if channels == 1 else "RGB")
    scale = size / min(img.size)
    img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))), Image.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8).reshape(size, size, channels)


# ----------------------------------------------------------------------------- shards
def encode_folder(vae, images: str | Path, out: str | Path, *, size: int = 256, batch_size: int = 32,
                  shard_size: int = 4096, posterior: str = "mean", seed: int = 0, scale: float | None = None,
                  store_dtype: str = "float32", overwrite: bool = False, vae_name: str = "",
                  vae_subfolder: str | None = None, progress: bool = False) -> dict:
    """Encode every image of `images` into latent shards in `out`; returns the index written to latents.json.

    vae_name / vae_subfolder: recorded (with the scale) so that training checkpoints can name the VAE
    that decodes their samples.
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    if store_dtype not in STORE_DTYPES:
        raise ValueError(f"store_dtype must be one of {sorted(STORE_DTYPES)}, got {store_dtype!r}")
    factor = vae_downsampling(vae)
    if size % factor:
        raise ValueError(f"--size must be a multiple of {factor} (the VAE downsamples by {factor}), got {size}")
    files, labels, classes = list_image_folder(images)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    old = sorted(out.glob("latents-*.safetensors"))
    if old and not overwrite:
        raise FileExistsError(f"{out} already holds {len(old)} latent shards: choose another --out or pass --overwrite")
    for f in old + [out / INDEX_NAME]:
        f.unlink(missing_ok=True)
    channels = int(getattr(vae.config, "in_channels", 3))
    s, gen = vae_scale(vae, scale), torch.Generator().manual_seed(seed)
    root = Path(images)
    index = {"format": FORMAT, "scale": s, "vae": vae_name, "vae_subfolder": vae_subfolder, "size": size,
             "posterior": posterior, "seed": seed,
             "classes": classes, "num_images": len(files), "dtype": store_dtype, "shards": []}
    bar = tqdm(total=len(files), disable=not progress, desc="encode", unit="img")
    for k, start in enumerate(range(0, len(files), shard_size)):
        shard_files = files[start: start + shard_size]
        zs = []
        for b in range(0, len(shard_files), batch_size):
            batch = np.stack([load_image(p, size, channels) for p in shard_files[b: b + batch_size]])
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(127.5).sub(1)  # (n, C, size, size)
            zs.append(encode_images(vae, x, scale=s, posterior=posterior, generator=gen).cpu())
            bar.update(len(x))
        name = SHARD_PATTERN.format(k)
        meta = {"format": FORMAT, "scale": s, "classes": classes, "size": size,
                "files": [str(p.relative_to(root)) for p in shard_files]}
        save_file({"latents": torch.cat(zs).to(STORE_DTYPES[store_dtype]).contiguous(),
                   "labels": torch.tensor(labels[start: start + shard_size], dtype=torch.int64)},
                  out / name, metadata={"fpdm_latents": json.dumps(meta)})
        index["shards"].append({"file": name, "count": len(shard_files)})
    bar.close()
    (out / INDEX_NAME).write_text(json.dumps(index, indent=2))
    return index


# ----------------------------------------------------------------------------- command line
def checkpoint_latents_info(checkpoint: str | Path) -> dict:
    """{"vae", "vae_subfolder", "scale", "size", "posterior"} recorded by a --dataset latents run ({} otherwise)."""
    return load_checkpoint(checkpoint).meta.get("data", {}).get("latents") or {}


def sample_images(vae, checkpoint: str | Path, labels, *, steps: int = HEADLINE.steps,
                  iterations: int = HEADLINE.iterations, cfg_scale: float = HEADLINE.cfg_scale, seed: int = 0,
                  device: str = "auto", scale: float | None = None) -> torch.Tensor:
    """Sample latents with a latent-space checkpoint (EMA weights) and decode them: images (B, 3, H, W).

    scale: None uses the scale recorded in the checkpoint at training time, else the VAE's.
    """
    dev = pick_device(device)
    model, diffusion = load_pipeline(checkpoint, device=dev)
    z, _ = sample(model, diffusion, labels,
                  SamplerConfig(steps=steps, iterations=iterations, cfg_scale=cfg_scale),
                  generator=torch.Generator().manual_seed(seed), device=dev)
    if scale is None:
        scale = checkpoint_latents_info(checkpoint).get("scale")
    return decode_latents(vae, z, scale=scale).cpu()


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m fpdm_core.latents", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("encode", "sample"):
        s = sub.add_parser(name)
        s.add_argument("--vae", required=name == "encode", default=None,
                       help="VAE folder (save_pretrained) or a repository id in your HF cache"
                            + ("" if name == "encode" else "; default: the one the checkpoint's latents came from"))
        s.add_argument("--vae-subfolder", default=None, help='e.g. "vae" inside a Stable Diffusion checkout')
        s.add_argument("--device", default="auto")
        s.add_argument("--scale", type=cli.float_in(0.0, lo_open=True), default=None,
                       help="latent scale (default: the VAE's, 0.18215 for SD)")
    e = sub.choices["encode"]
    e.add_argument("--images", required=True, help="image folder: one subfolder per class, or images directly")
    e.add_argument("--out", required=True, help="folder for the latent shards")
    e.add_argument("--size", type=cli.int_in(1, 8192), default=256,
                   help="resize + centre-crop to SIZE px (latents SIZE/8)")
    e.add_argument("--batch-size", type=cli.int_in(1), default=32)
    e.add_argument("--shard-size", type=cli.int_in(1), default=4096, help="images per shard file")
    e.add_argument("--posterior", default="mean", choices=POSTERIORS)
    e.add_argument("--seed", type=cli.int_in(0, cli.MAX_SEED), default=0, help="for --posterior sample")
    e.add_argument("--dtype", default="float32", choices=sorted(STORE_DTYPES), help="stored precision")
    e.add_argument("--overwrite", action="store_true")
    e.add_argument("--no-progress", action="store_true")
    s = sub.choices["sample"]
    s.add_argument("--checkpoint", required=True, help="a checkpoint trained with --dataset latents")
    s.add_argument("--out", required=True, help="PNG grid to write")
    s.add_argument("--force", action="store_true", help="replace --out if it exists")
    s.add_argument("--labels", type=int, nargs="+", default=[0], help="class ids (num_classes = unconditional)")
    s.add_argument("--steps", type=cli.int_in(1), default=HEADLINE.steps)
    s.add_argument("--iterations", type=cli.int_in(1), default=HEADLINE.iterations)
    s.add_argument("--cfg-scale", type=cli.float_in(0.0), default=HEADLINE.cfg_scale)
    s.add_argument("--seed", type=cli.int_in(0, cli.MAX_SEED), default=0)
    a = p.parse_args(argv)
    try:
        if a.command == "sample":
            cli.check_output_file(a.out, force=a.force, sources=[a.checkpoint])
        device = pick_device(a.device)
        vae_name = a.vae
        if vae_name is None:
            recorded = checkpoint_latents_info(a.checkpoint)
            vae_name, a.vae_subfolder = recorded.get("vae"), a.vae_subfolder or recorded.get("vae_subfolder")
            if not vae_name:
                raise LatentsError(f"{a.checkpoint} records no VAE (not trained with --dataset latents?): pass --vae")
        vae = load_vae(vae_name, subfolder=a.vae_subfolder, device=device)
        if a.command == "encode":
            index = encode_folder(vae, a.images, a.out, size=a.size, batch_size=a.batch_size, shard_size=a.shard_size,
                                  posterior=a.posterior, seed=a.seed, scale=a.scale, store_dtype=a.dtype,
                                  overwrite=a.overwrite, progress=not a.no_progress, vae_subfolder=a.vae_subfolder,
                                  vae_name=str(Path(a.vae).resolve()) if Path(a.vae).is_dir() else a.vae)
            print(f"wrote {index['num_images']} latents in {len(index['shards'])} shards to {a.out}")
        else:
            images = sample_images(vae, a.checkpoint, a.labels, steps=a.steps, iterations=a.iterations,
                                   cfg_scale=a.cfg_scale, seed=a.seed, device=str(device), scale=a.scale)
            save_grid(images, a.out, scale=1)
            print(f"wrote {len(images)} decoded samples to {a.out}")
    except (LatentsError, OSError, ValueError) as err:  # CheckpointError, cli.OutputError are ValueErrors
        return cli.fail(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
