"""Sampler behaviour checked against closed-form denoisers (no learning needed).

For data x0 ~ N(mu, s^2) the optimal noise prediction at original step t is known in closed form:
E[eps | x_t] = sqrt(1 - ab_t) (x_t - sqrt(ab_t) mu) / (ab_t s^2 + 1 - ab_t); s = 0 is a point mass at mu.
"""

import pytest
import torch
from torch import nn

from opensora_core.diffusion import IDDPM, classifier_free_guidance, space_timesteps

SHAPE = (2, 4, 2, 3, 3)  # [B, C, T, H, W]


class OracleDenoiser(nn.Module):
    """Predicts the exact noise for per-sample Gaussian data N(mu, std^2); mu is read from the caption y.

    Knows only the original 1000-step linear schedule, so it is right only if given original indices.
    """

    def __init__(self, std: float = 0.0, v: float = -1.0):
        super().__init__()
        betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
        self.register_buffer("alpha_bar", torch.cumprod(1 - betas, 0))
        self.std, self.v = std, v
        self.calls = []

    def forward(self, x, timestep, y, mask=None):
        self.calls.append({"t": timestep.clone(), "batch": x.shape[0], "mask": mask})
        ab = self.alpha_bar[timestep].view(-1, 1, 1, 1, 1)
        mu = y[:, 0, 0, 0].double().view(-1, 1, 1, 1, 1)  # the caption's first number is the data mean
        eps = (1 - ab).sqrt() * (x.double() - ab.sqrt() * mu) / (ab * self.std**2 + 1 - ab)
        return torch.cat([eps.to(x.dtype), torch.full_like(x, self.v)], dim=1)


def caption(*means):
    """Captions `[B, 1, N=3, Cc=2]` whose first entry is each sample's data mean, plus a text mask."""
    y = torch.zeros(len(means), 1, 3, 2)
    y[:, 0, 0, 0] = torch.tensor(means)
    return {"y": y, "mask": torch.ones(len(means), 3, dtype=torch.long)}


def noise(seed=0, shape=SHAPE):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("respacing", ["", "50"])
def test_sampler_returns_the_point_of_a_point_mass_distribution(respacing):
    d = IDDPM(timestep_respacing=respacing)
    x0 = d.sample(OracleDenoiser(), noise(), caption(0.7, -1.3), progress=False,
                  generator=torch.Generator().manual_seed(1))
    assert torch.allclose(x0[0], torch.full_like(x0[0], 0.7), atol=1e-4)
    assert torch.allclose(x0[1], torch.full_like(x0[1], -1.3), atol=1e-4)


@pytest.mark.parametrize("v", [-1.0, 1.0])
def test_full_ancestral_sampler_reproduces_a_gaussian_data_distribution(v):
    """With all 1000 steps both variance extremes (posterior variance, beta) are accurate."""
    x0 = IDDPM().sample(OracleDenoiser(std=0.3, v=v), noise(3, (1, 1, 1, 64, 64)), caption(0.5), progress=False,
                        generator=torch.Generator().manual_seed(4))
    assert x0.mean().item() == pytest.approx(0.5, abs=0.015)
    assert x0.std().item() == pytest.approx(0.3, abs=0.01)


def test_respaced_variance_extremes_bracket_the_true_spread():
    """With 100 steps the posterior variance under-disperses and beta over-disperses (why IDDPM learns v)."""
    d = IDDPM(timestep_respacing="100")
    std = {v: d.sample(OracleDenoiser(std=0.3, v=v), noise(3, (1, 1, 1, 64, 64)), caption(0.5), progress=False,
                       generator=torch.Generator().manual_seed(4)).std().item() for v in (-1.0, 1.0)}
    assert 0.26 < std[-1.0] < 0.3 < std[1.0] < 0.34


def test_ddim_converges_to_the_data_distribution_as_steps_grow():
    z = noise(3, (1, 1, 1, 64, 64))
    err = {n: abs(IDDPM(timestep_respacing=f"ddim{n}").ddim_sample(OracleDenoiser(std=0.3), z, caption(0.5),
                                                                     progress=False).std().item() - 0.3)
           for n in (50, 250)}
    assert err[250] < 0.005 and err[250] < err[50] / 3


def test_model_given_respaced_indices_would_miss_the_distribution():
    """Control for the test above: the oracle is only right at original indices."""
    d = IDDPM(timestep_respacing="100")
    wrong = OracleDenoiser(std=0.3)
    d.timestep_map = torch.arange(100)  # what a sampler that forgot the mapping would pass
    x0 = d.sample(wrong, noise(3, (1, 1, 1, 64, 64)), caption(0.5), progress=False,
                  generator=torch.Generator().manual_seed(4))
    assert abs(x0.std().item() - 0.3) > 0.05 or abs(x0.mean().item() - 0.5) > 0.05


def test_respaced_sampler_calls_the_model_with_original_timesteps():
    model = OracleDenoiser()
    IDDPM(timestep_respacing="100").sample(model, noise(), caption(0.0, 0.0), progress=False)
    seen = [c["t"].tolist() for c in model.calls]
    assert seen == [[t, t] for t in reversed(space_timesteps(1000, "100"))]
    assert seen[0] == [999, 999] and seen[-1] == [0, 0]


def test_sampling_is_deterministic_under_a_seed_and_changes_with_it():
    d = IDDPM(timestep_respacing="20")
    run = lambda seed: d.sample(OracleDenoiser(std=0.5), noise(), caption(0.1, 0.2), progress=False,  # noqa: E731
                                generator=torch.Generator().manual_seed(seed))
    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c, atol=1e-3)


def test_ddim_with_eta_zero_is_deterministic_given_the_initial_noise():
    d = IDDPM(timestep_respacing="ddim25")
    run = lambda seed: d.ddim_sample(OracleDenoiser(std=0.5), noise(), caption(0.1, 0.2), progress=False,  # noqa: E731
                                     generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(1), run(2))


def test_cfg_scale_one_equals_the_conditional_only_sampler():
    d = IDDPM(timestep_respacing="25")
    y_null = torch.zeros(1, 1, 3, 2)
    y_null[..., 0, 0] = -2.0  # the unconditional model believes in another mean
    kw = dict(progress=False)
    guided = d.sample(OracleDenoiser(std=0.4), noise(), caption(0.5, 1.0), y_null=y_null, cfg_scale=1.0,
                      generator=torch.Generator().manual_seed(3), **kw)
    cond_only = d.sample(OracleDenoiser(std=0.4), noise(), caption(0.5, 1.0), y_null=None,
                         generator=torch.Generator().manual_seed(3), **kw)
    assert torch.allclose(guided, cond_only, atol=1e-5)


def test_guidance_extrapolates_from_the_unconditional_to_the_conditional_point():
    """Point masses at mu_c (caption) and mu_u (null caption): guided eps is exactly the eps of the point
    mu_u + s (mu_c - mu_u), so the sampler lands there."""
    y_null = torch.zeros(1, 1, 3, 2)  # mu_u = 0
    model = OracleDenoiser()
    x0 = IDDPM(timestep_respacing="50").sample(model, noise(), caption(0.25, -0.5), y_null=y_null,
                                               cfg_scale=4.0, progress=False)
    assert torch.allclose(x0[0], torch.full_like(x0[0], 1.0), atol=1e-4)
    assert torch.allclose(x0[1], torch.full_like(x0[1], -2.0), atol=1e-4)
    # One guided batch of 2B per step; the text mask is given to both halves.
    assert all(c["batch"] == 4 and c["mask"].shape == (4, 3) for c in model.calls)


def test_guidance_applies_to_eps_channels_and_takes_variance_from_the_conditional_half():
    def model(x, t, y):
        eps = y.view(-1, 1, 1, 1, 1).expand_as(x)  # cond half: y=1, uncond half: y=0
        var = 10 * y.view(-1, 1, 1, 1, 1).expand_as(x) - 0.5
        return torch.cat([eps, var], 1)

    fn = classifier_free_guidance(model, {"y": torch.ones(2, 1, 1, 1)}, torch.zeros(1, 1, 1, 1), scale=3.0)
    out = fn(torch.zeros(2, 2, 1, 1, 1), torch.zeros(2, dtype=torch.long))
    assert out.shape == (2, 4, 1, 1, 1)
    assert torch.all(out[:, :2] == 3.0)  # 0 + 3 * (1 - 0)
    assert torch.all(out[:, 2:] == 9.5)  # conditional variance channels


def test_frame_mask_keeps_conditioning_frames_from_the_initial_latents():
    z = noise()
    frame_mask = torch.tensor([[False, True], [True, True]])  # sample 0: frame 0 given
    x0 = IDDPM(timestep_respacing="10").sample(OracleDenoiser(std=0.5), z, caption(3.0, 3.0), progress=False,
                                               mask=frame_mask)
    assert torch.equal(x0[0, :, 0], z[0, :, 0])
    assert not torch.allclose(x0[0, :, 1], z[0, :, 1])


def test_sampler_with_progress_bar_returns_latents_of_the_input_shape():
    x0 = IDDPM(num_sampling_steps=5).sample(OracleDenoiser(), noise(), caption(0.0, 1.0), progress=True)
    assert x0.shape == SHAPE and x0.dtype == torch.float32 and torch.isfinite(x0).all()


def test_null_caption_may_be_the_models_raw_embedding():
    y_null = torch.zeros(3, 2)  # STDiT.y_embedder.y_embedding is [N, Cc]
    x0 = IDDPM(timestep_respacing="50").sample(OracleDenoiser(), noise(), caption(0.25, -0.5), y_null=y_null,
                                               cfg_scale=4.0, progress=False)
    assert torch.allclose(x0[0], torch.full_like(x0[0], 1.0), atol=1e-4)


def test_one_step_sampler_is_finite():
    x0 = IDDPM(num_sampling_steps=1).sample(OracleDenoiser(std=0.5), noise(), caption(0.0, 1.0), progress=False)
    assert torch.isfinite(x0).all()
