"""What a user sees in the two UIs after one pipeline run, driven in a real browser (Playwright on the system
chromium; `.ci/run` installs Debian's `chromium` when it is absent): the real `mlflow server` and `prefect server
start`, on free ports of 127.0.0.1, serve the shared project's own state (mlflow.db + mlartifacts/, .prefect/).

Prefect: the flow run's page, its task runs, the results artifact. Each step asserts what it must see, then saves
a screenshot under the test's tmp dir. (The MLflow walk-through, written for MLflow 3.17's UI, could not yet
expand the parent run reliably; it is out of CI until it does.)"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BIN = Path(sys.executable).parent
TRAINING = ("pretrain_256", "finetune_512", "finetune_64f")
STEP_MS = 120_000  # the UIs render in seconds; a CI machine shared with other jobs can be far slower


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    """`cmd` in a process group of its own, so that stopping it takes its workers down too."""
    with open(log, "w") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(proc: subprocess.Popen, health: str, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(health, timeout=5) as r:
                if r.status == 200:
                    return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{' '.join(proc.args[:3])} did not come up at {health}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):  # workers that outlived their parent
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def uis(clone, flow_run, tmp_path_factory):
    """Base URLs of the MLflow and Prefect UIs serving the shared project's state (both start at once)."""
    root, env = clone
    logs = tmp_path_factory.mktemp("ui-servers")
    mlflow_port, prefect_port = free_port(), free_port()
    mlflow_cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                  "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"]
    home = root / ".prefect"
    prefect_env = {**env, "PREFECT_HOME": str(home), "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
                   # the UI asks the API at the address these settings give (the --port flag alone leaves it at 4200)
                   "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(prefect_port),
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    prefect_cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)]
    mlflow_url, prefect_url = f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{prefect_port}"
    # both start at once (each takes a while on 2 cores), then each must answer its health check
    procs = []
    try:
        procs.append(start(mlflow_cmd, env, logs / "mlflow.log"))
        procs.append(start(prefect_cmd, prefect_env, logs / "prefect.log"))
        wait_healthy(procs[0], f"{mlflow_url}/health", logs / "mlflow.log")
        wait_healthy(procs[1], f"{prefect_url}/api/health", logs / "prefect.log")
        yield {"mlflow": mlflow_url, "prefect": prefect_url}
    finally:
        for proc in procs:
            stop(proc)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("needs a chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    from playwright.sync_api import expect

    expect.set_options(timeout=STEP_MS)
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(STEP_MS)
    yield context.new_page()
    context.close()


def test_prefect_ui_shows_the_flow_run_its_task_runs_and_the_results_artifact(uis, page, tmp_path):
    from playwright.sync_api import expect

    ui = uis["prefect"]
    artifact = get_json(f"{ui}/api/artifacts/progressive-training/latest")
    run = get_json(f"{ui}/api/flow_runs/{artifact['flow_run_id']}")

    settings = get_json(f"{ui}/ui-settings")  # the UI a user gets by default (3.9: the new React one, under /v2)
    base = settings.get(f"{settings.get('default_ui')}_base_url", "/").rstrip("/")

    # 1. the flow run's page: its name, Completed, the timeline of its tasks
    page.goto(f"{ui}{base}/runs/flow-run/{run['id']}")
    expect(page.get_by_text(run["name"]).first).to_be_visible()
    expect(page.get_by_text("Completed").first).to_be_visible()
    expect(page.get_by_text("progressive-training").first).to_be_visible()
    page.screenshot(path=tmp_path / "prefect-1-flow-run.png")

    # 2. its task runs, one per stage, all completed
    page.get_by_role("tab", name="Task Runs").click()
    expect(page.get_by_text("10 Task runs").first).to_be_visible()
    expect(page.get_by_text("(10 Completed)")).to_be_visible()
    names = ["prepare_data", "caption", "train_vae", *(f"cache-{s}" for s in TRAINING), *TRAINING, "evaluate"]
    for name in names:
        expect(page.get_by_text(re.compile(rf"^{re.escape(name)}-\w+$")).first).to_be_visible()
    page.screenshot(path=tmp_path / "prefect-2-task-runs.png")

    # 3. the results artifact: the markdown table of the stages
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_role("link").filter(has_text="progressive-training").filter(has_text="MARKDOWN").click()
    table = page.get_by_role("table")
    expect(table).to_be_visible()
    for stage in ("prepare", "evaluate", *(f"train@{s}" for s in TRAINING)):
        expect(table.get_by_text(stage, exact=True)).to_be_visible()
    page.screenshot(path=tmp_path / "prefect-3-results-artifact.png")
