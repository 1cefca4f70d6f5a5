"""Manifests: one schema validated on read and write, stable splits, stats."""

from __future__ import annotations

import pandas as pd
import pytest

from opensora_core.data.manifest import (ManifestError, assign_split, manifest_stats, read_manifest, validate_manifest,
                                         write_manifest)


def _rows(n=4, **extra):
    return pd.DataFrame([{"path": f"videos/{i:03d}.mp4", "text": f"clip {i}", "num_frames": 32, "fps": 8.0,
                          "height": 64, "width": 64, **extra} for i in range(n)])


def test_round_trip_stores_relative_paths_and_reads_absolute(tmp_path):
    df = _rows()
    df["path"] = [str(tmp_path / "videos" / p.split("/")[-1]) for p in df["path"]]
    write_manifest(df, tmp_path / "manifest.csv")
    assert pd.read_csv(tmp_path / "manifest.csv")["path"][0] == "videos/000.mp4"
    back = read_manifest(tmp_path / "manifest.csv")
    assert back["path"][0] == str(tmp_path / "videos" / "000.mp4")
    assert back["num_frames"].dtype == "int64" and back["text"][3] == "clip 3"


def test_s3_paths_are_kept_as_they_are(tmp_path):
    df = _rows(1)
    df["path"] = ["s3://bucket/raw/a.mp4"]
    write_manifest(df, tmp_path / "m.csv")
    assert read_manifest(tmp_path / "m.csv")["path"][0] == "s3://bucket/raw/a.mp4"


def test_missing_column_is_named(tmp_path):
    _rows().drop(columns=["fps"]).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ManifestError, match="missing column 'fps'"):
        read_manifest(tmp_path / "m.csv")


def test_bad_value_names_its_row_and_column():
    df = _rows()
    df.loc[2, "num_frames"] = -3
    with pytest.raises(ManifestError, match=r"row 2 \(videos/002.mp4\): column 'num_frames'"):
        validate_manifest(df)
    df = _rows()
    df["height"] = [64, "tall", 64, 64]
    with pytest.raises(ManifestError, match=r"row 1 .*'height'"):
        validate_manifest(df)


def test_clip_ranges_need_start_and_end_in_order():
    with pytest.raises(ManifestError, match="'start' without its pair"):
        validate_manifest(_rows(start=0.0))
    df = _rows(start=2.0, end=1.0)
    with pytest.raises(ManifestError, match="row 0"):
        validate_manifest(df)


def test_split_must_be_train_or_val():
    with pytest.raises(ManifestError, match="'split' must be train or val"):
        validate_manifest(_rows(split="test"))


def test_partial_ground_truth_names_the_missing_column():
    with pytest.raises(ManifestError, match="ground-truth column 'shape'"):
        validate_manifest(_rows(color="red"))


def test_empty_captions_are_allowed_before_captioning(tmp_path):
    df = _rows()
    df["text"] = ""
    write_manifest(df, tmp_path / "m.csv")
    assert (read_manifest(tmp_path / "m.csv")["text"] == "").all()


def test_split_is_stable_under_moves_and_reordering_and_near_the_fraction():
    df = pd.DataFrame({"path": [f"/data/a/{i:05d}.mp4" for i in range(2000)]})
    a = assign_split(df, 0.1)
    moved = assign_split(pd.DataFrame({"path": [p.replace("/data/a", "/elsewhere") for p in df["path"]][::-1]}), 0.1)
    assert list(a["split"]) == list(moved["split"])[::-1]
    assert 0.07 < (a["split"] == "val").mean() < 0.13
    assert (assign_split(df, 0.0)["split"] == "train").all()


def test_clips_of_one_file_can_land_in_both_splits():
    df = pd.DataFrame({"path": ["/v/long.mp4"] * 200, "start": [float(i) for i in range(200)]})
    assert set(assign_split(df, 0.2)["split"]) == {"train", "val"}


def test_stats_count_durations_resolutions_and_caption_lengths():
    df = validate_manifest(_rows(3, split="train"))
    df.loc[0, "text"] = "a much longer caption with seven words"
    s = manifest_stats(df)
    assert s["clips"] == 3 and s["total_seconds"] == pytest.approx(12.0)
    assert s["duration_hist"]["[4, 8)"] == 3 and s["resolutions"] == {"64x64": 3}
    assert s["caption_words"]["max"] == 7 and s["splits"] == {"train": 3}
