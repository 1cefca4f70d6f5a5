"""Fixtures of the fault tests: fake AWS credentials, a killable moto S3 server, a killable MLflow server, and the
reference weights of an uninterrupted run of the tiny two-rank training stage (jobs.py)."""

from __future__ import annotations

import sys

import pytest

from tests.faults.fault_servers import FAKE_AWS, ServerProcess, moto_server
from tests.faults.jobs import STAGE_ID, Job, final_weights, job_overrides, losses
from tests.kit import free_port, opensora_command


@pytest.fixture
def aws_env(monkeypatch):
    for k, v in FAKE_AWS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # a cached filesystem would keep another test's endpoint
    yield FAKE_AWS
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_server(tmp_path, aws_env, monkeypatch):
    """moto's S3 server in its own process (killable), AWS_ENDPOINT_URL pointing at it."""
    server = moto_server(tmp_path).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    yield server
    server.kill()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """One `mlflow server` (SQLite backend in tmp) per module; tests kill and restart it on the same port."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    server = ServerProcess([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                            "--default-artifact-root", (root / "artifacts").as_uri(), "--workers", "1"],
                           port, "/health", root / "server.log",
                           env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no job runner: a faster start
    yield server
    server.kill()


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> dict:
    """Final weights and losses of one uninterrupted run of the stage (no MLflow): the one reference every kill,
    signal and concurrent-run test compares its resumed run with."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    job = Job(opensora_command("pipeline", "stage", STAGE_ID, "--no-track", *job_overrides(run_dir)), run_dir.parent / "log")
    assert job.wait() == 0, job.text()[-3000:]
    return {**final_weights(run_dir), "losses": losses(run_dir)}
