"""The MSE weighting of the training loss: Open-Sora 1.0's plain eps-MSE, or its v-prediction form."""

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
