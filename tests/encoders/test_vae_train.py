"""Training the tiny preset's AutoencoderKL on synthetic frames."""

from __future__ import annotations

import pytest
import torch

from opensora_core.encoders import SD_SCALING_FACTOR, VideoAutoencoderKL, train_tiny_vae
from opensora_core.encoders.vae_train import calibrate_latent_scale, read_frames, reconstruct, resolve_videos, tiny_autoencoder

from tests.encoders.frames import render_frames, write_videos


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


def test_the_trained_vae_does_not_depend_on_the_callers_thread_count(tmp_path):
    """The encoders stage gives one VAE on any machine: the thread count changes float rounding, and the tiny
    recipe is sensitive to it (the earlier fixed-cosine one: 22.6 dB with 1 thread, 29.4 dB with 2), so training
    always uses VAE_THREADS."""
    from safetensors.torch import load_file

    frames = render_frames(12, size=32, seed=3)
    weights = []
    for threads in (1, 3):
        torch.set_num_threads(threads)
        train_tiny_vae((frames[:8], frames[8:]), tmp_path / f"vae-{threads}", steps=4, batch_size=4, width=8,
                       progress=False)
        assert torch.get_num_threads() == threads  # the caller's setting is restored
        weights.append(load_file(tmp_path / f"vae-{threads}" / "diffusion_pytorch_model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_the_lr_holds_until_the_psnr_level_then_decays_within_the_step_budget():
    from opensora_core.encoders.vae_schedule import StableDecaySchedule

    s = StableDecaySchedule(steps=3000, decay_at_psnr=27.0, decay_steps=400)
    for step, db in ((100, 18.0), (200, 22.5), (300, 26.9)):
        s.observe(step, db)
    assert s.factor(300) == 1.0 and not s.done(300)  # still on the plateau: full lr
    s.observe(400, 27.2)
    assert s.reached and s.factor(400) == 1.0 and s.factor(600) == pytest.approx(0.55) and s.factor(800) == pytest.approx(0.1)
    assert not s.done(799) and s.done(800)

    late = StableDecaySchedule(steps=3000, decay_at_psnr=27.0, decay_steps=400)
    for step in range(100, 2600, 100):
        late.observe(step, 20.0)
    assert late.decay_from is None
    late.observe(2600, 20.0)
    assert late.decay_from == 2600 and not late.reached and late.done(3000)  # the budget forces the decay


@pytest.mark.slow
def test_tiny_vae_reaches_28db_psnr_on_held_out_synthetic_frames(tmp_path):
    """The tiny preset's own prepare stage and VAE training call (as the pipeline's encoders stage runs them).

    Measured (2 intra-op threads, which train_tiny_vae always uses): 32.65 dB on the preset's 600 clips in 1600
    steps, ~105 s (31.7-33.3 dB over other seeds, 1 thread and unvectorised kernels; a fixed 1400-step cosine
    gave 25.7 dB on a Sapphire Rapids CI host, whose plateau lasted longer). The issue's requirement is 28 dB.
    """
    import time

    from opensora_core.config import load_config
    from opensora_core.data.stages import prepare_data
    from opensora_core.encoders.build import train_configured_vae

    cfg = load_config(preset="tiny", overrides=[f"run_dir={tmp_path}"])
    prepare_data(cfg, progress=False)
    start = time.perf_counter()
    r = train_configured_vae(cfg)
    print(f"tiny VAE: {r.psnr_val:.2f} dB held-out ({r.num_val_frames} frames of unseen clips), "
          f"{r.psnr_train:.2f} dB train, {r.steps} steps, {time.perf_counter() - start:.1f} s")
    assert r.psnr_val >= 28.0


def test_tiny_preset_trains_the_vae_with_the_measured_recipe():
    """params.yaml's vae.train_* are the values the 28 dB measurement used (train_tiny_vae's defaults)."""
    import inspect

    from opensora_core.config import load_config

    defaults = {k: p.default for k, p in inspect.signature(train_tiny_vae).parameters.items()}
    v = load_config(preset="tiny").vae
    assert (v.train_steps, v.train_batch_size, v.train_lr) == (defaults["steps"], defaults["batch_size"], defaults["lr"])
    assert v.train_decay_at_psnr == defaults["decay_at_psnr"]
    assert (v.downsample, v.latent_channels) == (defaults["downsample"], defaults["latent_channels"])
