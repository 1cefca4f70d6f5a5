"""MLflow logging of a training job: step metrics, and a FAILED run with the reason when the NaN guard fires."""

from __future__ import annotations

import json

import pytest

from opensora_core.train.loop import train_stage
from opensora_core.train.precision import NonFiniteLossError

from tests.kit.tiny_training import STAGE, RandomLatents, tiny_config


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


def test_the_run_and_every_checkpoint_name_the_clips_that_trained_them(tmp_path, mlflow_uri):
    import mlflow
    import pandas as pd

    from opensora_core.data.manifest import write_manifest
    from opensora_core.checkpoint import load_meta

    cfg = tiny_config(tmp_path / "run", **{f"stages.{STAGE}.max_steps": 2, "train.ckpt_every": 1})
    clips = pd.DataFrame({"path": [f"videos/c{i}.mp4" for i in range(4)], "text": ["a", "b", "c", "held out"],
                          "num_frames": 8, "fps": 8.0, "height": 16, "width": 16, "start": [0.0, 1.0, 0.0, 0.0],
                          "end": [1.0, 2.0, 1.0, 1.0], "sha256": ["s0", "s0", "s1", "s2"],
                          "split": ["train", "train", "train", "val"]})
    write_manifest(clips, cfg.paths.manifest)
    out = train_stage(cfg, STAGE, track=True, dataset=RandomLatents(4))
    listed = pd.read_csv(cfg.paths.ckpt_dir(STAGE) / "dataset.csv")
    assert list(listed["path"]) == ["videos/c0.mp4", "videos/c1.mp4", "videos/c2.mp4"]  # the train split, with cuts
    assert list(listed["start"]) == [0.0, 1.0, 0.0] and list(listed["sha256"]) == ["s0", "s0", "s1"]
    meta = load_meta(cfg.paths.ckpt_dir(STAGE) / "step_0000001")
    digest = meta.extra["dataset"]["digest"]
    assert meta.extra["dataset"]["num_clips"] == 3 and load_meta(cfg.paths.ckpt_dir(STAGE) / "step_0000002").extra["dataset"]["digest"] == digest
    run = mlflow.MlflowClient(mlflow_uri).get_run(out["mlflow_run_id"])
    (logged,) = run.inputs.dataset_inputs
    assert logged.dataset.digest == digest and logged.dataset.name == f"tiny-{STAGE}"
    clips.loc[1, "text"] = "b, recaptioned"  # a changed caption is another dataset
    write_manifest(clips, cfg.paths.manifest)
    from opensora_core.data import lineage

    assert lineage.digest(lineage.training_clips(cfg, STAGE)) != digest
