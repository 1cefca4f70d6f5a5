"""VideoAutoencoderKL: frame-wise encode/decode of [B, 3, T, H, W] videos through a diffusers AutoencoderKL."""

from __future__ import annotations

import pytest
import torch

from opensora_core.encoders import SD_SCALING_FACTOR, VideoAutoencoderKL


def test_encode_maps_videos_to_scaled_latents_of_the_documented_shape(tiny_vae_dir, video):
    vae = VideoAutoencoderKL.from_pretrained(tiny_vae_dir)
    z = vae.encode(video)
    assert vae.downsample == 4 and vae.out_channels == 4
    assert z.shape == (2, 4, 3, 8, 8)
    assert vae.get_latent_size((3, 32, 32)) == (3, 8, 8)
    assert vae.decode(z).shape == video.shape


def test_encode_is_the_scaled_posterior_mean_of_each_frame(tiny_vae_dir, video):
    vae = VideoAutoencoderKL.from_pretrained(tiny_vae_dir)
    frame = video[1, :, 2][None]  # [1, 3, H, W]: sample 1, frame 2
    with torch.no_grad():
        expected = vae.module.encode(frame).latent_dist.mode() * SD_SCALING_FACTOR
    torch.testing.assert_close(vae.encode(video)[1, :, 2], expected[0], rtol=1e-4, atol=1e-5)


def test_micro_batching_gives_the_same_latents_and_frames_as_one_batch(tiny_vae_dir, video):
    one = VideoAutoencoderKL.from_pretrained(tiny_vae_dir, micro_batch_size=None)
    micro = VideoAutoencoderKL.from_pretrained(tiny_vae_dir, micro_batch_size=4)  # 6 frames -> chunks of 4 and 2
    z = one.encode(video)
    torch.testing.assert_close(micro.encode(video), z, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(micro.decode(z), one.decode(z), rtol=1e-4, atol=1e-5)


def test_reload_after_save_pretrained_gives_identical_outputs(tiny_vae_dir, video, tmp_path):
    vae = VideoAutoencoderKL.from_pretrained(tiny_vae_dir)
    vae.module.save_pretrained(tmp_path / "copy")
    again = VideoAutoencoderKL.from_pretrained(tmp_path / "copy")
    torch.testing.assert_close(again.encode(video), vae.encode(video), rtol=0, atol=0)
    torch.testing.assert_close(again(video), vae(video), rtol=0, atol=0)


def test_sampling_the_posterior_is_optional_and_seeded(tiny_vae_dir, video):
    mean = VideoAutoencoderKL.from_pretrained(tiny_vae_dir).encode(video)
    sampler = VideoAutoencoderKL.from_pretrained(tiny_vae_dir, sample_posterior=True)
    a = sampler.encode(video, generator=torch.Generator().manual_seed(0))
    b = sampler.encode(video, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, mean)


def test_loaded_vae_is_frozen_and_follows_dtype(tiny_vae_dir, video):
    vae = VideoAutoencoderKL.from_pretrained(tiny_vae_dir)
    assert not any(p.requires_grad for p in vae.parameters())
    vae = vae.to(torch.float64)
    assert vae.dtype == torch.float64 and vae.encode(video.float()).dtype == torch.float64


def test_frame_size_not_divisible_by_the_downsampling_is_rejected(tiny_vae_dir):
    with pytest.raises(ValueError, match="not divisible"):
        VideoAutoencoderKL.from_pretrained(tiny_vae_dir).get_latent_size((4, 30, 32))


def test_missing_local_vae_names_what_to_download_and_where(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        VideoAutoencoderKL.from_pretrained(tmp_path / "pretrained_models" / "sd-vae-ft-ema")
    assert "sd-vae-ft-ema" in str(err.value) and "vae.pretrained" in str(err.value)


def test_unreachable_hub_vae_says_how_to_download_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError) as err:
        VideoAutoencoderKL.from_pretrained("stabilityai/sd-vae-ft-ema-does-not-exist")
    msg = str(err.value)
    assert "huggingface-cli download stabilityai/sd-vae-ft-ema-does-not-exist --local-dir pretrained_models/" in msg
    assert "vae.pretrained" in msg


def test_loading_the_vae_prints_no_install_accelerate_advice(tiny_vae_dir):
    # a user of the demo sees every stage's output: a library warning about an optional package is noise there
    import subprocess
    import sys

    code = f"from opensora_core.encoders import VideoAutoencoderKL; VideoAutoencoderKL.from_pretrained({str(tiny_vae_dir)!r})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "accelerate" not in out.stdout + out.stderr
