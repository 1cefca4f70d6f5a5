"""Gaussian diffusion: forward process, model posterior, variational bound and training losses.

Facts follow improved-diffusion (Nichol & Dhariwal 2021) as used by DiT and Open-Sora 1.0; the code is ours.
A process may be a respacing of a longer one: `timestep_map[i]` is the original index of step i, and the
model is always called with original indices, so one network serves every respacing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl

MEAN_TYPES = ("epsilon", "start_x")
VAR_TYPES = ("learned_range", "fixed_large", "fixed_small")
MSE_WEIGHTINGS = ("eps", "v", "min_snr")
LOSS_TYPES = ("mse", "rescaled_mse", "kl", "rescaled_kl")


class GaussianDiffusion:
    """Diffusion with `len(betas)` steps.

    Args:
        betas: `[N]` noise schedule (any float dtype; stored as float64).
        mean_type: what the first C output channels are: "epsilon" (noise) or "start_x" (x0).
        var_type: "learned_range" (last C channels v in [-1, 1] interpolate log beta and log posterior
            variance), "fixed_large" (beta) or "fixed_small" (posterior variance).
        loss_type: "mse" (+ the VB term when the variance is learned), "rescaled_mse" (VB term x N/1000),
            "kl" (VB only) or "rescaled_kl" (VB x N).
        timestep_map: original step index for each of the N steps (identity when None).
    """

    def __init__(self, betas: torch.Tensor, mean_type: str = "epsilon", var_type: str = "learned_range",
                 loss_type: str = "mse", timestep_map: Sequence[int] | None = None, mse_weighting: str = "eps",
                 max_mse_weight: float = 1000.0, min_snr_gamma: float = 5.0):
        if mean_type not in MEAN_TYPES or var_type not in VAR_TYPES or loss_type not in LOSS_TYPES:
            raise ValueError(f"unsupported diffusion types: {mean_type!r}, {var_type!r}, {loss_type!r}")
        if mse_weighting not in MSE_WEIGHTINGS:
            raise ValueError(f"mse_weighting must be one of {MSE_WEIGHTINGS}, got {mse_weighting!r}")
        self.mse_weighting, self.max_mse_weight, self.min_snr_gamma = mse_weighting, max_mse_weight, min_snr_gamma
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D tensor with values in (0, 1]")
        self.mean_type, self.var_type, self.loss_type = mean_type, var_type, loss_type
        self.num_timesteps = len(betas)
        self.timestep_map = torch.tensor(
            list(range(self.num_timesteps)) if timestep_map is None else list(timestep_map), dtype=torch.long)

        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.alphas_cumprod_prev = torch.cat([betas.new_ones(1), self.alphas_cumprod[:-1]])
        ab, ab_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        self.sqrt_alphas_cumprod = ab.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - ab).sqrt()
        self.log_one_minus_alphas_cumprod = torch.log1p(-ab)
        self.sqrt_recip_alphas_cumprod = ab.rsqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / ab - 1.0).sqrt()
        # q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, beta_t (1 - ab_{t-1}) / (1 - ab_t))
        self.posterior_variance = betas * (1.0 - ab_prev) / (1.0 - ab)
        # The posterior variance is 0 at t=0; its log is clipped to the t=1 value (as improved-diffusion),
        # or to log beta_0 for a one-step process, which has no t=1.
        pv = self.posterior_variance
        self.posterior_log_variance_clipped = torch.log(torch.cat([pv[1:2], pv[1:]])) if len(pv) > 1 else betas.log()
        self.posterior_mean_coef1 = betas * ab_prev.sqrt() / (1.0 - ab)
        self.posterior_mean_coef2 = (1.0 - ab_prev) * (1.0 - betas).sqrt() / (1.0 - ab)

    # ---- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _at(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """table[t] broadcast to `like` `[B, ...]`, in at least float32 (half-precision inputs are promoted)."""
        dtype = torch.promote_types(like.dtype, torch.float32)
        return table.to(t.device)[t].to(dtype).view(-1, *([1] * (like.ndim - 1)))

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Original-process indices `[B]` for respaced indices `t` `[B]` (what the model is given)."""
        return self.timestep_map.to(t.device)[t]

    def _run_model(self, model: Callable, x: torch.Tensor, t: torch.Tensor, model_kwargs: dict | None):
        out = model(x, self.model_timesteps(t), **(model_kwargs or {}))
        return out["x"] if isinstance(out, dict) else out

    # ---- forward process -----------------------------------------------------------------------
    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor):
        """q(x_t | x_0): (mean, variance, log_variance), each broadcastable to `x_start` `[B, ...]`."""
        mean = self._at(self.sqrt_alphas_cumprod, t, x_start) * x_start
        return (mean, self._at(1.0 - self.alphas_cumprod, t, x_start),
                self._at(self.log_one_minus_alphas_cumprod, t, x_start))

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) noise, `[B, ...]` (t=0 is one step of noise)."""
        noise = torch.randn_like(x_start) if noise is None else noise
        return (self._at(self.sqrt_alphas_cumprod, t, x_start) * x_start
                + self._at(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise)

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """q(x_{t-1} | x_t, x_0): (mean `[B, ...]`, variance, log_variance_clipped)."""
        mean = (self._at(self.posterior_mean_coef1, t, x_t) * x_start
                + self._at(self.posterior_mean_coef2, t, x_t) * x_t)
        return (mean, self._at(self.posterior_variance, t, x_t),
                self._at(self.posterior_log_variance_clipped, t, x_t))

    def predict_xstart_from_eps(self, x_t, t, eps):
        """x_0 = (x_t - sqrt(1 - ab_t) eps) / sqrt(ab_t), `[B, ...]`."""
        a, b = self._at(self.sqrt_recip_alphas_cumprod, t, x_t), self._at(self.sqrt_recipm1_alphas_cumprod, t, x_t)
        return a * x_t - b * eps

    def predict_eps_from_xstart(self, x_t, t, x_start):
        """The inverse of `predict_xstart_from_eps`."""
        a, b = self._at(self.sqrt_recip_alphas_cumprod, t, x_t), self._at(self.sqrt_recipm1_alphas_cumprod, t, x_t)
        return (a * x_t - x_start) / b

    # ---- reverse process -----------------------------------------------------------------------
    def p_mean_variance(self, model: Callable, x: torch.Tensor, t: torch.Tensor, model_kwargs: dict | None = None,
                        clip_denoised: bool = False, model_output: torch.Tensor | None = None) -> dict:
        """p(x_{t-1} | x_t) from the model.

        Args:
            model: called as `model(x, original_t, **model_kwargs)` -> `[B, 2C, ...]` (learned variance)
                or `[B, C, ...]`; ignored when `model_output` is given.
            x: `[B, C, ...]` at respaced step `t` `[B]`.
            clip_denoised: clamp the x0 prediction to [-1, 1]; off by default because latents are not
                bounded (Open-Sora samples with it off).
        Returns: {"mean", "variance", "log_variance", "pred_xstart"}, each `[B, C, ...]`.
        """
        out = self._run_model(model, x, t, model_kwargs) if model_output is None else model_output
        C = x.shape[1]
        if self.var_type == "learned_range":
            if out.shape[1] != 2 * C:
                raise ValueError(f"learned variance needs {2 * C} output channels, model gave {out.shape[1]}")
            out, v = out[:, :C], out[:, C:]
            min_log = self._at(self.posterior_log_variance_clipped, t, x)
            max_log = self._at(self.betas.log(), t, x)
            frac = (v + 1) / 2  # v in [-1, 1] -> [posterior variance, beta]
            log_variance = frac * max_log + (1 - frac) * min_log
        else:
            if self.var_type == "fixed_large":
                # beta_0 is replaced by the t=1 posterior variance for a better decoder likelihood.
                var = torch.cat([self.posterior_variance[1:2], self.betas[1:]])
                table = var.log()
            else:
                table = self.posterior_log_variance_clipped
            log_variance = self._at(table, t, x).expand_as(x)
            out = out[:, :C]
        pred_xstart = out if self.mean_type == "start_x" else self.predict_xstart_from_eps(x, t, out)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "variance": log_variance.exp(), "log_variance": log_variance, "pred_xstart": pred_xstart}

    # ---- losses --------------------------------------------------------------------------------
    def vb_terms_bpd(self, model_output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                     frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One term of the variational bound `[B]`, in bits per dim.

        KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0, -log p(x_0 | x_1) (discretised Gaussian
        decoder) at t = 0; `model_output` is the raw `[B, 2C, ...]` model output at (x_t, t).
        """
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        p = self.p_mean_variance(None, x_t, t, model_output=model_output)
        kl = mean_flat(normal_kl(true_mean, true_log_var, p["mean"], p["log_variance"]), frame_mask)
        nll = -discretized_gaussian_log_likelihood(x_start, p["mean"], 0.5 * p["log_variance"])
        nll = mean_flat(nll, frame_mask)
        return torch.where(t == 0, nll, kl) / math.log(2.0)

    def training_losses(self, model: Callable, x_start: torch.Tensor, t: torch.Tensor, model_kwargs: dict | None = None,
                        noise: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> dict:
        """Losses for one timestep per sample.

        Args:
            x_start: clean latents `[B, C, ...]`; t: respaced steps `[B]`; noise: `[B, C, ...]` (drawn if None).
            mask: optional frame mask `[B, T]`: frames where it is false stay clean in x_t and are left out
                of the loss (video conditioning, as in later Open-Sora versions).
        Returns: {"loss": [B], "mse": [B], "vb": [B]} ("mse" absent for the KL losses; "vb" zeros when
            the variance is fixed). The VB term sees the eps prediction detached, so it only trains the
            variance channels (improved-diffusion's hybrid loss).
        """
        noise = torch.randn_like(x_start) if noise is None else noise
        x_t = self.q_sample(x_start, t, noise)
        if mask is not None:
            x_t = torch.where(mask.bool()[:, None, :, None, None], x_t, x_start)
        x_t = x_t.to(x_start.dtype)
        out = self._run_model(model, x_t, t, model_kwargs).float()
        C = x_start.shape[1]
        x0, xt = x_start.float(), x_t.float()

        if self.loss_type in ("kl", "rescaled_kl"):
            vb = self.vb_terms_bpd(out, x0, xt, t, mask)
            scale = self.num_timesteps if self.loss_type == "rescaled_kl" else 1.0
            return {"loss": vb * scale, "vb": vb}

        terms = {}
        if self.var_type == "learned_range":
            frozen = torch.cat([out[:, :C].detach(), out[:, C:]], dim=1)
            vb = self.vb_terms_bpd(frozen, x0, xt, t, mask)
            if self.loss_type == "rescaled_mse":
                vb = vb * (self.num_timesteps / 1000.0)  # keeps the VB term's weight independent of N
        else:
            vb = torch.zeros(x_start.shape[0], device=x_start.device)
        target = noise.float() if self.mean_type == "epsilon" else x0
        terms["mse"] = mean_flat((target - out[:, :C]) ** 2, mask)
        terms["vb"] = vb
        terms["loss"] = terms["mse"] * self.mse_weight(t).to(terms["mse"]) + vb
        return terms

    def mse_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample weight `[B]` of the MSE term at steps `t`.

        "eps": 1 (Open-Sora 1.0 / improved-diffusion). "v": 1 / alpha_bar_t, capped at `max_mse_weight`, which
        turns the eps-MSE into the v-prediction loss (= the x0-MSE at high noise). "min_snr": Min-SNR-gamma (Hang
        et al. 2023), min(SNR, gamma) / SNR with SNR = alpha_bar / (1 - alpha_bar): 1 at the noisy steps, gamma /
        SNR at the clean ones. Under the plain eps-MSE the nearly clean steps dominate; a tiny model trained for
        minutes then learns the caption's colour but not where it puts the object (measured: see params.yaml).
        """
        if self.mse_weighting == "eps" or self.mean_type != "epsilon":
            return torch.ones(t.shape, dtype=torch.float64, device=t.device)
        ab = self.alphas_cumprod.to(t.device)[t]
        if self.mse_weighting == "min_snr":
            return (self.min_snr_gamma * (1.0 - ab) / ab).clamp(max=1.0)
        return (1.0 / ab).clamp(max=self.max_mse_weight)
