"""End to end, as a user would run it: the tool built as a wheel and installed (not editable) beside the
project, `opensora init` of a fresh project outside this checkout, a very small tiny preset. The Prefect flow
runs every real stage (training through torchrun, 2 ranks) and records them through DVC, so
`dvc status` is clean and `dvc repro` has nothing to do afterwards; a changed parameter reruns only what
depends on it; MLflow's REST API lists the parent run and the stage runs; a precision comparison yields two
training runs with loss histories. Slow (a few minutes on 2 cores): the stages are real."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from opensora_core import pipeline
from opensora_core.config import load_config

from tests.e2e.installed import opensora
from tests.kit import dvc, environment, free_port, run, wait_for_url, wait_until

pytestmark = pytest.mark.slow


def test_the_installed_tool_is_the_wheel_not_this_checkout(installed, clone):
    site, env = installed
    root, _ = clone
    out = run([sys.executable, "-c", "import opensora_core, flows; print(opensora_core.__file__, flows.__file__)"], cwd=root, env=env)
    assert out.stdout.split() == [str(site / "opensora_core" / "__init__.py"), str(site / "flows" / "__init__.py")]
    assert (site / "opensora_core" / "resources" / "template" / "params.yaml.template").is_file()


def test_config_show_works_from_a_subfolder_of_the_project(clone):
    root, env = clone
    (root / "notebooks").mkdir(exist_ok=True)
    out = opensora("config", "show", cwd=root / "notebooks", env=env)
    assert "run_dir: runs/tiny" in out.stdout and "num_videos: 16" in out.stdout  # the project's own params.yaml


def test_an_unknown_key_in_the_projects_params_exits_2_naming_it(installed, tmp_path):
    site, env = installed
    opensora("init", str(tmp_path / "p"), cwd=tmp_path, env=env)
    params = tmp_path / "p" / "params.yaml"
    params.write_text(params.read_text().replace("\ntrain:\n", "\ntrain:\n  lr_schedule: cosine\n", 1))
    out = opensora("config", "show", cwd=tmp_path / "p", env=env, check=False)
    assert out.returncode == 2 and "train.lr_schedule: unknown key" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_prefect_flow_runs_every_stage_and_records_them_through_dvc(clone, flow_run):
    root, env = clone
    out, seconds = flow_run
    print(f"pipeline through Prefect + DVC: {seconds:.0f} s")
    assert "recorded by DVC" in out.stdout + out.stderr
    assert (root / "runs/tiny/eval/metrics.json").exists()
    # everything it wrote is inside the project: runs, MLflow's store, Prefect's state
    assert (root / "mlflow.db").is_file() and (root / "mlartifacts").is_dir() and (root / ".prefect").is_dir()
    assert [p.name for p in root.parent.iterdir()] == [root.name]
    assert (root / "dvc.lock").exists()
    status = dvc("status", cwd=root, env=env)
    assert "up to date" in status.stdout, status.stdout
    repro = dvc("repro", cwd=root, env=env)
    assert "Running stage" not in repro.stdout, repro.stdout


def test_a_second_flow_run_reuses_everything(clone, flow_run):
    root, env = clone
    out = opensora("pipeline", "run", cwd=root, env=env)
    ids = set(pipeline.stage_ids(load_config(root / "params.yaml")))
    summary = [line.split()[:2] for line in out.stdout.splitlines() if line.startswith("  ") and line.split()[:1] and line.split()[0] in ids]
    assert len(summary) == 10 and all(outcome == "up" for _, outcome in summary), out.stdout


def test_changed_eval_parameter_reruns_only_evaluate(clone, flow_run, tmp_path):
    """In a copy of the project (git, DVC cache, runs, MLflow store and all): the shared one stays as the flow
    run left it for the tests after this one."""
    root = tmp_path / clone[0].name
    shutil.copytree(clone[0], root, symlinks=True)
    env = clone[1]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["presets"]["tiny"]["eval"]["cfg_scale"] = 2.0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    repro = dvc("repro", cwd=root, env=env)
    ran = [line.split("'")[1] for line in repro.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["evaluate"], repro.stdout
    metrics = dvc("metrics", "show", "--json", cwd=root, env=env)
    assert "final.heldout_loss" in metrics.stdout


def test_mlflow_rest_api_lists_the_parent_and_its_stage_runs_with_metrics(clone, flow_run):
    root, env = clone
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              cwd=root, env=environment(base=env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        wait_for_url(f"http://127.0.0.1:{port}/health", 240, process=server)

        def post(path: str, body: dict) -> dict:
            req = urllib.request.Request(f"{url}/{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            return json.loads(urllib.request.urlopen(req, timeout=30).read())

        exp = json.loads(urllib.request.urlopen(f"{url}/experiments/get-by-name?experiment_name=opensora-flow-tiny", timeout=30).read())
        exp_id = exp["experiment"]["experiment_id"]
        parents = post("runs/search", {"experiment_ids": [exp_id], "filter": "tags.pipeline = 'progressive-training'"})["runs"]
        parent = parents[-1]  # the first flow run: the one that ran the stages
        pid = parent["info"]["run_id"]
        children = post("runs/search", {"experiment_ids": [exp_id], "filter": f"tags.mlflow.parentRunId = '{pid}'"})["runs"]
        tagged = {next(t["value"] for t in c["data"]["tags"] if t["key"] == "stage") for c in children}
        assert {"pretrain_256", "finetune_512", "finetune_64f", "evaluate", "prepare"} <= tagged
        train = [c for c in children if {"key": "stage", "value": "pretrain_256"} in c["data"]["tags"]][0]
        assert any(m["key"] == "loss" for m in train["data"]["metrics"])
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_precision_comparison_yields_two_runs_with_loss_histories(clone, flow_run):
    import mlflow

    root, env = clone
    opensora("pipeline", "compare", "precision", "--stage", "pretrain_256", "--steps", "2", cwd=root, env=env)
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("opensora-flow-tiny")
    runs = client.search_runs([exp.experiment_id], "tags.comparison = 'precision' and tags.stage = 'pretrain_256'")
    train_runs = [r for r in runs if r.data.tags.get("pipeline") != "precision-comparison"]
    assert sorted(r.data.tags["dtype"] for r in train_runs) == ["bf16", "fp16"]
    assert len({r.data.tags["mlflow.parentRunId"] for r in train_runs}) == 1
    for r in train_runs:
        assert len(client.get_metric_history(r.info.run_id, "loss")) >= 2


def _experiments(root: Path, env: dict):
    """`dvc exp show` as a table: one row per experiment, params and metrics as columns."""
    import io

    import pandas as pd

    return pd.read_csv(io.StringIO(dvc("exp", "show", "--csv", "--no-pager", cwd=root, env=env).stdout))


@pytest.fixture(scope="module")
def committed(clone, flow_run):
    """The user commits what the pipeline recorded (dvc.lock), as `dvc exp` expects of a baseline."""
    root, env = clone
    run(["git", "add", "-A"], cwd=root, env=env)
    run(["git", "commit", "-q", "-m", "pipeline recorded"], cwd=root, env=env)
    return clone


def test_dvc_exp_run_temp_retrains_in_a_copy_and_tracks_into_the_projects_mlflow(committed):
    import mlflow

    root, env = committed
    params_before = (root / "params.yaml").read_text()
    out = dvc("exp", "run", "--temp", "-n", "fp16-temp", "-S", "train.dtype=fp16", "train@pretrain_256", cwd=root, env=env)
    ran = [line.split("'")[1] for line in out.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["train@pretrain_256"], out.stdout
    assert (root / "params.yaml").read_text() == params_before  # the workspace is untouched
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("opensora-flow-tiny")
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"  # MLflow's training view, not GenAI's
    runs = client.search_runs([exp.experiment_id], "tags.dvc_experiment = 'fp16-temp'")
    assert [r.data.tags["dtype"] for r in runs] == ["fp16"]
    assert "fp16-temp" in set(_experiments(root, env)["Experiment"].dropna())


@pytest.mark.timeout(1500)
def test_a_queued_lr_sweep_lists_both_experiments_with_their_evaluation_metrics(committed):
    """A sweep of the last stage's lr: each experiment retrains only finetune_64f and evaluates (DVC skips the
    stages whose parameters did not change). The preset gives that stage no lr of its own (it takes train.lr),
    so the key is added with Hydra's `+`."""
    root, env = committed
    key = "presets.tiny.stages.finetune_64f.lr"
    for lr in ("1e-4", "2e-5"):
        dvc("exp", "run", "--queue", "-n", f"lr-{lr}", "-S", f"+{key}={lr}", cwd=root, env=env)
    dvc("queue", "start", "-j", "1", cwd=root, env=env)

    def queue_done() -> bool:
        return not any(word in dvc("queue", "status", cwd=root, env=env).stdout for word in ("Queued", "Running"))

    wait_until(queue_done, 900, what="dvc's queue of experiments done", interval=3)
    status = dvc("queue", "status", cwd=root, env=env).stdout
    assert "Failed" not in status, status + dvc("queue", "logs", "lr-1e-4", cwd=root, env=env, check=False).stdout[-3000:]
    log = dvc("queue", "logs", "lr-1e-4", cwd=root, env=env).stdout
    ran = [line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")]
    assert ran == ["train@finetune_64f", "evaluate"], log[-3000:]
    table = _experiments(root, env).set_index("Experiment")
    for lr in ("1e-4", "2e-5"):
        row = table.loc[f"lr-{lr}"]
        assert float(row[key]) == float(lr)
        assert row["final.heldout_loss"] == row["final.heldout_loss"]  # a number, not NaN: evaluate ran in the experiment
