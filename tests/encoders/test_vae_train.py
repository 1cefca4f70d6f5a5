"""Training the tiny preset's AutoencoderKL on synthetic frames."""

from __future__ import annotations


import pytest
import torch

from frames import render_frames, write_videos
from opensora_core.encoders import SD_SCALING_FACTOR, VideoAutoencoderKL, train_tiny_vae
from opensora_core.encoders.vae_train import calibrate_latent_scale, read_frames, reconstruct, resolve_videos, tiny_autoencoder


def test_latent_calibration_gives_unit_std_scaled_latents_without_changing_reconstructions():
    vae = tiny_autoencoder(width=8, seed=1).eval().requires_grad_(False)
    frames = render_frames(8, size=32, seed=5)
    before = reconstruct(vae, frames)
    calibrate_latent_scale(vae, frames)
    torch.testing.assert_close(reconstruct(vae, frames), before, rtol=1e-4, atol=1e-4)
    z = VideoAutoencoderKL(vae).encode(frames.unflatten(0, (2, 4)).transpose(1, 2))
    assert z.std().item() == pytest.approx(1.0, rel=1e-3)
    assert vae.config.scaling_factor == SD_SCALING_FACTOR


def test_videos_are_found_in_folders_and_manifests_and_read_as_evenly_spaced_frames(tmp_path):
    import pandas as pd

    paths = write_videos(tmp_path / "videos", num=2, frames=8, size=32)
    assert resolve_videos(tmp_path / "videos") == paths
    pd.DataFrame({"path": [p.relative_to(tmp_path) for p in paths], "text": ["a", "b"]}).to_csv(tmp_path / "m.csv", index=False)
    assert resolve_videos(tmp_path / "m.csv") == paths
    frames = read_frames(paths[0], num_frames=3, size=16)
    assert frames.shape == (3, 3, 16, 16) and frames.dtype == torch.uint8


def test_training_from_mp4s_writes_a_loadable_vae_atomically(tmp_path):
    write_videos(tmp_path / "videos", num=3, frames=4, size=32)
    out = tmp_path / "encoders" / "vae"
    result = train_tiny_vae(tmp_path / "videos", out, steps=3, batch_size=2, lr=1e-3, width=8, progress=False)
    assert (result.num_train_frames, result.num_val_frames) == (8, 4)  # 2 videos train, 1 held out
    assert sorted(p.name for p in out.parent.iterdir()) == ["vae"]  # no temp folders left behind
    vae = VideoAutoencoderKL.from_pretrained(out)
    assert vae.downsample == 4 and vae.encode(torch.zeros(1, 3, 2, 32, 32)).shape == (1, 4, 2, 8, 8)


@pytest.mark.slow
def test_tiny_vae_reaches_28db_psnr_on_held_out_synthetic_frames(tmp_path):
    """The tiny preset's own prepare stage and VAE training call (as the pipeline's encoders stage runs them).

    Measured (one CPU thread, which train_tiny_vae sets): 29.3-29.6 dB on the preset's 600 clips after 1400
    steps, ~70-90 s. The issue's requirement is 28 dB.
    """
    import json
    import subprocess
    import sys

    # in a process of its own, as the pipeline's encoders stage runs: torch state left by earlier tests of this
    # session (seen: 22.6 dB after the full suite, 29+ dB alone; not yet tracked down) must not decide the result
    script = f"""
import json, time
from opensora_core.config import load_config
from opensora_core.data.stages import prepare_data
from opensora_core.encoders.build import train_configured_vae
cfg = load_config(preset="tiny", overrides=["run_dir={tmp_path}"])
prepare_data(cfg, progress=False)
start = time.perf_counter()
r = train_configured_vae(cfg)
print(json.dumps({{"val": r.psnr_val, "train": r.psnr_train, "n": r.num_val_frames, "steps": r.steps,
                  "s": time.perf_counter() - start}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=800)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"tiny VAE: {result['val']:.2f} dB held-out ({result['n']} frames of unseen clips), "
          f"{result['train']:.2f} dB train, {result['steps']} steps, {result['s']:.1f} s")
    assert result["val"] >= 28.0


def test_tiny_preset_trains_the_vae_with_the_measured_recipe():
    """params.yaml's vae.train_* are the values the 28 dB measurement used (train_tiny_vae's defaults)."""
    import inspect

    from opensora_core.config import load_config

    defaults = {k: p.default for k, p in inspect.signature(train_tiny_vae).parameters.items()}
    v = load_config(preset="tiny").vae
    assert (v.train_steps, v.train_batch_size, v.train_lr) == (defaults["steps"], defaults["batch_size"], defaults["lr"])
    assert (v.downsample, v.latent_channels) == (defaults["downsample"], defaults["latent_channels"])
