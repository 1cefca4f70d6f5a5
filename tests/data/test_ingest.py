"""Ingest of real footage: scene cuts, bad files listed in rejects.csv, de-duplication, resume, S3 via moto."""

from __future__ import annotations

import shutil

import av
import numpy as np
import pandas as pd
import pytest

from opensora_core.data.ingest import ingest, list_videos, process_file
from opensora_core.data.manifest import read_manifest
from opensora_core.data.scenes import detect_scenes
from opensora_core.data.synthetic import write_mp4

from tests.kit import free_port

CUT = 132 / 25  # bigbuckbunny has 132 frames; joined at 25 fps the second shot starts at 5.28 s


def _frames(path, w=176, h=144):
    with av.open(str(path)) as c:
        return np.stack([f.reformat(width=w, height=h, format="rgb24").to_ndarray() for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def joined(shared_data, tmp_path_factory):
    """The two real clips joined into one file (176x144, 25 fps) with a known cut."""
    path = tmp_path_factory.mktemp("joined") / "joined.mp4"
    write_mp4(np.concatenate([_frames(shared_data / "bigbuckbunny.mp4"), _frames(shared_data / "carphone_pristine.mp4")]), path, fps=25)
    return path


@pytest.fixture
def source(shared_data, joined, tmp_path):
    """A user's folder: real clips, a duplicate, and broken files."""
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    shutil.copy(joined, src / "joined.mp4")
    shutil.copy(shared_data / "carphone_pristine.mp4", src / "carphone.mp4")
    shutil.copy(shared_data / "carphone_pristine.mp4", src / "nested" / "carphone_copy.mp4")
    data = (shared_data / "carphone_pristine.mp4").read_bytes()
    (src / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (src / "empty.mp4").write_bytes(b"")
    (src / "notes.mp4").write_text("this is not a video\n")
    (src / "readme.txt").write_text("ignored: not a video suffix")
    return src


def test_cut_is_found_where_the_clips_were_joined(joined, shared_data):
    scenes = detect_scenes(str(joined))
    assert len(scenes) == 2 and scenes[0][1] == pytest.approx(CUT, abs=0.05)
    assert len(detect_scenes(str(shared_data / "bigbuckbunny.mp4"))) == 1  # one continuous shot: no false cut


def test_ingest_splits_filters_and_lists_every_bad_file(source, tmp_path):
    summary = ingest(source, tmp_path / "out", min_duration=0.5, max_duration=60, progress=False)
    df = read_manifest(tmp_path / "out" / "manifest.csv")
    rejects = pd.read_csv(tmp_path / "out" / "rejects.csv")
    reasons = {p.rsplit("/", 1)[-1]: r for p, r in zip(rejects["path"], rejects["reason"])}
    assert reasons["empty.mp4"].startswith("empty file")
    assert reasons["truncated.mp4"].startswith("unreadable video")
    assert reasons["notes.mp4"].startswith("unreadable video")
    assert reasons["carphone_copy.mp4"].startswith("duplicate of") and "carphone.mp4" in reasons["carphone_copy.mp4"]
    assert summary["rejected_files"] == 4 and summary["files"] == 6
    joined = df[df["path"].str.endswith("joined.mp4")].sort_values("start")
    assert list(joined["start"]) == [0.0, pytest.approx(CUT, abs=0.05)]
    car = df[df["path"].str.endswith("carphone.mp4")].iloc[0]
    assert (car["width"], car["height"], car["codec"]) == (176, 144, "h264") and car["fps"] == pytest.approx(29.97, abs=0.01)
    assert car["end"] == pytest.approx(4.0, abs=0.05) and (df["text"] == "").all()


def test_filters_by_resolution_and_cut_long_scenes(source, tmp_path):
    ingest(source, tmp_path / "hi", min_resolution=200, progress=False)
    assert "below min_resolution" in " ".join(pd.read_csv(tmp_path / "hi" / "rejects.csv")["reason"])
    ingest(source, tmp_path / "short", max_duration=2.0, progress=False)
    df = read_manifest(tmp_path / "short" / "manifest.csv")
    assert ((df["end"] - df["start"]) <= 2.0 + 1e-6).all() and len(df) >= 7


def test_interrupted_ingest_resumes_with_only_the_missing_files(source, tmp_path):
    calls = []

    def dying(path, fs=None, threshold=30.0):
        if len(calls) >= 3:
            raise KeyboardInterrupt
        calls.append(path)
        return process_file(path, fs, threshold)

    with pytest.raises(KeyboardInterrupt):
        ingest(source, tmp_path / "out", workers=1, progress=False, process=dying)
    first = list(calls)
    calls.clear()

    def counting(path, fs=None, threshold=30.0):
        calls.append(path)
        return process_file(path, fs, threshold)

    summary = ingest(source, tmp_path / "out", workers=1, progress=False, process=counting)
    assert len(first) == 3 and summary["processed"] == 3 and not set(first) & set(calls)
    assert summary["clips"] == 3  # joined (2 shots) + carphone, same as an uninterrupted run


@pytest.fixture
def s3_prefix(monkeypatch, source):
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}.items():
        monkeypatch.setenv(k, v)
    import boto3

    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
    s3.create_bucket(Bucket="videos")
    for name in ("joined.mp4", "carphone.mp4", "empty.mp4"):
        s3.upload_file(str(source / name), "videos", f"raw/{name}")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield "s3://videos/raw"
    server.stop()


def test_ingest_from_an_s3_prefix(s3_prefix, tmp_path):
    assert [p.rsplit("/", 1)[-1] for p in list_videos(s3_prefix)] == ["carphone.mp4", "empty.mp4", "joined.mp4"]
    summary = ingest(s3_prefix, tmp_path / "out", progress=False)
    df = read_manifest(tmp_path / "out" / "manifest.csv")
    assert summary["clips"] == 3 and df["path"].str.startswith("s3://videos/raw/").all()
    assert pd.read_csv(tmp_path / "out" / "rejects.csv")["path"].tolist() == ["s3://videos/raw/empty.mp4"]
    from opensora_core.data.dataset import VideoDataset

    item = VideoDataset(df, 4, 3, 32, split=None)[0]  # the dataset decodes s3:// paths too
    assert item["video"].shape == (3, 4, 32, 32)
