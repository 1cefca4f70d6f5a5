"""DVC's S3 remote (dvc-s3/s3fs, `endpointurl`) against moto's S3 server on 127.0.0.1: push, lose the local
copy and cache, pull it back; an unreachable remote fails with an error that names the endpoint."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.kit import environment, free_port
from tests.kit import dvc as run_dvc

pytestmark = pytest.mark.slow  # dvc subprocesses: ~1 min on 2 busy cores

FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`dvc ARGS` in `repo` with the fake AWS credentials moto accepts."""
    return run_dvc(*args, cwd=repo, env=environment(FAKE_AWS), check=check)


@pytest.fixture
def repo(tmp_path) -> Path:
    """A DVC repo tracking a small dataset folder, like runs/tiny/data/raw."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc(tmp_path, "init", "-q")
    data = tmp_path / "data" / "raw"
    data.mkdir(parents=True)
    (data / "manifest.csv").write_text("path,text\nvideos/0.mp4,a red circle\n")
    (data / "0.mp4").write_bytes(os.urandom(4096))
    dvc(tmp_path, "add", "data/raw")
    return tmp_path


def add_remote(repo: Path, url: str) -> None:
    dvc(repo, "remote", "add", "-d", "s3", "s3://opensora-dvc/cache")
    dvc(repo, "remote", "modify", "s3", "endpointurl", url)


def test_push_then_pull_restores_data_lost_locally(repo, s3_endpoint):
    add_remote(repo, s3_endpoint)
    assert "3 files pushed" in dvc(repo, "push").stdout  # two files + the directory listing
    original = (repo / "data/raw/0.mp4").read_bytes()
    shutil.rmtree(repo / "data/raw")
    shutil.rmtree(repo / ".dvc/cache")
    dvc(repo, "pull")
    assert (repo / "data/raw/0.mp4").read_bytes() == original
    assert "Cache and remote 's3' are in sync" in dvc(repo, "status", "--cloud").stdout


def test_an_unreachable_remote_fails_naming_the_endpoint(repo):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    add_remote(repo, url)
    dvc(repo, "remote", "modify", "s3", "connect_timeout", "2")
    out = dvc(repo, "push", check=False)
    assert out.returncode != 0
    assert url in out.stderr + out.stdout
