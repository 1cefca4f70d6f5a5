"""The deployment routes, as the docs describe them, against a real Prefect server on 127.0.0.1 (SQLite in a tmp
PREFECT_HOME): `opensora pipeline serve`, and the work-pool route (`opensora pipeline pool / deploy / worker`
from a project made by `opensora init`); `prefect deployment run progressive-training/<name> --watch` reaches
Completed. The runs are kept small: the data stages only, 4 clips."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kit import environment, free_port, opensora, opensora_command, run, wait_for_url, wait_until

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Prefect server on a free port; yields (api url, environment for clients)."""
    tmp = tmp_path_factory.mktemp("prefect")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = environment({"PREFECT_HOME": str(tmp / "prefect"), "PREFECT_API_URL": api,
                       "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp / 'prefect' / 'prefect.db'}",
                       "PREFECT_UI_ENABLED": "false", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
                       "OPENSORA_PARENT_RUN_ID": None})
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_url(f"{api}/health", 240, process=proc, interval=1)
        yield api, env
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _run_deployment(name: str, params: dict, env: dict, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`prefect deployment run NAME --watch`, retried until the deployment exists (serve registers it lazily)."""
    tries: list[subprocess.CompletedProcess] = []

    def found() -> bool:
        tries.append(run([BIN / "prefect", "deployment", "run", name, "--params", json.dumps(params), "--watch",
                          "--watch-timeout", "400"], cwd=cwd, env=env, check=False, timeout=600))
        return "not found" not in (tries[-1].stdout + tries[-1].stderr).lower()

    wait_until(found, 240, what=f"deployment {name}", interval=2, output=lambda: tries[-1].stdout + tries[-1].stderr)
    return tries[-1]


def test_deployment_run_against_a_local_server_reaches_completed(server, tmp_path):
    api, env = server
    serve = subprocess.Popen(opensora_command("pipeline", "serve", "--api-url", api), env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        params = {"stages_to_run": ["prepare_data"], "overrides": [f"run_dir={tmp_path / 'run'}", "data.num_videos=4"]}
        out = _run_deployment("progressive-training/tiny", params, env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "Completed" in out.stdout, out.stdout
        assert (tmp_path / "run" / "data" / "raw" / "manifest.csv").exists()
    finally:
        _stop(serve)


def test_work_pool_route_runs_a_deployment_of_the_project_to_completed(server, tmp_path):
    api, env = server
    env = environment({"MLFLOW_TRACKING_URI": None}, base=env)  # the project's own MLflow store
    project = tmp_path / "my-video-model"

    opensora("init", str(project), cwd=tmp_path, env=env)
    assert "created" in opensora("pipeline", "pool", "gpu", cwd=project, env=env).stdout
    assert "exists" in opensora("pipeline", "pool", "gpu", cwd=project, env=env).stdout  # idempotent
    assert "progressive-training/my-video-model" in opensora("pipeline", "deploy", "--pool", "gpu", cwd=project, env=env).stdout
    # the worker starts elsewhere: the flow run's working directory comes from the deployment (the project)
    (tmp_path / "node").mkdir()
    worker = subprocess.Popen(opensora_command("pipeline", "worker", "--pool", "gpu"), cwd=tmp_path / "node", env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        params = {"stages_to_run": ["prepare_data", "caption"], "overrides": ["data.num_videos=4"]}
        out = _run_deployment("progressive-training/my-video-model", params, env, cwd=tmp_path / "node")
        assert out.returncode == 0 and "Completed" in out.stdout, out.stdout + out.stderr
        assert (project / "runs" / "tiny" / "data" / "manifest.csv").is_file()
        assert (project / "mlflow.db").is_file() and not list((tmp_path / "node").iterdir())
    finally:
        _stop(worker)
