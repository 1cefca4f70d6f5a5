"""`opensora bench model`: prints the DiT vs STDiT table and logs it to MLflow."""

import json

import pytest
from typer.testing import CliRunner

from opensora_core.bench import model as benchmark


@pytest.fixture
def small_shapes(monkeypatch):
    monkeypatch.setattr(benchmark, "CPU_SHAPES", (benchmark.BenchShape("16x256", (2, 4, 4), 2, False),
                                                  benchmark.BenchShape("64x512", (4, 4, 4), 1, True)))


def test_benchmark_rows_report_throughput_for_both_models(small_shapes):
    rows = benchmark.run_model_benchmark("cpu", steps=1, warmup=1, caption_channels=16, model_max_length=8)
    assert [(r["model"], r["shape"]) for r in rows] == [
        ("DiT-tiny", "16x256"), ("STDiT-tiny", "16x256"), ("DiT-tiny", "64x512"), ("STDiT-tiny", "64x512")]
    for r in rows:
        assert r["samples/s"] > 0 and r["tokens/s"] == pytest.approx(r["samples/s"] * r["tokens"], rel=1e-2)
    assert set(benchmark.speedups(rows)) == {"16x256", "64x512"}


@pytest.mark.slow
def test_bench_model_command_prints_table_and_logs_to_mlflow(small_shapes, tmp_path, monkeypatch):
    from opensora_core.cli import app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = CliRunner().invoke(app, ["bench", "model", "--steps", "1", "--warmup", "1",
                                      "text_encoder.hidden_size=16", "text_encoder.model_max_length=8"])
    assert result.exit_code == 0, result.output
    assert "STDiT-tiny" in result.output and "samples/s" in result.output

    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.bench = 'model'")
    assert len(runs) == 1
    assert runs.iloc[0]["metrics.STDiT-tiny.64x512.samples_per_s"] > 0
    artifact = mlflow.artifacts.download_artifacts(run_id=runs.iloc[0]["run_id"], artifact_path="bench_model.json")
    assert len(json.load(open(artifact))["data"]) == 4
