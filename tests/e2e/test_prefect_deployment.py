"""The deployment route, as the docs describe it: a real Prefect server on 127.0.0.1 (SQLite in a tmp
PREFECT_HOME), `opensora pipeline serve`, then `prefect deployment run progressive-training/tiny --watch`
reaches Completed. The run is kept small: only the prepare stage, 4 clips, in a tmp run directory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(url)


def test_deployment_run_against_a_local_server_reaches_completed(tmp_path):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect' / 'prefect.db'}",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("OPENSORA_PARENT_RUN_ID", None)
    procs = []
    try:
        procs.append(subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_for(f"{api}/health", 240)
        procs.append(subprocess.Popen([sys.executable, "-m", "opensora_core.cli.main_module", "pipeline", "serve", "--api-url", api],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        params = {"stages_to_run": ["prepare_data"], "overrides": [f"run_dir={tmp_path / 'run'}", "data.num_videos=4"]}
        deadline = time.monotonic() + 240
        while True:  # the deployment exists once `serve` has registered it
            out = subprocess.run([str(BIN / "prefect"), "deployment", "run", "progressive-training/tiny", "--params",
                                  json.dumps(params), "--watch", "--watch-timeout", "400"],
                                 env=env, capture_output=True, text=True, timeout=600)
            if "not found" not in (out.stdout + out.stderr).lower() or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "Completed" in out.stdout, out.stdout
        assert (tmp_path / "run" / "data" / "raw" / "manifest.csv").exists()
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
