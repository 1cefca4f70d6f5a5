"""Closed-form facts of the forward process, the model posterior and the hybrid loss."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from opensora_core.diffusion import IDDPM, discretized_gaussian_log_likelihood, mean_flat

D = IDDPM()  # 1000 steps, linear betas, learned-range variance, MSE + VB


def _const_model(eps, v):
    """A 'model' returning fixed eps `[B, C, ...]` and variance value v (broadcast) as `[B, 2C, ...]`."""
    return lambda x, t, **kw: torch.cat([eps, torch.full_like(eps, v) if isinstance(v, float) else v], dim=1)


def test_q_sample_has_the_forward_process_mean_and_variance():
    x0 = torch.tensor([1.5, -0.5], dtype=torch.float64).repeat(20000, 1)  # [N, 2]
    gen = torch.Generator().manual_seed(0)
    for step in (0, 300, 999):
        t = torch.full((x0.shape[0],), step)
        xt = D.q_sample(x0, t, torch.randn(x0.shape, generator=gen, dtype=torch.float64))
        ab = D.alphas_cumprod[step]
        assert torch.allclose(xt.mean(0), ab.sqrt() * x0[0], atol=0.03)
        assert torch.allclose(xt.var(0), (1 - ab).expand(2), rtol=0.05)
        mean, var, log_var = D.q_mean_variance(x0[:1], t[:1])
        assert torch.allclose(mean, ab.sqrt() * x0[:1]) and torch.allclose(var, 1 - ab)
        assert torch.allclose(log_var, torch.log(1 - ab))


@pytest.mark.parametrize("step", [1, 10, 500, 999])
def test_posterior_matches_bayes_formula(step):
    """q(x_{t-1}|x_t,x_0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x_0): precision-weighted combination of two Gaussians."""
    x0 = torch.randn(3, 4, dtype=torch.float64)
    xt = torch.randn(3, 4, dtype=torch.float64)
    t = torch.full((3,), step)
    beta = D.betas[step]
    ab_prev = D.alphas_cumprod[step - 1]
    prec = 1 / (1 - ab_prev) + (1 - beta) / beta
    want_var = 1 / prec
    want_mean = want_var * (ab_prev.sqrt() * x0 / (1 - ab_prev) + (1 - beta).sqrt() * xt / beta)
    mean, var, log_var = D.q_posterior_mean_variance(x0, xt, t)
    assert torch.allclose(mean, want_mean, rtol=1e-9, atol=1e-12)
    assert torch.allclose(var, want_var.expand_as(var), rtol=1e-9)
    assert torch.allclose(log_var, want_var.log().expand_as(var), rtol=1e-9)


def test_posterior_at_t0_is_x0_with_variance_clipped_to_t1():
    x0, xt = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    mean, var, log_var = D.q_posterior_mean_variance(x0, xt, torch.zeros(2, dtype=torch.long))
    assert torch.allclose(mean, x0) and (var == 0).all()
    assert torch.allclose(log_var, D.posterior_variance[1].log().expand_as(log_var))


@pytest.mark.parametrize("v, table", [(1.0, "beta"), (-1.0, "posterior"), (0.0, "geometric mean")])
def test_learned_range_interpolates_log_variance_between_posterior_and_beta(v, table):
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    t = torch.tensor([0, 1, 500, 999])
    out = D.p_mean_variance(_const_model(torch.zeros_like(x), v), x, t)
    log_beta = D.betas[t].log().view(-1, 1, 1)
    log_post = D.posterior_log_variance_clipped[t].view(-1, 1, 1)
    want = {"beta": log_beta, "posterior": log_post, "geometric mean": (log_beta + log_post) / 2}[table]
    assert torch.allclose(out["log_variance"], want.expand_as(x), rtol=1e-12)
    assert torch.allclose(out["variance"], want.exp().expand_as(x), rtol=1e-12)


def test_p_mean_is_posterior_mean_at_predicted_x0():
    x0, noise = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    t = torch.tensor([5, 700])
    xt = D.q_sample(x0, t, noise)
    out = D.p_mean_variance(_const_model(noise, 0.0), xt, t)  # the true noise recovers x0 exactly
    assert torch.allclose(out["pred_xstart"], x0, atol=1e-10)
    assert torch.allclose(out["mean"], D.q_posterior_mean_variance(x0, xt, t)[0], atol=1e-10)


def test_vb_term_is_the_gaussian_kl_in_bits_per_dim():
    gen = torch.Generator().manual_seed(1)
    x0, noise, eps, v = (torch.randn(3, 2, 2, 3, 3, generator=gen, dtype=torch.float64) for _ in range(4))
    v = v.tanh()
    t = torch.tensor([1, 250, 999])
    xt = D.q_sample(x0, t, noise)
    model_out = torch.cat([eps, v], 1)
    got = D.vb_terms_bpd(model_out, x0, xt, t)

    # Hand computation with torch.distributions: q from the Bayes formula, p from eps and v.
    ab, ab_prev, beta = D.alphas_cumprod[t], D.alphas_cumprod[t - 1], D.betas[t]
    b = lambda s: s.view(-1, 1, 1, 1, 1)  # noqa: E731
    q_var = b(beta * (1 - ab_prev) / (1 - ab))
    q_mean = b(ab_prev.sqrt() * beta / (1 - ab)) * x0 + b((1 - ab_prev) * (1 - beta).sqrt() / (1 - ab)) * xt
    x0_hat = (xt - b((1 - ab).sqrt()) * eps) / b(ab.sqrt())
    p_mean = b(ab_prev.sqrt() * beta / (1 - ab)) * x0_hat + b((1 - ab_prev) * (1 - beta).sqrt() / (1 - ab)) * xt
    frac = (v + 1) / 2
    p_var = torch.exp(frac * b(beta.log()) + (1 - frac) * q_var.log())
    kl = kl_divergence(Normal(q_mean, q_var.sqrt().expand_as(x0)), Normal(p_mean, p_var.sqrt()))
    want = kl.flatten(1).mean(1) / math.log(2)
    assert torch.allclose(got, want, rtol=1e-8)
    assert (got > 0).all()


def test_decoder_nll_at_t0_is_minus_log_bin_probability_in_bits():
    gen = torch.Generator().manual_seed(2)
    x0 = (torch.randint(0, 256, (2, 2, 1, 2, 2), generator=gen) / 127.5 - 1).double()
    x0[0, 0, 0, 0, 0], x0[0, 0, 0, 0, 1] = -1.0, 1.0  # both edge bins
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    t = torch.zeros(2, dtype=torch.long)
    xt = D.q_sample(x0, t, noise)
    model_out = torch.cat([noise, torch.zeros_like(x0)], 1)
    got = D.vb_terms_bpd(model_out, x0, xt, t)
    assert torch.isfinite(got).all() and (got > 0).all()

    p = D.p_mean_variance(None, xt, t, model_output=model_out)
    dist = Normal(p["mean"], p["variance"].sqrt())
    hi = torch.where(x0 > 0.999, torch.ones_like(x0), dist.cdf(x0 + 1 / 255))
    lo = torch.where(x0 < -0.999, torch.zeros_like(x0), dist.cdf(x0 - 1 / 255))
    want = mean_flat(-torch.log(hi - lo)) / math.log(2)
    assert torch.allclose(got, want, rtol=1e-6)


def test_discretized_likelihood_stays_finite_far_from_the_mean():
    x = torch.tensor([-1.0, 0.0, 1.0])
    ll = discretized_gaussian_log_likelihood(x, torch.tensor([5.0, 40.0, -5.0]), torch.log(torch.tensor(0.01)))
    assert torch.isfinite(ll).all() and (ll < -10).all()


def test_model_predicting_the_true_noise_has_zero_mse():
    x0 = torch.randn(3, 4, 2, 4, 4)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 400, 999])
    seen = {}

    def model(x, t_model, y=None):
        seen["t"], seen["y"] = t_model, y
        return torch.cat([noise, torch.zeros_like(noise)], 1)

    losses = D.training_losses(model, x0, t, model_kwargs={"y": "caption"}, noise=noise)
    assert set(losses) == {"loss", "mse", "vb"} and all(v.shape == (3,) for v in losses.values())
    assert torch.all(losses["mse"] == 0)
    assert torch.allclose(losses["loss"], losses["vb"])
    assert torch.equal(seen["t"], t) and seen["y"] == "caption"


def test_mse_is_the_mean_squared_noise_error_per_sample():
    x0, noise, eps = torch.randn(2, 4, 2, 3, 3), torch.randn(2, 4, 2, 3, 3), torch.randn(2, 4, 2, 3, 3)
    losses = D.training_losses(_const_model(eps, 0.0), x0, torch.tensor([3, 600]), noise=noise)
    assert torch.allclose(losses["mse"], ((eps - noise) ** 2).mean(dim=(1, 2, 3, 4)))


def test_vb_term_trains_only_the_variance_channels():
    x0, noise = torch.randn(2, 4, 2, 3, 3), torch.randn(2, 4, 2, 3, 3)
    out = torch.randn(2, 8, 2, 3, 3, requires_grad=True)
    losses = D.training_losses(lambda x, t: out, x0, torch.tensor([0, 500]), noise=noise)
    (grad_vb,) = torch.autograd.grad(losses["vb"].sum(), out, retain_graph=True)
    assert torch.all(grad_vb[:, :4] == 0) and grad_vb[:, 4:].abs().sum() > 0
    (grad_mse,) = torch.autograd.grad(losses["mse"].sum(), out)
    assert torch.all(grad_mse[:, 4:] == 0) and grad_mse[:, :4].abs().sum() > 0


def test_kl_and_rescaled_losses_scale_the_vb_term():
    x0, noise = torch.randn(2, 4, 1, 2, 2), torch.randn(2, 4, 1, 2, 2)
    model, t = _const_model(torch.randn_like(x0), 0.3), torch.tensor([7, 70])
    vb = D.training_losses(model, x0, t, noise=noise)["vb"]
    kl = IDDPM(use_kl=True).training_losses(model, x0, t, noise=noise)
    assert torch.allclose(kl["loss"], 1000 * vb)
    # With 500 steps, RESCALED_MSE multiplies the VB term by 500/1000.
    d500 = IDDPM(diffusion_steps=500, rescale_learned_sigmas=True)
    plain500 = IDDPM(diffusion_steps=500)
    assert torch.allclose(d500.training_losses(model, x0, t, noise=noise)["vb"],
                          0.5 * plain500.training_losses(model, x0, t, noise=noise)["vb"])


def test_frame_mask_keeps_conditioning_frames_clean_and_out_of_the_loss():
    x0, noise = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    mask = torch.tensor([[True, False, True], [False, True, True]])
    seen = {}

    def model(x, t):
        seen["x"] = x
        eps = noise.clone()
        eps[:, :, 1] += 10.0  # wrong only on frame 1
        return torch.cat([eps, torch.zeros_like(eps)], 1)

    losses = D.training_losses(model, x0, torch.tensor([900, 900]), noise=noise, mask=mask)
    assert torch.equal(seen["x"][0, :, 1], x0[0, :, 1]) and torch.equal(seen["x"][1, :, 0], x0[1, :, 0])
    assert losses["mse"][0] == 0 and losses["mse"][1] == pytest.approx(50.0)  # 100 on 1 of 2 frames


def test_bf16_latents_and_model_give_float32_losses_and_a_bf16_model_input():
    x0 = torch.randn(2, 4, 2, 3, 3).bfloat16()
    seen = {}

    def model(x, t):
        seen["dtype"] = x.dtype
        return {"x": torch.zeros(2, 8, 2, 3, 3, dtype=torch.bfloat16)}  # dict outputs are unwrapped

    losses = D.training_losses(model, x0, torch.tensor([0, 999]))
    assert seen["dtype"] == torch.bfloat16
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in losses.values())
