"""What a user sees in the two UIs after one pipeline run, driven in a real browser (Playwright on the system
chromium; `.ci/run` installs Debian's `chromium` when it is absent): the real `mlflow server` and `prefect server
start`, on free ports of 127.0.0.1, serve the shared project's own state (mlflow.db + mlartifacts/, .prefect/).

MLflow: the experiment, opened by the link we print, lands on the model-training view (the runs table, not GenAI's
overview of traces), the pipeline's parent run expands into its stage runs, the chart view draws the three training
stages' loss, and an evaluation gif shows in the evaluate run's artifacts. Prefect: the flow run's page, its task
runs, the results artifact. Each step asserts what it must see, then saves a screenshot under the test's tmp dir."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from opensora_core.tracking import WORKFLOW_QUERY

from tests.kit import environment, free_port, wait_for_url

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BIN = Path(sys.executable).parent
TRAINING = ("pretrain_256", "finetune_512", "finetune_64f")
STEP_MS = 120_000  # the UIs render in seconds; a CI machine shared with other jobs can be far slower


def get_json(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    """`cmd` in a process group of its own, so that stopping it takes its workers down too."""
    with open(log, "w") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


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
    # the UI needs no server-side jobs (GenAI scorers, trace archival): without them MLflow 3.17 starts 2 processes, not
    # ~10 (its job runner and Huey consumers), which a 2-core machine feels at start-up and shut-down
    mlflow_env = environment({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, base=env)
    mlflow_cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                  "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"]
    home = root / ".prefect"
    prefect_env = environment({"PREFECT_HOME": str(home),
                               "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
                               # the UI asks the API at the address these settings give (--port alone leaves it at 4200)
                               "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(prefect_port)},
                              base=env)
    prefect_cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)]
    mlflow_url, prefect_url = f"http://127.0.0.1:{mlflow_port}", f"http://127.0.0.1:{prefect_port}"
    # both start at once (each takes a while on 2 cores), then each must answer its health check
    procs = []
    try:
        procs.append(start(mlflow_cmd, mlflow_env, logs / "mlflow.log"))
        procs.append(start(prefect_cmd, prefect_env, logs / "prefect.log"))
        wait_for_url(f"{mlflow_url}/health", 300, process=procs[0], output=lambda: (logs / "mlflow.log").read_text()[-3000:])
        wait_for_url(f"{prefect_url}/api/health", 300, process=procs[1],
                     output=lambda: (logs / "prefect.log").read_text()[-3000:])
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


# MLflow opens its assistant panel on a browser's first visit to a local server, over a third of the page; a user
# closes it once and MLflow remembers (this key). Set before the page loads, so no step races the panel's opening.
NO_ASSISTANT = "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true')"
# the names of the plotly traces that have points, in the chart of the open dialog (the chart view's enlarged card)
DRAWN_ARE = """want => [...new Set((document.querySelector('[role=dialog] .js-plotly-plot')?.data || [])
    .filter(t => (t.y || []).length > 0).map(t => t.name))].sort().join() === want.join()"""


def search_runs(ui: str, experiment_id: str) -> list[dict]:
    body = {"experiment_ids": [experiment_id], "max_results": 1000}
    return get_json(f"{ui}/api/2.0/mlflow/runs/search", body)["runs"]


def test_mlflow_ui_shows_the_pipeline_runs_loss_charts_and_an_evaluation_gif(uis, page, tmp_path):
    from playwright.sync_api import expect

    ui = uis["mlflow"]
    exp = get_json(f"{ui}/api/2.0/mlflow/experiments/get-by-name?experiment_name=opensora-flow-tiny")["experiment"]
    runs = search_runs(ui, exp["experiment_id"])
    # the shared fixtures' pipeline run is the first one (other e2e tests may have added more since, and other runs)
    parents = [r for r in runs if r["info"]["run_name"].startswith("progressive-training-")]
    parent = min(parents, key=lambda r: r["info"]["start_time"])
    parent_id, parent_name = parent["info"]["run_id"], parent["info"]["run_name"]
    child_tag = {"key": "mlflow.parentRunId", "value": parent_id}
    children = [r["info"]["run_name"] for r in runs if child_tag in r["data"]["tags"]]
    assert set(children) == {"prepare", "caption", "encoders", *(f"cache@{s}" for s in TRAINING), *TRAINING, "evaluate"}
    page.add_init_script(NO_ASSISTANT)

    # 1. the experiment, opened as the link we print opens it (tracking.experiment_url), shows the runs table of the
    # model-training view: without workflowType in the URL, MLflow 3.17 opens a new browser on GenAI's overview
    experiment = f"{ui}/#/experiments/{exp['experiment_id']}/runs?{WORKFLOW_QUERY}"
    page.goto(experiment)
    newest = max(parents, key=lambda r: r["info"]["start_time"])["info"]["run_name"]
    expect(page.get_by_role("link", name=newest, exact=True)).to_be_visible()  # the table, its newest runs on top
    expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
    assert "/runs" in page.url and "workflowType=machine_learning" in page.url, page.url
    expect(page.get_by_role("link", name="Overview", exact=True)).to_have_count(0)  # GenAI's side bar starts with it
    page.screenshot(path=tmp_path / "mlflow-1-runs-table.png")

    # 2. the runs of that pipeline run (a search for those started while its parent ran, through the table's own URL
    # state): the parent, collapsed at first, expands into one run per stage. Its expander is the one button of its
    # name's cell (an icon without a label); the row is ag-grid's, whose row-id is the run's id
    start, end = parent["info"]["start_time"], parent["info"]["end_time"]
    during = f"attributes.start_time >= {start} and attributes.start_time <= {end}"
    page.goto(f"{experiment}&{urllib.parse.urlencode({'searchFilter': during})}")
    expect(page.get_by_test_id("search-box")).to_have_value(during)
    expect(page.get_by_text(f"{1 + len(children)} matching runs")).to_be_visible()  # it counts 0 until they load
    parent_link = page.get_by_role("link", name=parent_name, exact=True)
    stage_links = [page.get_by_role("link", name=name, exact=True) for name in children]
    for link in stage_links:
        expect(link).to_have_count(0)
    row = page.locator(f"[role=row][row-id='{parent_id}']").filter(has=parent_link)
    row.get_by_role("gridcell").filter(has=parent_link).get_by_role("button").click()
    for link in stage_links:
        expect(link).to_be_visible()
    page.screenshot(path=tmp_path / "mlflow-2-parent-expanded.png")

    # 3. the chart view, searched down to the one chart of `loss`, enlarged: a line for each training stage
    page.locator("label", has=page.locator("input[name=runs-view-mode][value=CHART]")).click()
    page.get_by_placeholder("Search metric charts").fill("^loss$")
    card = page.get_by_test_id("experiment-view-compare-runs-card")
    expect(card).to_have_count(1)
    expect(card.get_by_role("heading", name="loss", exact=True)).to_be_visible()
    card.locator("button[data-component-id=fullscreen_button_chartcard]").click()
    dialog = page.get_by_role("dialog", name="loss")
    for stage in TRAINING:  # the legend lists every visible run; the traces drawn are the runs that logged `loss`
        expect(dialog.get_by_text(f"{stage} (loss)", exact=True)).to_be_visible()
    page.wait_for_function(DRAWN_ARE, arg=sorted(TRAINING))
    page.screenshot(path=tmp_path / "mlflow-3-loss-chart.png")
    dialog.get_by_role("button", name="Close").click()

    # 4. the evaluate run's artifacts: a sample gif of the final stage, displayed. (Its link, like every run link of
    # the table, carries no workflowType, so this page shows GenAI's side bar; the run page itself is the same.)
    page.locator("label", has=page.locator("input[name=runs-view-mode][value=TABLE]")).click()
    page.get_by_role("link", name="evaluate", exact=True).click()
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("samples", exact=True).click()
    page.get_by_text(TRAINING[-1], exact=True).click()
    page.get_by_text(re.compile(r"\.gif$")).first.click()
    gif = page.get_by_role("img", name=re.compile(rf"^samples\/{TRAINING[-1]}\/.+\.gif$"))  # alt: the artifact's path
    expect(gif).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=gif.element_handle())
    page.screenshot(path=tmp_path / "mlflow-4-evaluation-gif.png")


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
