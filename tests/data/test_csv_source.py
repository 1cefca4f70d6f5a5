"""A captions CSV in Open-Sora 1.0's format as a data source (`data.source: csv`): every file probed, bad ones
in rejects.csv with the reason, captions kept, optional scene splitting, and the pipeline trains on it."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest

from opensora_core.config import ConfigError, load_config
from opensora_core.data.csv_source import ingest_csv, read_captions_csv
from opensora_core.data.manifest import ManifestError, read_manifest

from tests.kit import opensora

BUNNY = "an animated rabbit wakes up in a sunny meadow"
CARPHONE = "a man talks on the phone in a moving car"


@pytest.fixture
def clips_csv(shared_data, tmp_path):
    """clips.csv beside a clips/ folder (relative paths, as Open-Sora writes them): two real clips, Open-Sora's
    optional columns for one of them, and three files that cannot be used."""
    clips = tmp_path / "dataset" / "clips"
    clips.mkdir(parents=True)
    shutil.copy(shared_data / "bigbuckbunny.mp4", clips / "bunny.mp4")
    shutil.copy(shared_data / "carphone_pristine.mp4", clips / "carphone.mp4")
    (clips / "empty.mp4").write_bytes(b"")
    data = (shared_data / "carphone_pristine.mp4").read_bytes()
    (clips / "truncated.mp4").write_bytes(data[: len(data) // 50])
    pd.DataFrame({
        "path": ["clips/bunny.mp4", "clips/carphone.mp4", "clips/empty.mp4", "clips/truncated.mp4", "clips/gone.mp4"],
        "text": [BUNNY, CARPHONE, "nothing", "half a file", "a file nobody copied"],
        "num_frames": ["132", "", "", "", ""], "fps": ["25", "", "", "", ""],
    }).to_csv(tmp_path / "dataset" / "clips.csv", index=False)
    return tmp_path / "dataset" / "clips.csv"


def test_every_file_is_probed_captions_are_kept_and_unreadable_files_are_rejected_with_the_reason(clips_csv, tmp_path):
    summary = ingest_csv(clips_csv, tmp_path / "raw", progress=False)
    df = read_manifest(tmp_path / "raw" / "manifest.csv")
    assert summary["rows"] == 5 and summary["clips"] == 2 and summary["rejected"] == 3
    by_name = {os.path.basename(p): r for p, r in zip(df["path"], df.to_dict("records"))}
    assert by_name["bunny.mp4"]["text"] == BUNNY and by_name["carphone.mp4"]["text"] == CARPHONE
    assert (by_name["bunny.mp4"]["width"], by_name["bunny.mp4"]["height"], by_name["bunny.mp4"]["num_frames"]) == (1280, 720, 132)
    assert (by_name["carphone.mp4"]["width"], by_name["carphone.mp4"]["height"]) == (176, 144)
    assert by_name["carphone.mp4"]["start"] == 0 and by_name["carphone.mp4"]["end"] == pytest.approx(4.0, abs=0.05)
    assert df["path"].map(os.path.isabs).all() and df["path"].map(os.path.exists).all()
    rejects = dict(pd.read_csv(tmp_path / "raw" / "rejects.csv").itertuples(index=False))
    reasons = {os.path.basename(p): r for p, r in rejects.items()}
    assert reasons["empty.mp4"].startswith("empty file")
    assert reasons["truncated.mp4"].startswith("unreadable video")
    assert reasons["gone.mp4"].startswith("cannot read: FileNotFoundError")


def test_scene_splitting_is_optional_and_every_scene_keeps_the_row_caption(tmp_path):
    from opensora_core.data.synthetic import write_mp4

    frames = np.concatenate([np.full((16, 32, 32, 3), 40, np.uint8), np.full((16, 32, 32, 3), 200, np.uint8)])
    write_mp4(frames, tmp_path / "two_shots.mp4", fps=8)  # a hard cut at 2.0 s
    (tmp_path / "clips.csv").write_text("path,text\ntwo_shots.mp4,a grey square turns white\n")
    whole = ingest_csv(tmp_path / "clips.csv", tmp_path / "whole", progress=False)
    split = ingest_csv(tmp_path / "clips.csv", tmp_path / "split", scene_split=True, progress=False)
    assert whole["clips"] == 1 and split["clips"] == 2
    df = read_manifest(tmp_path / "split" / "manifest.csv")
    assert df["start"].tolist() == pytest.approx([0.0, 2.0]) and set(df["text"]) == {"a grey square turns white"}


@pytest.mark.parametrize("content, expected", [
    ("path,caption\na.mp4,a cat\n", r"missing column 'text'"),
    ("file,text\na.mp4,a cat\n", r"missing column 'path'"),
    ("path,text\na.mp4,a cat\nb.mp4,\n", r"row 1 \(line 3\): empty caption in column 'text'"),
    ("path,text\n,a cat\n", r"row 0 \(line 2\): empty path in column 'path'"),
    ("path,text,num_frames\na.mp4,a cat,many\n", r"row 0 \(line 2\): column 'num_frames' must be a number"),
])
def test_a_csv_without_path_or_text_or_with_an_empty_caption_is_refused_naming_it(tmp_path, content, expected):
    (tmp_path / "clips.csv").write_text(content)
    with pytest.raises(ManifestError, match=expected):
        read_captions_csv(tmp_path / "clips.csv")


def test_prepare_refuses_a_bad_csv_with_exit_2_and_writes_nothing(tmp_path):
    (tmp_path / "clips.csv").write_text("path,text\na.mp4,\n")
    out = opensora("data", "prepare", f"run_dir={tmp_path / 'run'}", "data.source=csv", f"data.src={tmp_path / 'clips.csv'}",
                   "data.captioner=existing", timeout=300, check=False)
    assert out.returncode == 2, out.stderr
    assert "row 0 (line 2): empty caption in column 'text'" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run" / "data" / "raw" / "manifest.csv").exists()


def test_csv_source_needs_src_and_a_captioner_that_keeps_or_makes_captions(tmp_path):
    with pytest.raises(ConfigError, match="source csv needs src"):
        load_config(overrides=["data.source=csv", "data.captioner=existing"])
    with pytest.raises(ConfigError, match="captioner synthetic"):
        load_config(overrides=["data.source=csv", f"data.src={tmp_path / 'clips.csv'}"])
    cfg = load_config(overrides=["data.source=csv", f"data.src={tmp_path / 'clips.csv'}", "data.captioner=existing"])
    assert cfg.data.scene_split is None


@pytest.mark.slow  # prepare + caption + cache of two real clips (one 720p) + 4 training steps: ~30 s on 2 busy cores
def test_the_pipeline_trains_on_a_captions_csv(clips_csv, tmp_path):
    from opensora_core.data.cache import LatentCacheDataset, build_latent_cache
    from opensora_core.data.stages import caption_data, prepare_data
    from opensora_core.encoders.build import ensure_tiny_text_encoder
    from opensora_core.encoders.vae_train import tiny_autoencoder
    from opensora_core.eval.watch import TrainingWatcher
    from opensora_core.train.loop import train_stage

    stage = "pretrain_256"
    items = {"run_dir": tmp_path / "run", "data.source": "csv", "data.src": clips_csv, "data.captioner": "existing",
             "data.val_fraction": 0.0, "data.min_resolution": 0, "model.hidden_size": 32, "model.depth": 2,
             "model.num_heads": 2, "text_encoder.hidden_size": 16, "text_encoder.model_max_length": 8,
             "train.dtype": "fp32", "train.processes": 1, "train.log_every": 1, f"stages.{stage}.batch_size": 2,
             f"stages.{stage}.max_steps": 4}
    cfg = load_config(overrides=[f"{k}={v}" for k, v in items.items()])

    prepare_data(cfg, progress=False)
    assert len(pd.read_csv(cfg.paths.rejects)) == 3
    manifest = read_manifest(caption_data(cfg, progress=False))
    assert sorted(manifest["text"]) == sorted([BUNNY, CARPHONE])  # the `existing` captioner kept them
    tiny_autoencoder(seed=0).save_pretrained(cfg.paths.vae_dir)
    ensure_tiny_text_encoder(cfg)
    cache = LatentCacheDataset(build_latent_cache(cfg, stage, progress=False))
    assert sorted(cache.texts) == sorted([BUNNY, CARPHONE])

    summary = train_stage(cfg, stage, track=False, watcher=TrainingWatcher.for_stage)
    assert summary["steps"] == 4 and np.isfinite(summary["final_loss"])


def test_a_csv_on_s3_lists_clips_relative_to_itself(shared_data, tmp_path, monkeypatch, s3_endpoint):
    import boto3
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        s3 = boto3.client("s3", endpoint_url=s3_endpoint)
        s3.create_bucket(Bucket="videos")
        s3.upload_file(str(shared_data / "carphone_pristine.mp4"), "videos", "set/clips/carphone.mp4")
        s3.put_object(Bucket="videos", Key="set/clips.csv", Body=f"path,text\nclips/carphone.mp4,{CARPHONE}\n".encode())
        summary = ingest_csv("s3://videos/set/clips.csv", tmp_path / "raw", progress=False)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    df = read_manifest(tmp_path / "raw" / "manifest.csv")
    assert summary["clips"] == 1 and df["path"].tolist() == ["s3://videos/set/clips/carphone.mp4"]
    assert df["text"].tolist() == [CARPHONE]
