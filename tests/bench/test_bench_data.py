"""`opensora bench data`: cached vs online training throughput, a table, MLflow metrics, built-in small inputs."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(120)


def test_bench_data_times_both_modes_and_logs_the_ratio_to_mlflow(tmp_path, monkeypatch):
    import mlflow
    from typer.testing import CliRunner

    from opensora_core.cli import app

    monkeypatch.delenv("OPENSORA_PARENT_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = CliRunner().invoke(app, ["bench", "data", "--stage", "pretrain_256", "--steps", "1", "--warmup", "0",
                                      "--batch-size", "2", f"run_dir={tmp_path / 'empty-run'}", f"tracking.uri={uri}"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "cached" in out and "online" in out and "cached / online samples/s:" in out
    # the run dir has nothing: the output says what was built instead (a random VAE is only fit for timing)
    assert "randomly initialised" in out and "synthetic clips" in out

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.bench = 'data'", output_format="list")
    assert len(runs) == 1
    m = runs[0].data.metrics
    assert m["cached.samples_per_s"] > 0 and m["online.samples_per_s"] > 0
    assert m["cache_speedup"] == pytest.approx(m["cached.samples_per_s"] / m["online.samples_per_s"], rel=0.02)
    assert m["online.data_ms"] > m["cached.data_ms"]  # decode + VAE + T5 per batch cost more than reading a shard


def test_online_batches_carry_what_the_cache_holds(tmp_path):
    """Both modes feed the model the same shapes: the bench compares like with like."""
    from opensora_core.config import load_config
    from opensora_core.bench.data import bench_inputs
    from opensora_core.data.cache import LatentCacheDataset, build_latent_cache
    from opensora_core.data.dataset import VideoDataset

    cfg = load_config(overrides=[f"run_dir={tmp_path / 'run'}"])
    manifest, vae, te, notes = bench_inputs(cfg, tmp_path / "work", num_clips=4)
    st = cfg.stage("pretrain_256")
    cache = LatentCacheDataset(build_latent_cache(cfg, "pretrain_256", vae=vae, text_encoder=te, manifest=manifest,
                                                  out=tmp_path / "cache", encoder_key="t", progress=False))
    item = VideoDataset(manifest, st.num_frames, st.frame_interval, st.image_size)[0]
    z = vae.encode(item["video"][None])[0]
    emb = te.encode([item["text"]])
    assert z.shape == cache[0]["latent"].shape == (4, st.num_frames, st.image_size // 4, st.image_size // 4)
    assert z.allclose(cache[0]["latent"], atol=1e-5)
    assert emb["y"][0].shape == cache[0]["y"].shape and emb["mask"][0].equal(cache[0]["mask"])
    assert len(notes) == 3
