"""build_vae / build_text_encoder: `pretrained: null` means the tiny models under the run directory."""

from __future__ import annotations

import pytest

from opensora_core.config import load_config
from opensora_core.encoders import build_text_encoder, build_vae, ensure_tiny_text_encoder


@pytest.fixture
def cfg(tmp_path):
    return load_config(overrides=[f"run_dir={tmp_path / 'run'}"])


def test_missing_tiny_vae_says_which_command_creates_it(cfg):
    with pytest.raises(FileNotFoundError) as err:
        build_vae(cfg)
    assert "opensora vae train" in str(err.value) and str(cfg.paths.vae_dir) in str(err.value)


def test_missing_tiny_text_encoder_says_which_command_creates_it(cfg):
    with pytest.raises(FileNotFoundError) as err:
        build_text_encoder(cfg)
    assert "opensora text-encoder init" in str(err.value) and str(cfg.paths.text_encoder_dir) in str(err.value)


def test_ensure_tiny_text_encoder_creates_it_once_and_build_loads_it(cfg):
    folder = ensure_tiny_text_encoder(cfg)
    assert folder == cfg.paths.text_encoder_dir
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_text_encoder(cfg) == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp
    enc = build_text_encoder(cfg)
    assert enc.hidden_size == cfg.text_encoder.hidden_size and enc.model_max_length == cfg.text_encoder.model_max_length
    assert enc.encode(["a red circle"])["y"].shape == (1, 1, 48, 64)


def test_build_vae_loads_the_tiny_vae_from_the_run_directory(cfg, tiny_vae_dir):
    import shutil

    shutil.copytree(tiny_vae_dir, cfg.paths.vae_dir)
    vae = build_vae(cfg)
    assert vae.downsample == cfg.vae.downsample == 4 and vae.micro_batch_size == cfg.vae.micro_batch_size


def test_build_vae_rejects_a_vae_whose_downsampling_disagrees_with_params(tmp_path, tiny_vae_dir):
    cfg = load_config(overrides=[f"run_dir={tmp_path}", f"vae.pretrained={tiny_vae_dir}", "vae.downsample=8"])
    with pytest.raises(ValueError, match="downsamples by 4"):
        build_vae(cfg)


def test_pretrained_hub_id_missing_offline_explains_the_download(tmp_path, monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    cfg = load_config(preset="opensora-1.0", overrides=[f"run_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="huggingface-cli download stabilityai/sd-vae-ft-ema --local-dir pretrained_models/sd-vae-ft-ema"):
        build_vae(cfg)
