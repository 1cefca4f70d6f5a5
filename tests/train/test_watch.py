"""Watching training: rank 0 samples fixed held-out prompts with the EMA weights every `train.sample_every` steps
and logs adherence, held-out loss, the pass's cost and a gif grid to MLflow; and the per-step FLOP/MFU metrics."""

from __future__ import annotations

import csv

import pytest
import torch

from opensora_core.config import ConfigError
from opensora_core.eval.watch import TrainingWatcher
from opensora_core.train.loop import train_stage

from tests.kit.tiny_training import STAGE, RandomLatents, tiny_config


def watched_config(run_dir, **extra):
    """The tiny training config with a tiny VAE and text encoder on disk (what the encoders stage leaves)."""
    from opensora_core.encoders import ensure_tiny_text_encoder
    from opensora_core.encoders.vae_train import tiny_autoencoder

    cfg = tiny_config(run_dir, **{"train.sample_every": 3, "train.sample_prompts": 4, "train.sample_steps": 2,
                                  "eval.batch_size": 4, **extra})
    if not (cfg.paths.vae_dir / "config.json").is_file():
        tiny_autoencoder(latent_channels=cfg.vae.latent_channels, downsample=cfg.vae.downsample, width=8).save_pretrained(cfg.paths.vae_dir)
    ensure_tiny_text_encoder(cfg)
    return cfg


def write_heldout_manifest(cfg, tmp_path):
    """Four real synthetic clips as the manifest's val split: prompts with ground truth and real clips."""
    from opensora_core.data.manifest import read_manifest, write_manifest
    from opensora_core.data.synthetic import Vocabulary, generate_synthetic

    vocab = Vocabulary.from_config(cfg.data.synthetic)  # the tiny preset's: one object per clip
    df = read_manifest(generate_synthetic(tmp_path / "syn", num=4, frames=16, size=16, seed=3, workers=1,
                                          progress=False, vocab=vocab))
    write_manifest(df.assign(split="val"), cfg.paths.manifest)


def test_watched_training_logs_adherence_heldout_loss_cost_and_a_gif_per_pass(tmp_path, mlflow_uri):
    import mlflow
    from PIL import Image

    cfg = watched_config(tmp_path / "run", **{f"stages.{STAGE}.frame_interval": 4, "train.peak_tflops": 0.001})
    write_heldout_manifest(cfg, tmp_path)
    out = train_stage(cfg, STAGE, track=True, dataset=RandomLatents(8), watcher=TrainingWatcher.for_stage)

    client = mlflow.MlflowClient(mlflow_uri)
    run_id = out["mlflow_run_id"]
    for name in ("color_acc", "direction_acc", "motion_acc", "adherence_n", "seconds", "fd_randproj",
                 "heldout_loss", "heldout_loss_b0", "heldout_loss_b3"):
        history = client.get_metric_history(run_id, f"watch/{name}")
        assert sorted(m.step for m in history) == [0, 3, 6], name  # step 0, every 3 steps, the last step
    assert all(m.value > 0 for m in client.get_metric_history(run_id, "watch/seconds"))
    assert {m.value for m in client.get_metric_history(run_id, "watch/adherence_n")} == {4.0}
    gifs = sorted(f.path for f in client.list_artifacts(run_id, "watch"))
    assert gifs == ["watch/step_0000000.gif", "watch/step_0000003.gif", "watch/step_0000006.gif"]
    gif = Image.open(cfg.paths.ckpt_dir(STAGE) / "watch" / "step_0000006.gif")
    assert gif.n_frames == 2 and gif.size == (2 * 64 + 2, 2 * 64 + 2)  # 2 frames; 4 samples in a 2x2 grid
    with open(cfg.paths.ckpt_dir(STAGE) / "watch_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 3, 6] and all(float(r["heldout_loss_b1"]) > 0 for r in rows)
    with open(cfg.paths.ckpt_dir(STAGE) / "train_log.csv") as f:
        first = next(csv.DictReader(f))
    assert "color_acc" not in first  # train_log.csv keeps its own columns
    # MFU is the achieved FLOP rate over the given peak (one process here)
    assert float(first["mfu"]) == pytest.approx(float(first["tflops"]) / 0.001)
    assert float(first["memory_mb"]) > 0
    assert len(client.get_metric_history(run_id, "mfu")) == 6


def test_watching_changes_no_weight_and_a_resumed_job_repeats_no_pass(tmp_path):
    from opensora_core.checkpoint import load_ema_weights, load_model_state, read_latest

    plain = tiny_config(tmp_path / "plain", **{f"stages.{STAGE}.max_steps": 4})
    train_stage(plain, STAGE, track=False, dataset=RandomLatents(8))
    for steps in (2, 4):  # watched (bundled prompts: no manifest), stopped at step 2 and resumed
        watched = watched_config(tmp_path / "watched", **{"train.sample_every": 2, f"stages.{STAGE}.max_steps": steps})
        train_stage(watched, STAGE, track=False, dataset=RandomLatents(8), watcher=TrainingWatcher.for_stage)
    with open(watched.paths.ckpt_dir(STAGE) / "watch_log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [0, 2, 4]
    a, b = read_latest(plain.paths.ckpt_dir(STAGE)), read_latest(watched.paths.ckpt_dir(STAGE))
    for load in (load_model_state, load_ema_weights):
        sa, sb = load(a), load(b)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_sample_every_without_prompts_fails_before_the_first_step_naming_the_fields(tmp_path):
    cfg = watched_config(tmp_path / "run", **{"eval.prompts": "no/such/prompts.txt"})
    with pytest.raises(ValueError, match=r"train.sample_every=3 samples held-out prompts.*eval.prompts"):
        train_stage(cfg, STAGE, track=False, dataset=RandomLatents(8), watcher=TrainingWatcher.for_stage)
    assert not list(cfg.paths.ckpt_dir(STAGE).glob("step_*"))


def test_sample_every_without_a_vae_says_what_to_build(tmp_path):
    cfg = tiny_config(tmp_path / "run", **{"train.sample_every": 3})
    with pytest.raises(FileNotFoundError, match=r"train.sample_every=3 decodes samples.*opensora vae train"):
        train_stage(cfg, STAGE, track=False, dataset=RandomLatents(8), watcher=TrainingWatcher.for_stage)


@pytest.mark.parametrize("key,value", [("train.sample_every", -1), ("train.sample_prompts", 0),
                                       ("train.sample_steps", 0), ("train.peak_tflops", 0)])
def test_bad_watch_or_peak_settings_are_config_errors_naming_the_field(tmp_path, key, value):
    with pytest.raises(ConfigError, match=key):
        tiny_config(tmp_path / "run", **{key: value})


def test_flop_count_is_the_models_own_else_six_params_per_token():
    from opensora_core.models import build_model
    from opensora_core.train.metrics import Throughput, flops_per_sample, peak_tflops

    stdit = build_model("STDiT-tiny", input_size=(2, 4, 4), in_channels=4, caption_channels=16, model_max_length=8,
                        hidden_size=32, depth=1, num_heads=2)
    assert flops_per_sample(stdit, (2, 4, 4)) == stdit.flops_per_sample((2, 4, 4))
    linear = torch.nn.Linear(10, 10)
    assert flops_per_sample(linear, None) == 6 * 110
    assert peak_tflops(torch.device("cpu"), "fp32") is None and peak_tflops(torch.device("cpu"), "fp32", 2.0) == 2.0
    t = Throughput(linear, None, global_batch=4, world_size=2, peak=1e-9)
    assert t.metrics(2.0) == pytest.approx({"tflops": 6 * 110 * 4 / 2.0 / 1e12, "mfu": 6 * 110 * 4 / 2.0 / 2e3})
    assert "mfu" not in Throughput(linear, None, 4, 2, None).metrics(1.0)
