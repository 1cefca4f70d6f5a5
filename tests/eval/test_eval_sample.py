"""Sampling: deterministic for a seed, independent of batch size, and the files a browser can show."""

from __future__ import annotations

import numpy as np
import torch

from opensora_core.eval.sample import generate, read_prompts, write_samples

PROMPTS = ["a small red circle moves to the left on a black background",
           "a large blue square moves up on a gray background",
           "a small green triangle zooms in on a black background"]


def test_sampling_is_deterministic_for_a_seed_and_changes_with_it(tiny_stack):
    model, vae, text = tiny_stack
    a = generate(model, vae, text, PROMPTS, cfg_scale=4.0, steps=3, seed=7, batch_size=3, progress=False)
    b = generate(model, vae, text, PROMPTS, cfg_scale=4.0, steps=3, seed=7, batch_size=3, progress=False)
    c = generate(model, vae, text, PROMPTS, cfg_scale=4.0, steps=3, seed=8, batch_size=3, progress=False)
    assert a.shape == (3, 3, 2, 16, 16)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.min() >= -1 and a.max() <= 1


def test_a_prompts_initial_noise_does_not_depend_on_the_batch(tiny_stack):
    """Single-step sampling has no per-step noise: then each video depends only on its prompt and seed."""
    model, vae, text = tiny_stack
    together = generate(model, vae, text, PROMPTS, steps=1, seed=3, batch_size=3, progress=False)
    alone = generate(model, vae, text, PROMPTS[1:2], steps=1, seed=3, batch_size=1, progress=False)
    one_by_one = generate(model, vae, text, PROMPTS, steps=1, seed=3, batch_size=1, progress=False)
    assert torch.allclose(together, one_by_one, atol=1e-5)
    assert not torch.allclose(alone[0], together[1])  # prompt 1 alone is index 0: different noise, by design


def test_latents_only_sampling_returns_the_unclamped_latents_the_videos_decode_from(tiny_stack):
    model, vae, text = tiny_stack
    videos = generate(model, vae, text, PROMPTS, cfg_scale=4.0, steps=3, seed=7, batch_size=3, progress=False)
    latents = generate(model, None, text, PROMPTS, cfg_scale=4.0, steps=3, seed=7, batch_size=3, progress=False,
                       decode=False)
    assert latents.shape[:3] == (3, model.in_channels, 2)
    assert latents.abs().max() > 1  # not clamped like pixels: a latents-only caller decodes them itself
    torch.testing.assert_close(vae.decode(latents).clamp(-1, 1), videos)


def test_written_mp4_gif_and_grid_are_readable(tmp_path, decode_mp4):
    from PIL import Image

    video = torch.rand(2, 3, 5, 18, 17) * 2 - 1  # odd width: the mp4 must still be yuv420p-encodable
    records = write_samples(video, ["one prompt", "two: prompt!"], tmp_path)
    assert [r["mp4"] for r in records] == ["000_one_prompt.mp4", "001_two_prompt.mp4"]
    frames = decode_mp4(tmp_path / records[0]["mp4"])
    assert frames.shape == (5, 18, 18, 3)
    import av

    with av.open(str(tmp_path / records[0]["mp4"])) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
    gif = Image.open(tmp_path / records[1]["gif"])
    assert gif.n_frames == 5
    grid = Image.open(tmp_path / records[1]["grid"])
    assert grid.size == (3 * 17 * 8 + 2 * 2, 18 * 8)  # three frames upscaled 8x to >= 128 px, 2-px gaps
    assert (tmp_path / "prompts.json").is_file()


def test_prompt_files_ship_with_the_tool():
    from opensora_core.project import resource

    held = read_prompts(resource("assets", "prompts", "tiny_heldout.txt"))
    show = read_prompts(resource("assets", "prompts", "showcase.txt"))
    assert len(held) >= 16 and len(show) >= 4
    assert any("night" in p for p in show)
    assert np.all([p == p.strip() for p in held])


def test_synthetic_captions_parse_back_to_their_ground_truth():
    from opensora_core.data.synthetic import clip_row, sample_clip_spec
    from opensora_core.eval.prompts import parse_synthetic_caption

    for i in range(60):
        spec = sample_clip_spec(9, i)
        row, got = clip_row(spec, "x", 32, 64), parse_synthetic_caption(spec.caption)
        assert {k: got[k] for k in ("color", "shape", "motion", "background", "num_objects")} == \
               {k: row[k] for k in ("color", "shape", "motion", "background", "num_objects")}
    from opensora_core.project import resource

    assert all(parse_synthetic_caption(p) for p in read_prompts(resource("assets", "prompts", "tiny_heldout.txt")))
    assert parse_synthetic_caption("A serene night scene in a forested area.") is None


def test_a_gif_keeps_the_clips_colours_frame_by_frame(tmp_path):
    """One palette for the clip, picked at the native size, then a nearest-neighbour upscale: every frame of the
    gif shows the frame it was given (within a grey level on average), at >= 128 px."""
    from PIL import Image

    from opensora_core.eval.sample import write_gif

    rng = np.random.default_rng(0)
    frames = np.full((6, 32, 32, 3), 110, np.uint8)
    for i in range(6):
        frames[i, 8:16, 4 * i : 4 * i + 8] = (210, 40, 30)  # a red square moving right on grey, plus noise
    frames = np.clip(frames.astype(int) + rng.integers(-8, 9, frames.shape), 0, 255).astype(np.uint8)
    gif = Image.open(write_gif(frames, tmp_path / "clip.gif"))
    assert gif.n_frames == 6 and gif.size == (128, 128)
    for i in range(6):
        gif.seek(i)
        shown = np.asarray(gif.convert("RGB"))[::4, ::4].astype(int)
        assert np.abs(shown - frames[i]).mean() < 2.0
