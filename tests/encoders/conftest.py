"""Fixtures: tiny random encoders saved with save_pretrained, and synthetic frames."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory) -> Path:
    """A random AutoencoderKL (downsample 4, 4 latent channels) written with save_pretrained."""
    from opensora_core.encoders.vae_train import tiny_autoencoder

    path = tmp_path_factory.mktemp("vae") / "tiny-vae"
    tiny_autoencoder(latent_channels=4, downsample=4, width=8, seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> Path:
    from opensora_core.encoders.tiny_text import create_tiny_text_encoder

    return create_tiny_text_encoder(tmp_path_factory.mktemp("t5") / "tiny-t5", hidden_size=64, model_max_length=16, seed=0)


@pytest.fixture
def video() -> torch.Tensor:
    """[B=2, 3, T=3, 32, 32] in [-1, 1]."""
    from tests.encoders.frames import render_frames

    return render_frames(6, size=32, seed=3).unflatten(0, (2, 3)).permute(0, 2, 1, 3, 4).contiguous()
