"""Latent space: a tiny random AutoencoderKL encodes an image folder, FPDM trains on the latents, samples decode."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers (the [latents] extra) not installed: `bash scripts/setup.sh --dev`")

from fpdm_core.data import load_dataset, load_image_folder  # noqa: E402
from fpdm_core.latent_shards import LatentsError, load_latents, read_latents_info  # noqa: E402
from fpdm_core.latents import (LATENT_SCALE, checkpoint_latents_info, decode_latents, encode_folder,  # noqa: E402
                               encode_images, list_image_folder, load_image, load_vae, main)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """A randomly initialised AutoencoderKL with two resolution levels (downsampling 2), saved like a real one."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, latent_channels=4,
                        layers_per_block=1)
    path = tmp_path_factory.mktemp("vae") / "tiny-vae"
    vae.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vae(vae_dir):
    return load_vae(vae_dir)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Two classes of small random images of different sizes and formats (exercise resize + crop)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["b_dogs", "a_cats"]):  # sorted names give the ids: a_cats = 0
        (root / name).mkdir()
        for i in range(5):
            h, w = 16 + 3 * i, 20 - i
            ext = ".jpg" if i == 2 else ".png"
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name / f"img{9 - i}{ext}")
    (root / "a_cats" / "notes.txt").write_text("not an image")
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(root / "a_cats" / "._resource_fork.png")  # hidden
    (root / ".ipynb_checkpoints").mkdir()  # a hidden folder is not a class
    return root


@pytest.fixture(scope="module")
def latent_dir(vae, vae_dir, image_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("latents")
    encode_folder(vae, image_dir, out, size=16, batch_size=3, shard_size=4, vae_name=str(vae_dir))
    return out


def test_listing_and_preprocessing_match_load_image_folder(image_dir):
    files, labels, classes = list_image_folder(image_dir)
    x, y, names = load_image_folder(image_dir, 16, 3)
    assert classes == names == ["a_cats", "b_dogs"] and labels == y.tolist()
    assert [f.name for f in files[:5]] == ["img5.png", "img6.png", "img7.jpg", "img8.png", "img9.png"]
    ours = torch.from_numpy(np.stack([load_image(f, 16, 3) for f in files])).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(ours, x)


def test_encode_writes_shards_with_labels_paired_by_file(vae, image_dir, latent_dir):
    info = read_latents_info(latent_dir)
    assert info["num_images"] == 10 and [s["count"] for s in info["shards"]] == [4, 4, 2]
    assert info["scale"] == pytest.approx(LATENT_SCALE) and info["classes"] == ["a_cats", "b_dogs"]
    z, y = load_latents(latent_dir)
    assert z.shape == (10, 4, 8, 8) and z.dtype == torch.float32 and y.tolist() == [0] * 5 + [1] * 5
    from safetensors import safe_open

    with safe_open(latent_dir / "latents-00001.safetensors", "pt") as f:
        files = json.loads(f.metadata()["fpdm_latents"])["files"]
    all_files, _, _ = list_image_folder(image_dir)
    assert files == [str(p.relative_to(image_dir)) for p in all_files[4:8]]
    x, _, _ = load_image_folder(image_dir, 16, 3)  # the same images, encoded in one batch
    torch.testing.assert_close(z, encode_images(vae, x), rtol=1e-4, atol=1e-5)
    assert torch.equal(load_dataset("latents", data_dir=latent_dir)[1], y)


def test_encode_refuses_to_mix_with_old_shards_and_bad_sizes(vae, image_dir, latent_dir, tmp_path):
    with pytest.raises(FileExistsError, match="--overwrite"):
        encode_folder(vae, image_dir, latent_dir, size=16)
    with pytest.raises(ValueError, match="multiple of 2"):
        encode_folder(vae, image_dir, tmp_path / "odd", size=15)
    with pytest.raises(LatentsError, match="encode images first"):
        load_latents(tmp_path)


def test_posterior_sample_is_seeded(vae, image_dir):
    x, _, _ = load_image_folder(image_dir, 16, 3)
    a = encode_images(vae, x[:2], posterior="sample", generator=torch.Generator().manual_seed(3))
    b = encode_images(vae, x[:2], posterior="sample", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, encode_images(vae, x[:2]))


def test_decode_divides_by_the_scale_and_clamps(vae):
    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    images = decode_latents(vae, z, batch_size=2)
    with torch.no_grad():
        ref = vae.decode(z / LATENT_SCALE).sample.clamp(-1, 1)
    assert images.shape == (3, 3, 16, 16)
    torch.testing.assert_close(images, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks`")
def test_vae_is_never_downloaded(monkeypatch, tmp_path):
    from diffusers import AutoencoderKL

    seen = []
    original = AutoencoderKL.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs.get("local_files_only"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKL, "from_pretrained", classmethod(spy))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # belt and braces: no network even if the flag were dropped
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    with pytest.raises(LatentsError, match="without downloading"):
        load_vae("stabilityai/sd-vae-ft-ema")
    assert seen == [True]


def test_train_on_latents_then_sample_and_decode(vae_dir, latent_dir, tmp_path):
    from fpdm_core.train import TrainConfig, train

    cfg = TrainConfig(model="FPDM-tiny", dataset="latents", data_dir=str(latent_dir), batch_size=4, max_steps=3,
                      lr=1e-3, warmup_steps=1, no_grad_iters=(0, 1), grad_iters=(1, 2), precision="fp32",
                      sample_every=0, save_every=3, log_every=1)
    trainer = train(cfg, tmp_path / "run", progress=False)
    c = trainer.model.config
    assert (c.in_channels, c.input_size) == (4, 8)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(np.isfinite(r["loss"]) for r in rows)
    ckpt = tmp_path / "run" / "checkpoint.safetensors"
    assert checkpoint_latents_info(ckpt) == {"vae": str(vae_dir), "vae_subfolder": None, "scale": LATENT_SCALE,
                                             "size": 16, "posterior": "mean"}
    grid = tmp_path / "grid.png"  # no --vae: the checkpoint names the VAE its latents came from
    assert main(["sample", "--checkpoint", str(ckpt), "--out", str(grid), "--labels", "0", "1", "--steps", "2",
                 "--iterations", "2", "--device", "cpu"]) == 0
    from PIL import Image

    assert Image.open(grid).size == (2 + 2 * (16 + 2), 2 + 16 + 2)  # two decoded 16 px samples in one row


def test_encode_command_line(vae_dir, image_dir, tmp_path):
    out = tmp_path / "lat"
    assert main(["encode", "--vae", str(vae_dir), "--images", str(image_dir), "--out", str(out), "--size", "16",
                 "--dtype", "float16", "--no-progress"]) == 0
    z, y = load_latents(out)
    assert z.dtype == torch.float16 and len(y) == 10
    assert read_latents_info(out)["vae"] == str(vae_dir.resolve())  # recorded for decoding at sampling time
    assert main(["encode", "--vae", str(vae_dir), "--images", str(image_dir), "--out", str(out), "--size", "16",
                 "--no-progress"]) == 2  # shards exist: refuses without --overwrite
