"""The progressive-training Prefect flow (ephemeral mode, no server): order, MLflow parent/child runs,
the results artifact, and retries of training tasks. Stage bodies are fakes that write their outputs."""

from __future__ import annotations

import pytest

import flows.progressive_training as pt  # PREFECT_HOME: tmp, set in conftest
from opensora_core import pipeline

pytestmark = pytest.mark.slow  # Prefect's temporary API server starts in ~20-40 s on 2 busy cores


@pytest.fixture
def in_process_stages(monkeypatch):
    """Run each task's stage in-process (so the fake bodies apply) instead of in a subprocess."""
    def run(stage_id, params, use_dvc, force, parent_run_id, on_line, run_tags=None):
        monkeypatch.setenv("OPENSORA_PARENT_RUN_ID", parent_run_id)
        result = pipeline.run_stage(stage_id, params, force=force, on_line=on_line)
        return {**result.to_dict(), "seconds": result.seconds}

    monkeypatch.setattr(pt, "run_stage_process", run)


def test_flow_runs_every_stage_in_order_under_one_mlflow_parent_and_publishes_a_results_table(
        tmp_params, fake_bodies, mlflow_db, in_process_stages):
    import mlflow
    from prefect.artifacts import Artifact

    rows = pt.progressive_training(overrides=list(tmp_params.overrides), use_dvc=False)
    cfg = tmp_params.load()
    assert [r["stage"] for r in rows] == pipeline.stage_ids(cfg)
    assert fake_bodies.calls == pipeline.stage_ids(cfg)

    client = mlflow.MlflowClient(mlflow_db)
    parent = client.get_run(rows[0]["parent_run_id"])
    assert parent.data.tags["pipeline"] == "progressive-training"
    assert parent.data.metrics["pretrain_256_final_loss"] == 0.5
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {c.data.tags["pipeline_stage"] for c in children} == {s for s in pipeline.stage_ids(cfg) if not s.startswith("train@") and s != "evaluate"}
    assert all(c.data.tags["preset"] == "tiny" and "dtype" in c.data.tags and "lr" in c.data.tags for c in children)

    artifact = Artifact.get("progressive-training")
    assert artifact is not None and "| train@finetune_64f | ran |" in artifact.data

    again = pt.progressive_training(overrides=list(tmp_params.overrides), use_dvc=False)
    assert not any(r["ran"] for r in again)
    assert len(fake_bodies.calls) == len(pipeline.stage_ids(cfg))


def test_a_failed_training_task_is_retried_and_resumes_from_its_checkpoint(tmp_params, fake_bodies, mlflow_db, in_process_stages):
    fake_bodies.fail_train_once.add("train@pretrain_256")
    rows = pt.progressive_training(overrides=list(tmp_params.overrides), use_dvc=False, train_retries=1,
                                   stages_to_run=["prepare_data", "caption", "train_vae", "cache-pretrain_256", "pretrain_256"])
    assert fake_bodies.calls.count("train@pretrain_256") == 2
    assert rows[-1]["metrics"]["final_loss"] == 0.5
    final = (tmp_params.load().paths.ckpt_dir("pretrain_256") / "final.json").read_text()
    assert '"resumed": 1' in final


def test_a_training_failure_without_retries_fails_the_flow_after_reporting(tmp_params, fake_bodies, mlflow_db, in_process_stages):
    from prefect.artifacts import Artifact

    fake_bodies.fail_train_once.add("train@pretrain_256")
    with pytest.raises(RuntimeError, match="job killed"):
        pt.progressive_training(overrides=list(tmp_params.overrides), use_dvc=False, train_retries=0)
    assert "failed: " in Artifact.get("progressive-training").data
    assert "train@finetune_512" not in fake_bodies.calls
