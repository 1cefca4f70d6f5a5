"""`opensora doctor` on a project made by `opensora init`: a table of one-line verdicts, exit 0 when all is well,
1 when a check fails (an unreachable MLflow server, an unreachable DVC S3 remote) or a stage does not fit, 2 for
bad input. Network checks talk to 127.0.0.1 only (moto's S3 server, a closed port)."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from opensora_core import project
from opensora_core.cli import app

from tests.kit import dvc, free_port

FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def proj(tmp_path_factory):
    root = tmp_path_factory.mktemp("doctor") / "my-video-model"
    project.init_project(root)
    return root


def doctor(proj, *args: str):
    # MLFLOW_TRACKING_URI unset: the project's own tracking.uri (another test may have left one in the environment)
    env = {project.PROJECT_ENV: str(proj), "PREFECT_API_URL": "", "MLFLOW_TRACKING_URI": None}
    result = CliRunner().invoke(app, ["doctor", *args], env=env)
    os.environ.pop(project.PROJECT_ENV, None)  # the --project callback's way of passing it on
    return result


def test_a_fresh_project_passes_every_check(proj):
    result = doctor(proj, "--stage", "pretrain_256")
    assert result.exit_code == 0, result.output
    for check in ("torch", "engine", "video decode", "disk", "mlflow", "prefect", "dvc remote"):
        assert check in result.output
    assert "FAIL" not in result.output and "pretrain_256" in result.output


def test_unreachable_mlflow_server_fails_with_its_one_line_verdict(proj):
    port = free_port()  # nothing listens there
    result = doctor(proj, "--stage", "pretrain_256", f"tracking.uri=http://mlflow-user:s3cret@127.0.0.1:{port}")
    assert result.exit_code == 1
    assert f"error: mlflow: tracking server http://127.0.0.1:{port}: unreachable" in result.stderr
    assert "s3cret" not in result.output and "mlflow-user" not in result.output


def test_a_stage_that_does_not_fit_exits_1_with_the_largest_batch_that_fits(proj):
    result = doctor(proj, "--skip-checks", "--preset", "opensora-1.0", "--stage", "pretrain_256", "--gpus", "8",
                    "--gpu-memory", "40", "train.use_latent_cache=true")
    assert result.exit_code == 1
    assert "does not fit; largest batch that fits: 3" in result.output  # ~8.4 GiB of activations per sample
    assert "a stage does not fit" in result.stderr


def test_cpu_only_without_gpu_memory_gives_predictions_only(proj):
    result = doctor(proj, "--skip-checks", "--preset", "opensora-1.0", "--gpus", "8")
    assert result.exit_code == 0
    assert "no GPU here and no --gpu-memory" in result.output


def test_unknown_stage_is_bad_input(proj):
    result = doctor(proj, "--stage", "finetune_1024")
    assert result.exit_code == 2
    assert "--stage: unknown stage 'finetune_1024'" in result.stderr


def dvc_remote(proj, name: str, url: str, endpoint: str) -> None:
    """What `dvc remote add` + `dvc remote modify ... endpointurl` write, in the local config (dvc merges it)."""
    (proj / ".dvc" / "config.local").write_text(f"['remote \"{name}\"']\n    url = {url}\n    endpointurl = {endpoint}\n")


@pytest.mark.slow  # dvc subprocesses and moto
def test_dvc_s3_remote_reachable_then_unreachable(proj, s3_endpoint):
    dvc_remote(proj, "s3", "s3://opensora-dvc/cache", s3_endpoint)
    listed = dvc("remote", "list", cwd=proj, timeout=120, check=False)
    assert "s3://opensora-dvc/cache" in listed.stdout  # dvc reads the remote as the doctor does
    ok = doctor(proj, "--stage", "pretrain_256")
    assert ok.exit_code == 0, ok.output
    assert "bucket reachable" in ok.output
    port = free_port()  # nothing listens there
    dvc_remote(proj, "s3", "s3://opensora-dvc/cache", f"http://127.0.0.1:{port}")
    bad = doctor(proj, "--stage", "pretrain_256")
    assert bad.exit_code == 1
    assert f"error: dvc remote: s3 s3://opensora-dvc/cache at http://127.0.0.1:{port}: " in bad.stderr
    assert "testing" not in bad.output  # the access key
    (proj / ".dvc" / "config.local").unlink()
