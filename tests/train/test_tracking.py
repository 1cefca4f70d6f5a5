"""MLflow logging of a training job: step metrics, and a FAILED run with the reason when the NaN guard fires."""

from __future__ import annotations

import json

import pytest

from opensora_core.train.loop import train_stage
from opensora_core.train.precision import NonFiniteLossError

from conftest import STAGE, RandomLatents, tiny_config


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("OPENSORA_MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("OPENSORA_PARENT_RUN_ID", raising=False)
    return uri


def test_nan_guard_aborts_and_marks_the_mlflow_run_failed_with_the_reason(tmp_path, mlflow_uri):
    import mlflow

    cfg = tiny_config(tmp_path / "run", **{"train.nan_patience": 2, f"stages.{STAGE}.max_steps": 6})
    with pytest.raises(NonFiniteLossError, match="2 consecutive steps"):
        train_stage(cfg, STAGE, track=True, dataset=RandomLatents(4, nan=True))
    mlflow.set_tracking_uri(mlflow_uri)
    runs = mlflow.search_runs(experiment_names=[cfg.tracking.experiment], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FAILED"
    assert "NaN/inf for 2 consecutive steps" in run.data.tags["failure_reason"]
    assert run.data.tags["stage"] == STAGE and run.data.tags["dtype"] == "fp32"


def test_run_logs_step_metrics_and_a_resumed_job_logs_into_the_same_run(tmp_path, mlflow_uri):
    import mlflow

    cfg = tiny_config(tmp_path / "run", **{f"stages.{STAGE}.max_steps": 3})
    first = train_stage(cfg, STAGE, track=True, dataset=RandomLatents(4))
    more = tiny_config(tmp_path / "run", **{f"stages.{STAGE}.max_steps": 4})
    second = train_stage(more, STAGE, track=True, dataset=RandomLatents(4))
    assert first["mlflow_run_id"] == second["mlflow_run_id"]
    client = mlflow.MlflowClient(mlflow_uri)
    history = client.get_metric_history(first["mlflow_run_id"], "loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    for name in ("lr", "grad_norm", "loss_scale", "skipped_steps", "tokens_per_s", "samples_per_s", "memory_mb"):
        assert client.get_metric_history(first["mlflow_run_id"], name), name
    assert client.get_run(first["mlflow_run_id"]).info.status == "FINISHED"
    final = json.loads((cfg.paths.ckpt_dir(STAGE) / "final.json").read_text())
    assert final["steps"] == 4 and final["final_loss"] > 0
