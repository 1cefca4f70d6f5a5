"""Remote faults: an S3 endpoint that is unreachable, refuses the credentials or dies in the middle of an ingest,
and an MLflow tracking server killed while a training job logs to it.

S3 failures end a command with exit status 4 and one line naming the operation and the endpoint (never the
credentials), publish nothing half-done, and a rerun finishes only what is missing. A dead tracking server
never stops training: metrics are kept and sent when it is back, or written to a file the job names.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from opensora_core.remote import EXIT_CODE, RemoteError

from tests.faults.fault_servers import FAKE_AWS, moto_server
from tests.kit import dvc, environment, free_port, opensora

BUCKET = "videos"


def error_lines(out: subprocess.CompletedProcess) -> list[str]:
    return [line for line in out.stderr.splitlines() if line.startswith("error:")]


def assert_one_line_error(out: subprocess.CompletedProcess, starts: str) -> None:
    assert out.returncode == EXIT_CODE, out.stderr
    assert "Traceback" not in out.stderr
    assert len(error_lines(out)) == 1 and error_lines(out)[0].startswith(f"error: {starts}"), out.stderr
    for secret in (FAKE_AWS["AWS_SECRET_ACCESS_KEY"], FAKE_AWS["AWS_ACCESS_KEY_ID"]):
        assert secret not in out.stdout + out.stderr


def small_videos(folder: Path, n: int) -> list[Path]:
    """`n` distinct 2 s clips (32 px, 8 fps): a flat grey level per clip, so none is a duplicate of another."""
    from opensora_core.data.synthetic import write_mp4

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        write_mp4(np.full((16, 32, 32, 3), 40 + 40 * k, dtype=np.uint8), folder / f"clip{k}.mp4", fps=8)
        paths.append(folder / f"clip{k}.mp4")
    return paths


def upload(server_url: str, files: list[Path], prefix: str = "raw") -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=server_url, region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    for f in files:
        s3.upload_file(str(f), BUCKET, f"{prefix}/{f.name}")


# ------------------------------------------------------------------------------------------------ S3


def test_ingest_from_an_unreachable_endpoint_exits_with_one_line_naming_it(tmp_path, aws_env):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = opensora("data", "ingest", f"s3://{BUCKET}/raw", "--out", str(tmp_path / "out"),
                   env=environment({"AWS_ENDPOINT_URL": url}), check=False)
    assert_one_line_error(out, f"ingest: listing s3://{BUCKET}/raw at {url}: cannot connect")
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_refused_credentials_exit_with_one_line_and_verbose_adds_the_traceback(tmp_path, aws_env):
    server = moto_server(tmp_path, check_credentials=True).start()  # knows no access key: every request is refused
    try:
        args = ("data", "ingest", f"s3://{BUCKET}/raw", "--out", str(tmp_path / "out"))
        out = opensora(*args, env=environment({"AWS_ENDPOINT_URL": server.url}), check=False)
        assert_one_line_error(out, f"ingest: listing s3://{BUCKET}/raw at {server.url}: credentials refused")
        verbose = opensora("--verbose", *args, env=environment({"AWS_ENDPOINT_URL": server.url}), check=False)
    finally:
        server.kill()
    assert verbose.returncode == EXIT_CODE and "Traceback" in verbose.stderr
    assert FAKE_AWS["AWS_SECRET_ACCESS_KEY"] not in verbose.stderr


def test_s3_server_killed_mid_ingest_then_the_rerun_does_only_the_missing_files(tmp_path, s3_server):
    from opensora_core.data.ingest import PROGRESS, ingest, process_file

    files = small_videos(tmp_path / "local", 4)
    upload(s3_server.url, files)
    calls: list[str] = []

    def killing_on_the_third_file(path, fs=None, threshold=30.0):
        if len(calls) == 2:
            s3_server.kill()  # the store dies between two files
        calls.append(path)
        return process_file(path, fs, threshold)

    out = tmp_path / "raw"
    with pytest.raises(RemoteError) as err:
        ingest(f"s3://{BUCKET}/raw", out, workers=1, progress=False, process=killing_on_the_third_file)
    msg = str(err.value)
    assert msg.startswith(f"ingest: reading s3://{BUCKET}/raw/clip2.mp4 at {s3_server.url}: cannot connect"), msg
    assert "2 of 4 files done" in msg
    assert not (out / "manifest.csv").exists() and not (out / "rejects.csv").exists()  # nothing half-published
    assert len((out / PROGRESS).read_text().splitlines()) == 2  # the dead store did not make a file a reject

    s3_server.start()  # a new, empty moto on the same endpoint: the data is put back
    upload(s3_server.url, files)
    calls.clear()

    def counting(path, fs=None, threshold=30.0):
        calls.append(path)
        return process_file(path, fs, threshold)

    summary = ingest(f"s3://{BUCKET}/raw", out, workers=1, progress=False, process=counting)
    assert sorted(p.rsplit("/", 1)[-1] for p in calls) == ["clip2.mp4", "clip3.mp4"]
    assert summary["processed"] == 2 and summary["clips"] == 4 and summary["rejected"] == 0
    assert pd.read_csv(out / "manifest.csv")["path"].str.startswith(f"s3://{BUCKET}/raw/").all()


def test_cache_and_captioning_from_a_dead_endpoint_fail_naming_the_clip_and_publish_nothing(tmp_path, aws_env, monkeypatch):
    from opensora_core.config import load_config
    from opensora_core.data.cache import build_latent_cache
    from opensora_core.data.caption import caption_manifest
    from opensora_core.data.caption_llava import select_frames
    from opensora_core.data.manifest import write_manifest

    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    cfg = load_config(overrides=[f"run_dir={tmp_path / 'run'}"])
    rows = [{"path": f"s3://{BUCKET}/raw/clip{k}.mp4", "text": f"clip {k}", "num_frames": 16, "fps": 8.0, "height": 32,
             "width": 32, "split": "train"} for k in range(2)]
    write_manifest(pd.DataFrame(rows), cfg.paths.manifest)

    class FrameReadingCaptioner:  # reads frames as the llava captioner does, without its model
        name = "frames"

        def caption(self, batch):
            return [f"{len(select_frames(r['path']))} frames" for r in batch]

    with pytest.raises(RemoteError, match=rf"^caption: reading s3://{BUCKET}/raw/clip0.mp4 \(\+1 clips\) at {url}: cannot connect"):
        caption_manifest(cfg.paths.manifest, tmp_path / "captioned.csv", FrameReadingCaptioner(), progress=False)
    assert not (tmp_path / "captioned.csv").exists()

    class NeverCalled:
        def encode(self, x):
            raise AssertionError("no clip was readable, nothing to encode")

    with pytest.raises(RemoteError, match=rf"^cache: reading s3://{BUCKET}/raw/clip\d.mp4 at {url}: cannot connect"):
        build_latent_cache(cfg, "pretrain_256", vae=NeverCalled(), text_encoder=NeverCalled(), encoder_key="x",
                           progress=False)
    assert not cfg.paths.cache_dir("pretrain_256").exists()


@pytest.fixture
def dvc_repo(tmp_path, aws_env) -> Path:
    """A DVC repository tracking a small folder, with an S3 remote `s3` (endpoint set per test)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc("init", "-q", cwd=repo)
    (repo / "data").mkdir()
    (repo / "data" / "x.bin").write_bytes(os.urandom(1024))
    dvc("add", "data", cwd=repo)
    dvc("remote", "add", "-d", "s3", f"s3://{BUCKET}/cache", cwd=repo)
    return repo


@pytest.mark.slow  # dvc subprocesses and a moto server: ~30 s on 2 busy cores
def test_dvc_push_with_refused_credentials_exits_with_one_line_naming_the_remote(dvc_repo, tmp_path):
    server = moto_server(tmp_path, check_credentials=True).start()
    try:
        dvc("remote", "modify", "s3", "endpointurl", server.url, cwd=dvc_repo)
        out = opensora("data", "push", cwd=dvc_repo, check=False)
    finally:
        server.kill()
    assert_one_line_error(out, f"dvc push: remote 's3' (s3://{BUCKET}/cache) at {server.url}: credentials refused")


@pytest.mark.slow  # dvc subprocesses: ~30 s on 2 busy cores
def test_dvc_pull_from_an_unreachable_remote_exits_with_one_line_naming_it(dvc_repo):
    url = f"http://127.0.0.1:{free_port()}"
    dvc("remote", "modify", "s3", "endpointurl", url, cwd=dvc_repo)
    dvc("remote", "modify", "s3", "connect_timeout", "2", cwd=dvc_repo)
    shutil.rmtree(dvc_repo / "data")
    shutil.rmtree(dvc_repo / ".dvc" / "cache")
    out = opensora("data", "pull", cwd=dvc_repo, check=False)
    assert_one_line_error(out, f"dvc pull: remote 's3' (s3://{BUCKET}/cache) at {url}: cannot connect")


# ------------------------------------------------------------------------------------------------ MLflow


STAGE = "pretrain_256"


def tiny_train_config(run_dir: Path, steps: int):
    """A few-ms-per-step STDiT (the training tests' tiny config), logging every step."""
    from opensora_core.config import load_config

    items = {"run_dir": str(run_dir), "model.hidden_size": 32, "model.depth": 2, "model.num_heads": 2,
             "text_encoder.hidden_size": 16, "text_encoder.model_max_length": 8, "train.dtype": "fp32",
             "train.lr": 1e-3, "train.warmup_steps": 0, "train.ckpt_every": 100, "train.log_every": 1,
             "train.processes": 1, f"stages.{STAGE}.num_frames": 2, f"stages.{STAGE}.image_size": 16,
             f"stages.{STAGE}.batch_size": 2, f"stages.{STAGE}.max_steps": steps, "train.sample_every": 0}
    return load_config(overrides=[f"{k}={v}" for k, v in items.items()])


class Latents:
    """Random latents shaped like the latent cache's items; `on_fetch[k]()` runs when item fetch k happens
    (batch size 2: fetches 2s and 2s+1 make step s+1), which is where the test kills or restarts the server."""

    def __init__(self, n: int, on_fetch: dict):
        self.n, self.on_fetch, self.fetches = n, on_fetch, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        import torch

        action = self.on_fetch.pop(self.fetches, None)
        self.fetches += 1
        if action:
            action()
        g = torch.Generator().manual_seed(i)
        mask = torch.ones(8, dtype=torch.long)
        return {"latent": torch.randn(4, 2, 4, 4, generator=g), "y": torch.randn(1, 8, 16, generator=g), "mask": mask,
                "text": f"clip {i}", "index": i}


@pytest.fixture
def tracking_to(mlflow_server, monkeypatch):
    if not mlflow_server.running():
        mlflow_server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    for k in ("OPENSORA_MLFLOW_RUN_ID", "OPENSORA_PARENT_RUN_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    return mlflow_server


def loss_steps(url: str, run_id: str) -> list[int]:
    import mlflow

    return sorted(m.step for m in mlflow.MlflowClient(url).get_metric_history(run_id, "loss"))


@pytest.mark.slow  # a real mlflow server started twice: its start-up is most of the time
def test_tracking_server_killed_during_training_job_finishes_and_names_the_file_of_unsent_metrics(tmp_path, tracking_to):
    from opensora_core.train.loop import train_stage

    server, steps = tracking_to, 8
    cfg = tiny_train_config(tmp_path / "run", steps)
    summary = train_stage(cfg, STAGE, track=True, dataset=Latents(16, {6: server.kill}))  # dies before step 4

    assert summary["steps"] == steps
    final = json.loads((cfg.paths.ckpt_dir(STAGE) / "final.json").read_text())
    pending = Path(final["mlflow_pending"])
    kept = json.loads(pending.read_text())
    assert kept["run_id"] == summary["mlflow_run_id"] and kept["status"] == "FINISHED"
    assert sorted({s for k, _, _, s in kept["metrics"] if k == "loss"}) == list(range(4, steps + 1))
    log_steps = [json.loads(line)["step"] for line in (cfg.paths.ckpt_dir(STAGE) / "train_log.jsonl").read_text().splitlines()]
    assert log_steps == list(range(1, steps + 1))  # the local log never depended on the server

    server.start()
    out = opensora("tracking", "send", str(pending), check=False)
    assert out.returncode == 0, out.stderr
    import mlflow

    assert loss_steps(server.url, summary["mlflow_run_id"]) == list(range(1, steps + 1))
    assert mlflow.MlflowClient(server.url).get_run(summary["mlflow_run_id"]).info.status == "FINISHED"
    assert not pending.exists()


@pytest.mark.slow  # a real mlflow server killed and started again while the job runs
def test_metrics_logged_while_the_tracking_server_was_down_are_sent_when_it_is_back(tmp_path, tracking_to):
    from opensora_core.train.loop import train_stage

    server, steps = tracking_to, 8
    cfg = tiny_train_config(tmp_path / "run", steps)
    # killed before step 3, back (answering) before step 6: steps 3-5 are logged while it is down
    summary = train_stage(cfg, STAGE, track=True, dataset=Latents(16, {4: server.kill, 10: server.start}))

    assert summary["steps"] == steps and summary["mlflow_pending"] is None
    assert not (cfg.paths.ckpt_dir(STAGE) / "mlflow_pending.json").exists()
    import mlflow

    assert loss_steps(server.url, summary["mlflow_run_id"]) == list(range(1, steps + 1))
    assert mlflow.MlflowClient(server.url).get_run(summary["mlflow_run_id"]).info.status == "FINISHED"
