"""The report names every run asked for, plots their curves, and logs itself to MLflow."""

from __future__ import annotations

import pytest


@pytest.fixture()
def tracked_cfg(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("OPENSORA_PARENT_RUN_ID", raising=False)
    from opensora_core.config import load_config

    return load_config(overrides=[f"run_dir={tmp_path / 'run'}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                                  "tracking.experiment=report-test"])


def _fake_training_runs(cfg, tmp_path):
    """Three training runs (fp16 / bf16 at lr 1e-4, bf16 at 2e-5) with loss curves; one has a sample grid."""
    import mlflow
    import numpy as np

    from opensora_core.eval.sample import write_grid
    from opensora_core.tracking import configure

    configure(cfg)
    ids = []
    for i, (dtype, lr) in enumerate((("fp16", "1e-4"), ("bf16", "1e-4"), ("bf16", "2e-5"))):
        with mlflow.start_run(run_name=f"pretrain_256-{dtype}-{lr}", tags={"stage": "pretrain_256", "dtype": dtype, "lr": lr}) as run:
            for step in range(0, 50, 10):
                mlflow.log_metric("loss", 1.0 / (1 + step * (i + 1) / 10), step=step)
            if i == 0:
                d = tmp_path / "grid"
                d.mkdir()
                write_grid(np.zeros((3, 8, 8, 3), np.uint8), d / "000_prompt.png")
                mlflow.log_artifacts(str(d), artifact_path="samples")
            ids.append(run.info.run_id)
    return ids


def test_report_contains_every_run_asked_for_with_curves_and_samples(tracked_cfg, tmp_path):
    from opensora_core.eval.report import build_report

    ids = _fake_training_runs(tracked_cfg, tmp_path)
    path = build_report(tracked_cfg, run_ids=ids[:2], out_dir=tmp_path / "rep")
    text = path.read_text()
    assert "pretrain_256-fp16-1e-4" in text and "pretrain_256-bf16-1e-4" in text
    assert "pretrain_256-bf16-2e-5" not in text
    assert (tmp_path / "rep" / "loss.png").stat().st_size > 1000
    assert "000_prompt.png" in text and list((tmp_path / "rep" / "samples").rglob("000_prompt.png"))

    import mlflow

    runs = mlflow.search_runs(experiment_names=["report-test"], filter_string="tags.stage = 'report'", output_format="list")
    assert len(runs) == 1
    names = [a.path for a in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id, "report")]
    assert "report/report.html" in names


def test_report_of_an_experiment_lists_all_its_runs(tracked_cfg, tmp_path):
    from opensora_core.eval.report import build_report

    _fake_training_runs(tracked_cfg, tmp_path)
    text = build_report(tracked_cfg, experiment="report-test", out_dir=tmp_path / "rep", track=False).read_text()
    for name in ("pretrain_256-fp16-1e-4", "pretrain_256-bf16-1e-4", "pretrain_256-bf16-2e-5"):
        assert name in text


def test_summary_markdown_shows_before_and_after_training():
    from opensora_core.eval.report import summary_markdown

    md = summary_markdown({"step0.color_acc": 0.15, "step0.motion_acc": 0.1, "final.color_acc": 0.9,
                           "final.color_chance": 0.2, "final.motion_acc": 0.6, "final.motion_chance": 0.25,
                           "reference.color_acc": 1.0, "pretrain_256.color_acc": 0.5})
    assert "| step0 | 0.15 |" in md and "| final | 0.9 |" in md
    assert md.index("step0") < md.index("pretrain_256") < md.index("| final")
    assert "0.15 -> 0.90" in md
