"""The adherence metric must be trustworthy: near 100% on real clips, at chance on noise or on mismatched prompts."""

from __future__ import annotations

import numpy as np
import torch

from opensora_core.data.synthetic import clip_row, render_clip, sample_clip_spec
from opensora_core.eval import metrics as M


def _truths(n: int, seed: int = 5) -> list[dict]:
    return [clip_row(sample_clip_spec(seed, i), "x", 32, 64) for i in range(n)]


def test_real_heldout_clips_at_final_stage_size_score_near_perfect(heldout_clips):
    videos, truths = heldout_clips
    summary, rows = M.adherence([v[::2] for v in videos], truths)  # 16 frames at stride 2, as finetune_64f sees
    assert summary["adherence_n"] >= 25
    assert summary["color_acc"] >= 0.97
    assert summary["motion_acc"] >= 0.95 and summary["direction_acc"] >= 0.97
    assert summary["shape_acc"] >= 0.9


def test_real_short_low_res_windows_score_near_perfect(heldout_clips):
    """4 frames at stride 3 from a random start, 32x32: the first stage's clips show only ~30% of the travel."""
    videos, truths = heldout_clips
    rng = np.random.default_rng(0)
    short = []
    for v in videos:
        s = int(rng.integers(0, len(v) - 9))
        short.append(v[s : s + 10 : 3].reshape(4, 32, 2, 32, 2, 3).mean((2, 4)).astype(np.uint8))
    summary, _ = M.adherence(short, truths)
    assert summary["color_acc"] >= 0.97
    assert summary["motion_acc"] >= 0.9


def test_uniform_and_gaussian_noise_score_at_chance():
    truths = _truths(120)
    rng = np.random.default_rng(1)
    uniform = [rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8) for _ in truths]
    gauss = [torch.randn(3, 16, 32, 32, generator=torch.Generator().manual_seed(i)).clamp(-1, 1) for i in range(len(truths))]
    for videos in (uniform, gauss):
        s, _ = M.adherence(videos, truths)
        for attr in ("color", "motion", "shape"):
            assert s[f"{attr}_acc"] <= s[f"{attr}_chance"] + 0.1, (attr, s)
        assert s["direction_acc"] <= 0.35


def test_real_clips_paired_with_the_wrong_prompts_score_at_chance(heldout_clips):
    """A generator that makes perfect-looking clips while ignoring the prompt must not score."""
    videos, truths = heldout_clips
    shifted = truths[7:] + truths[:7]
    s, _ = M.adherence([v[::2] for v in videos], shifted)
    assert s["color_acc"] <= s["color_chance"] + 0.15
    assert s["motion_acc"] <= s["motion_chance"] + 0.15


def test_two_object_prompts_are_left_out():
    truths = _truths(40)
    videos = [render_clip(sample_clip_spec(5, i), 8, 32) for i in range(40)]
    s, rows = M.adherence(videos, truths)
    assert s["adherence_n"] == sum(t["num_objects"] == 1 for t in truths) == len(rows)


def test_float_tensor_and_uint8_layouts_read_the_same():
    frames = render_clip(sample_clip_spec(5, 0), 8, 32)
    as_float = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0
    a, b = M.analyze_clip(frames), M.analyze_clip(as_float)
    assert (a["color"], a["motion"], a["shape"]) == (b["color"], b["motion"], b["shape"])
    assert np.allclose(a["area"], b["area"], atol=0.02)  # float rounding at the mask threshold


def test_centroid_trajectory_follows_the_object():
    spec = next(s for s in (sample_clip_spec(5, i) for i in range(100))
                if len(s.objects) == 1 and s.objects[0].motion == "right")
    got = M.analyze_clip(render_clip(spec, 8, 64))
    xs = [c[0] for c in got["centroids"]]
    assert xs[0] < 0.3 and xs[-1] > 0.7 and all(np.diff(xs) > 0)


def test_temporal_change_is_zero_for_a_still_clip_and_larger_for_noise():
    still = np.full((8, 16, 16, 3), 100, np.uint8)
    moving = render_clip(sample_clip_spec(5, 0), 8, 32)
    noise = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    assert M.temporal_change([still]) == 0.0
    assert 0 < M.temporal_change([moving]) < M.temporal_change([noise])


def test_frechet_distance_is_small_between_real_sets_and_large_to_noise(heldout_clips):
    videos, _ = heldout_clips
    a, b = videos[:24], videos[24:]
    noise = [np.random.default_rng(i).integers(0, 256, v.shape, dtype=np.uint8) for i, v in enumerate(b)]
    same = M.frechet_random_projection(a, a)
    real = M.frechet_random_projection(a, b)
    assert abs(same) < 1e-6
    assert real * 3 < M.frechet_random_projection(a, noise)


def test_clips_played_backwards_keep_the_axis_and_lose_the_sign(heldout_clips):
    """A generator that moves objects along the caption's line but the wrong way (what the tiny demo's models do)
    scores the axis, not the sign; direction_acc is their product."""
    videos, truths = heldout_clips
    forward, _ = M.adherence([v[::2] for v in videos], truths)
    backward, _ = M.adherence([v[::-2] for v in videos], truths)
    assert forward["axis_acc"] >= 0.97 and forward["sign_acc"] >= 0.97
    assert backward["axis_acc"] >= 0.97 and backward["sign_acc"] <= 0.03 and backward["direction_acc"] <= 0.03
    for s in (forward, backward):
        assert abs(s["direction_acc"] - s["axis_acc"] * s["sign_acc"]) < 1e-9


def test_direction_scores_count_only_translation_prompts():
    rows = [{"true_motion": t, "pred_motion": p} for t, p in
            [("left", "left"), ("left", "right"), ("up", "left"), ("down", "static"), ("rotate", "rotate")]]
    s = M.direction_scores(rows)
    assert s["direction_acc"] == 0.25 and s["axis_acc"] == 0.5 and s["sign_acc"] == 0.5
    assert np.isnan(M.direction_scores(rows[2:4])["sign_acc"])  # nothing on the right axis: no sign to score
