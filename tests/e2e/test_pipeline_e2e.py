"""End to end, as a user would run it: the tool built as a wheel and installed (not editable) beside the
project, `opensora init` of a fresh project outside this checkout, a very small tiny preset. The Prefect flow
runs every real stage (training through torchrun, 2 ranks) and records them through DVC, so
`dvc status` is clean and `dvc repro` has nothing to do afterwards; a changed parameter reruns only what
depends on it; MLflow's REST API lists the parent run and the stage runs; a precision comparison yields two
training runs with loss histories. Slow (a few minutes on 2 cores): the stages are real."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from opensora_core import stages
from opensora_core.config import load_config

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

SMALL = {  # presets.tiny keys: seconds per stage instead of minutes
    "data": {"num_videos": 16},
    "vae": {"train_steps": 10, "train_batch_size": 8},
    "train": {"ckpt_every": 2, "log_every": 1},
    "stages": {"pretrain_256": {"max_steps": 3, "batch_size": 4}, "finetune_512": {"max_steps": 2, "batch_size": 4},
               "finetune_64f": {"max_steps": 2, "batch_size": 2}},
    "eval": {"num_prompts": 2, "sampling_steps": 3},
}


def _merge(base: dict, extra: dict) -> None:
    for k, v in extra.items():
        if isinstance(v, dict):
            _merge(base.setdefault(k, {}), v)
        else:
            base[k] = v


def sh(cmd: list[str], root: Path, env: dict, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {out.returncode}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def _build_wheel(tmp: Path) -> Path:
    """A wheel of the tool, built from a copy of its sources (the build writes build/ and egg-info beside them)."""
    src = tmp / "src"
    for name in ("opensora_core", "flows"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    sh([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)], tmp, dict(os.environ))
    return next((tmp / "dist").glob("opensora_flow-*.whl"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel installed non-editable into its own folder (the venv supplies the dependencies): `opensora`
    there imports the installed package, not this checkout (PYTHONPATH comes before the editable install)."""
    tmp = tmp_path_factory.mktemp("wheel")
    site = tmp / "site"
    sh([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(_build_wheel(tmp))], tmp, dict(os.environ))
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PYTHONPATH": str(site), "PATH": f"{site / 'bin'}:{bindir}:{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for var in ("OPENSORA_PARENT_RUN_ID", "PREFECT_API_URL", "OPENSORA_RUN_TAGS", "MLFLOW_TRACKING_URI", "PREFECT_HOME",
                "PREFECT_API_DATABASE_CONNECTION_URL", "OPENSORA_PROJECT"):
        env.pop(var, None)
    return site, env


@pytest.fixture(scope="module")
def clone(installed, tmp_path_factory):
    """A project made by `opensora init` in a folder outside this checkout, with small parameters, committed."""
    site, env = installed
    root = tmp_path_factory.mktemp("project") / "my-video-model"
    sh([str(site / "bin" / "opensora"), "init", str(root)], root.parent, env)
    params = yaml.safe_load((root / "params.yaml").read_text())
    _merge(params["presets"]["tiny"], SMALL)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-q", "-m", "a new opensora-flow project"], root, env)
    return root, env


def opensora(args: list[str], root: Path, env: dict, **kw) -> subprocess.CompletedProcess:
    """The installed `opensora` console script (it runs on the venv's python, importing the wheel's package)."""
    return sh([shutil.which("opensora", path=env["PATH"]), *args], root, env, **kw)


@pytest.fixture(scope="module")
def flow_run(clone):
    root, env = clone
    t0 = time.time()
    out = opensora(["pipeline", "run"], root, env)
    return out, time.time() - t0


def test_prefect_flow_runs_every_stage_and_records_them_through_dvc(clone, flow_run):
    root, env = clone
    out, seconds = flow_run
    print(f"pipeline through Prefect + DVC: {seconds:.0f} s")
    assert "recorded by DVC" in out.stdout + out.stderr
    assert (root / "runs/tiny/eval/metrics.json").exists()
    assert (root / "dvc.lock").exists()
    status = sh([sys.executable, "-m", "dvc", "status"], root, env)
    assert "up to date" in status.stdout, status.stdout
    repro = sh([sys.executable, "-m", "dvc", "repro"], root, env)
    assert "Running stage" not in repro.stdout, repro.stdout


def test_a_second_flow_run_reuses_everything(clone, flow_run):
    root, env = clone
    out = opensora(["pipeline", "run"], root, env)
    ids = set(stages.stage_ids(load_config(root / "params.yaml")))
    summary = [line.split()[:2] for line in out.stdout.splitlines() if line.startswith("  ") and line.split()[:1] and line.split()[0] in ids]
    assert len(summary) == 10 and all(outcome == "up" for _, outcome in summary), out.stdout


def test_changed_eval_parameter_reruns_only_evaluate(clone, flow_run):
    root, env = clone
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["presets"]["tiny"]["eval"]["cfg_scale"] = 2.0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    repro = sh([sys.executable, "-m", "dvc", "repro"], root, env)
    ran = [line.split("'")[1] for line in repro.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["evaluate"], repro.stdout
    metrics = sh([sys.executable, "-m", "dvc", "metrics", "show", "--json"], root, env)
    assert "final.heldout_loss" in metrics.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_rest_api_lists_the_parent_and_its_stage_runs_with_metrics(clone, flow_run):
    root, env = clone
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)

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
    opensora(["pipeline", "compare", "precision", "--stage", "pretrain_256", "--steps", "2"], root, env)
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("opensora-flow-tiny")
    runs = client.search_runs([exp.experiment_id], "tags.comparison = 'precision' and tags.stage = 'pretrain_256'")
    train_runs = [r for r in runs if r.data.tags.get("pipeline") != "precision-comparison"]
    assert sorted(r.data.tags["dtype"] for r in train_runs) == ["bf16", "fp16"]
    assert len({r.data.tags["mlflow.parentRunId"] for r in train_runs}) == 1
    for r in train_runs:
        assert len(client.get_metric_history(r.info.run_id, "loss")) >= 2


def test_dvc_experiment_with_fp16_retrains_from_the_changed_parameter(clone, flow_run):
    import mlflow

    root, env = clone
    out = sh([sys.executable, "-m", "dvc", "exp", "run", "-S", "train.dtype=fp16", "train@pretrain_256"], root, env)
    ran = [line.split("'")[1] for line in out.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["train@pretrain_256"], out.stdout
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("opensora-flow-tiny")
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'pretrain_256' and tags.dtype = 'fp16'")
    assert [r for r in runs if "comparison" not in r.data.tags]  # not the precision comparison's fp16 run
    assert yaml.safe_load((root / "params.yaml").read_text())["train"]["dtype"] == "fp16"
