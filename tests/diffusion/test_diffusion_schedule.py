"""Noise schedule and respacing facts (Open-Sora 1.0 / improved-diffusion)."""

import pytest
import torch

from opensora_core.diffusion import IDDPM, get_named_beta_schedule, respaced_betas, space_timesteps


def test_linear_schedule_runs_from_1e_4_to_0_02_over_1000_steps_in_float64():
    betas = get_named_beta_schedule("linear", 1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(betas.diff(), torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))


def test_linear_schedule_scales_with_step_count():
    betas = get_named_beta_schedule("linear", 500)
    assert betas[0].item() == pytest.approx(2e-4) and betas[-1].item() == pytest.approx(0.04)


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="unknown noise schedule"):
        get_named_beta_schedule("sigmoid", 10)


def test_respacing_to_100_keeps_first_and_last_step_evenly_spaced():
    kept = space_timesteps(1000, "100")
    assert len(kept) == 100 and kept[0] == 0 and kept[-1] == 999
    gaps = torch.tensor(kept).diff()
    assert set(gaps.tolist()) <= {10, 11}


def test_ddim_respacing_uses_an_integer_stride():
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    with pytest.raises(ValueError):
        space_timesteps(10, "ddim7")


def test_sectioned_respacing_spaces_each_section_separately():
    kept = space_timesteps(100, "10,2")
    assert kept[:10] == [0, 5, 11, 16, 22, 27, 33, 38, 44, 49]  # stride 49/9, rounded and kept[10:] == [50, 99]
    with pytest.raises(ValueError):
        space_timesteps(10, "20")


def test_respaced_betas_reproduce_original_alphas_cumprod_at_kept_steps():
    betas = get_named_beta_schedule("linear", 1000)
    kept = space_timesteps(1000, "100")
    alpha_bar = torch.cumprod(1 - betas, 0)
    new_alpha_bar = torch.cumprod(1 - respaced_betas(betas, kept), 0)
    assert torch.allclose(new_alpha_bar, alpha_bar[kept], rtol=1e-12, atol=0)


@pytest.mark.parametrize("kwargs", [{"timestep_respacing": "100"}, {"num_sampling_steps": 100}])
def test_iddpm_respacing_maps_steps_to_original_indices(kwargs):
    d = IDDPM(**kwargs)
    assert d.num_timesteps == 100
    assert d.timestep_map.tolist() == space_timesteps(1000, "100")
    assert torch.allclose(d.alphas_cumprod, d.base_alphas_cumprod[d.timestep_map], rtol=1e-12, atol=0)


def test_unrespaced_iddpm_has_1000_identity_steps():
    d = IDDPM(timestep_respacing="")
    assert d.num_timesteps == 1000 and d.timestep_map.tolist() == list(range(1000))
    assert d.loss_type == "mse" and d.var_type == "learned_range" and d.mean_type == "epsilon"


def test_num_sampling_steps_and_respacing_are_exclusive():
    with pytest.raises(ValueError):
        IDDPM(num_sampling_steps=10, timestep_respacing="20")


def test_uniform_timestep_sampler_is_seeded_and_in_range():
    d = IDDPM()
    a = d.sample_timesteps(4096, "cpu", generator=torch.Generator().manual_seed(0))
    b = d.sample_timesteps(4096, "cpu", generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.dtype == torch.long
    assert a.min() >= 0 and a.max() < 1000
    # Uniform: each quarter of [0, 1000) gets about a quarter of the draws.
    counts = torch.bincount(a // 250, minlength=4).float() / 4096
    assert torch.allclose(counts, torch.full((4,), 0.25), atol=0.04)
