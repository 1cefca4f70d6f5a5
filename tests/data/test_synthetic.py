"""Synthetic captioned videos: deterministic, captions match pixels, real H.264 files."""

from __future__ import annotations

import hashlib

import av
import numpy as np
import pytest

from opensora_core.data.manifest import read_manifest
from opensora_core.config import ConfigError, load_config
from opensora_core.data.synthetic import (COLORS, MOTIONS, SHAPES, Vocabulary, generate_synthetic, render_clip,
                                          sample_clip_spec)


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "videos").glob("*.mp4"))}


def _decode(path):
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _saturated_mask(frame):
    f = frame.astype(np.int32)
    return (f.max(-1) - f.min(-1)) > 100


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "set"
    generate_synthetic(out, num=24, frames=16, size=32, seed=7, workers=1, progress=False)
    return out


def test_same_seed_gives_byte_identical_clips_and_manifest(small_set, tmp_path):
    again = generate_synthetic(tmp_path / "again", num=24, frames=16, size=32, seed=7, workers=2, progress=False)
    assert _digest(small_set) == _digest(tmp_path / "again")
    assert (small_set / "manifest.csv").read_text() == again.read_text()


def test_different_seed_gives_different_clips():
    captions_a = [sample_clip_spec(1, i).caption for i in range(20)]
    captions_b = [sample_clip_spec(2, i).caption for i in range(20)]
    assert captions_a != captions_b


def test_manifest_has_ground_truth_and_real_h264_files(small_set):
    df = read_manifest(small_set / "manifest.csv")
    assert len(df) == 24
    assert set(df["color"]) <= set(COLORS) and set(df["shape"]) <= set(SHAPES) and set(df["motion"]) <= set(MOTIONS)
    with av.open(df["path"][0]) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
        assert (s.width, s.height) == (32, 32) and s.frames in (0, 16)
    assert len(_decode(df["path"][0])) == 16


def test_caption_names_colour_shape_and_motion_of_the_ground_truth(small_set):
    df = read_manifest(small_set / "manifest.csv")
    phrase = {"left": "moves to the left", "right": "moves to the right", "up": "moves up", "down": "moves down",
              "zoom_in": "zooms in", "zoom_out": "zooms out", "rotate": "rotates"}
    for row in df.itertuples():
        assert f"{row.color} {row.shape} {phrase[row.motion]}" in row.text


def test_primary_colour_is_readable_from_decoded_pixels(small_set):
    df = read_manifest(small_set / "manifest.csv")
    names, rgb = list(COLORS), np.array(list(COLORS.values()), np.float32)
    single = df[df["num_objects"] == 1]
    assert len(single) >= 5
    for row in single.itertuples():
        frame = _decode(row.path)[len(_decode(row.path)) // 2]
        mean = frame[_saturated_mask(frame)].astype(np.float32).mean(0)
        assert names[int(np.argmin(((rgb - mean) ** 2).sum(1)))] == row.color, row.text


@pytest.mark.parametrize("motion,axis,sign", [("left", 1, -1), ("right", 1, 1), ("up", 0, -1), ("down", 0, 1)])
def test_object_moves_across_the_frame_in_the_stated_direction(motion, axis, sign):
    # the 4-frame, stride-3 window of the tiny pretrain stage must already show the motion
    index = next(i for i in range(500) if (s := sample_clip_spec(0, i)).objects[0].motion == motion and len(s.objects) == 1)
    video = render_clip(sample_clip_spec(0, index), num_frames=32, size=32)

    def centroid(frame):
        return np.argwhere(_saturated_mask(frame)).mean(0)

    moved = centroid(video[9])[axis] - centroid(video[0])[axis]
    assert sign * moved > 2.0  # pixels at 32x32, within the first 10 frames
    assert sign * (centroid(video[-1])[axis] - centroid(video[0])[axis]) > 32 * 0.5


def test_objects_are_large_enough_for_32px_training():
    for i in range(40):
        spec = sample_clip_spec(3, i)
        if spec.objects[0].motion in ("left", "right", "up", "down"):
            area = _saturated_mask(render_clip(spec, 4, 32)[0]).sum()
            assert area >= 0.05 * 32 * 32, spec.caption


def test_odd_frame_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="even"):
        generate_synthetic(tmp_path / "x", num=1, frames=4, size=33, progress=False)


def test_vocabulary_restricts_every_drawn_attribute():
    vocab = Vocabulary(colors=("red", "blue"), motions=("left", "right"), backgrounds=("gray",), two_object_fraction=0.0)
    specs = [sample_clip_spec(5, i, vocab) for i in range(200)]
    assert all(len(s.objects) == 1 and s.background == "gray" for s in specs)
    assert {s.objects[0].color for s in specs} == {"red", "blue"}
    assert {s.objects[0].motion for s in specs} == {"left", "right"}


def test_default_vocabulary_draws_the_same_clips_as_before_it_existed():
    # the full vocabulary keeps the draw order: clip i of seed k is unchanged
    assert [sample_clip_spec(3, i) for i in range(30)] == [sample_clip_spec(3, i, Vocabulary()) for i in range(30)]


def test_lane_jitter_zero_puts_every_translation_on_the_centre_line():
    vocab = Vocabulary(motions=("left", "right", "up", "down"), two_object_fraction=0.0, lane_jitter=0.0)
    for spec in (sample_clip_spec(7, i, vocab) for i in range(40)):
        o = spec.objects[0]
        lane = o.y if o.motion in ("left", "right") else o.x
        assert lane == 0.5
    one = Vocabulary(two_object_fraction=0.0)
    jittered = {round(sample_clip_spec(7, i, one).objects[0].y, 3) for i in range(40)}
    assert len(jittered) > 10 and min(jittered) >= 0.3 and max(jittered) <= 0.7  # default: 0.5 +- 0.2
    with pytest.raises(ValueError, match="lane_jitter"):
        Vocabulary(lane_jitter=0.4)


def test_from_the_centre_a_translation_moves_into_the_half_its_caption_names():
    from opensora_core.eval.metrics import analyze_clip

    vocab = Vocabulary(motions=("left", "right", "up", "down"), two_object_fraction=0.0, lane_jitter=0.0,
                       start="centre")
    specs = [sample_clip_spec(5, i, vocab) for i in range(24)]
    assert {s.objects[0].motion for s in specs} == {"left", "right", "up", "down"}
    side = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}  # (axis: 0 = x, sign)
    for spec in specs:
        frames = render_clip(spec, 16, 64)
        truth = analyze_clip(frames)
        axis, sign = side[spec.objects[0].motion]
        first, last = np.asarray(truth["centroids"][0]), np.asarray(truth["centroids"][-1])
        assert abs(first - 0.5).max() < 0.03                       # every clip starts at the centre
        assert sign * (last[axis] - 0.5) > 0.3                     # and ends in the caption's half
        assert truth["motion"] == spec.objects[0].motion           # the evaluate stage reads the direction
    edge = sample_clip_spec(5, 0, Vocabulary(two_object_fraction=0.0, lane_jitter=0.0, motions=("right",)))
    assert analyze_clip(render_clip(edge, 16, 64))["centroids"][0][0] < 0.25  # the default still starts at an edge
    with pytest.raises(ConfigError, match=r"data\.synthetic\.start"):
        load_config(overrides=["data.synthetic.start=middle"])


def test_unknown_vocabulary_names_are_rejected_by_the_config_naming_the_field():
    with pytest.raises(ConfigError, match=r"data\.synthetic.*colors.*pink"):
        load_config(overrides=["data.synthetic.colors=[red,pink]"])
    with pytest.raises(ValueError, match="two-object clips need"):
        Vocabulary(motions=("left",), two_object_fraction=0.5)


def test_the_cli_renders_the_presets_vocabulary(tmp_path):
    from typer.testing import CliRunner

    from opensora_core.cli import app

    result = CliRunner().invoke(app, ["data", "synthetic", "--num", "12", "--frames", "4", "--size", "16", "--workers",
                                      "1", "--out", str(tmp_path / "syn"), "data.synthetic.colors=[red,blue]",
                                      "data.synthetic.two_object_fraction=0.0"])
    assert result.exit_code == 0, result.output
    assert set(read_manifest(tmp_path / "syn" / "manifest.csv")["color"]) <= {"red", "blue"}
