"""`opensora text-encoder init` and `opensora vae train`."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from opensora_core.cli import app

from tests.encoders.frames import write_videos

runner = CliRunner()


def test_text_encoder_init_writes_the_tiny_t5_under_the_run_directory(tmp_path):
    result = runner.invoke(app, ["text-encoder", "init", f"run_dir={tmp_path}"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "encoders" / "text_encoder" / "model.safetensors").is_file()
    assert (tmp_path / "encoders" / "text_encoder" / "tokenizer.json").is_file()


def test_vae_train_writes_the_vae_and_its_psnr_metrics(tmp_path):
    write_videos(tmp_path / "videos", num=3, frames=4, size=32)
    result = runner.invoke(app, ["vae", "train", "--videos", str(tmp_path / "videos"), f"run_dir={tmp_path / 'run'}",
                                 "vae.train_steps=2", "vae.train_batch_size=2"])
    assert result.exit_code == 0, result.output
    assert "PSNR" in result.output
    assert (tmp_path / "run" / "encoders" / "vae" / "config.json").is_file()
    metrics = json.loads((tmp_path / "run" / "encoders" / "vae_metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["psnr_val"] > 0


def test_vae_train_without_videos_says_to_prepare_data_first(tmp_path):
    result = runner.invoke(app, ["vae", "train", f"run_dir={tmp_path}"])
    assert result.exit_code == 2
    assert "opensora data prepare" in result.output
