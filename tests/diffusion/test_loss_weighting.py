"""The MSE weighting of the training loss: Open-Sora 1.0's plain eps-MSE, its v-prediction form, or Min-SNR-gamma."""

from __future__ import annotations

import pytest
import torch

from opensora_core.diffusion import IDDPM


def _eps_model(out_eps: torch.Tensor):
    """A model that predicts the given eps (and zero variance channels) whatever its input."""
    return lambda x, t, **_: torch.cat([out_eps, torch.zeros_like(out_eps)], dim=1)


def test_eps_weighting_is_open_sora_plain_mse():
    d = IDDPM(timestep_respacing="")
    assert torch.equal(d.mse_weight(torch.tensor([0, 500, 999])), torch.ones(3, dtype=torch.float64))


def test_v_weighting_turns_the_eps_mse_into_the_v_prediction_mse():
    torch.manual_seed(0)
    d = IDDPM(timestep_respacing="", mse_weighting="v")
    x0, noise, eps_pred = torch.randn(3, 4, 2, 4, 4), torch.randn(3, 4, 2, 4, 4), torch.randn(3, 4, 2, 4, 4)
    t = torch.tensor([10, 300, 600])  # all below the weight cap
    losses = d.training_losses(_eps_model(eps_pred), x0, t, noise=noise)
    ab = d.alphas_cumprod[t].float().view(-1, 1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    x0_pred = (x_t - (1 - ab).sqrt() * eps_pred) / ab.sqrt()
    v_true = ab.sqrt() * noise - (1 - ab).sqrt() * x0
    v_pred = ab.sqrt() * eps_pred - (1 - ab).sqrt() * x0_pred
    v_mse = ((v_pred - v_true) ** 2).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(losses["loss"] - losses["vb"], v_mse, rtol=1e-4, atol=1e-6)


def test_v_weighting_is_capped_at_the_highest_noise_levels():
    d = IDDPM(timestep_respacing="", mse_weighting="v")
    w = d.mse_weight(torch.tensor([0, 999]))
    assert w[0] == pytest.approx(1.0, abs=1e-3) and w[1] == d.max_mse_weight
    with pytest.raises(ValueError, match="mse_weighting"):
        IDDPM(timestep_respacing="", mse_weighting="snr")


def test_the_v_weight_cap_is_train_max_loss_weight():
    from opensora_core.config import ConfigError, load_config
    from opensora_core.diffusion.training import training_diffusion

    d = training_diffusion(load_config(overrides=["train.loss_weighting=v", "train.max_loss_weight=20"]))
    ab = d.alphas_cumprod.double()
    w = d.mse_weight(torch.arange(1000))
    below = 1.0 / ab < 20
    assert below.any() and (~below).any()
    torch.testing.assert_close(w[below], (1.0 / ab)[below])  # 1 + 1/SNR up to the cap
    assert (w[~below] == 20).all()
    with pytest.raises(ConfigError, match=r"train\.max_loss_weight"):
        load_config(overrides=["train.max_loss_weight=0.5"])


def test_min_snr_weighting_keeps_noisy_steps_and_scales_clean_ones_down_to_gamma_over_snr():
    d = IDDPM(timestep_respacing="", mse_weighting="min_snr", min_snr_gamma=1.0)
    ab = d.alphas_cumprod.double()
    snr = ab / (1 - ab)
    t = torch.arange(1000)
    w = d.mse_weight(t)
    noisy = snr[t] <= 1.0
    assert noisy.any() and (~noisy).any()
    assert torch.allclose(w[noisy], torch.ones_like(w[noisy]))                     # min(SNR, g) / SNR = 1
    torch.testing.assert_close(w[~noisy], (1.0 / snr[t])[~noisy].to(w.dtype))     # = g / SNR with g = 1
    assert w[0] < 0.01 and w[999] == 1.0
    gamma5 = IDDPM(timestep_respacing="", mse_weighting="min_snr").mse_weight(t)   # the paper's default gamma 5
    assert (gamma5 >= w).all() and gamma5[0] == pytest.approx(5 * w[0].item())


def test_training_config_validates_the_weighting_by_name():
    from opensora_core.config import ConfigError, load_config

    cfg = load_config(overrides=["train.loss_weighting=min_snr", "train.min_snr_gamma=2"])
    assert (cfg.train.loss_weighting, cfg.train.min_snr_gamma) == ("min_snr", 2.0)
    with pytest.raises(ConfigError, match=r"train\.min_snr_gamma"):
        load_config(overrides=["train.min_snr_gamma=0"])
