"""IDDPM as configured by Open-Sora 1.0: 1000 linear-beta steps, eps prediction, learned-range variance,
hybrid loss (MSE + VB), respaced ancestral sampling with classifier-free guidance."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .gaussian import GaussianDiffusion
from .schedule import get_named_beta_schedule, respaced_betas, space_timesteps


class IDDPM(GaussianDiffusion):
    """Open-Sora 1.0's IDDPM scheduler (same arguments and defaults).

    `timestep_respacing` ("" / None: all `diffusion_steps`; "100"; "ddim50"; "10,20,...") or
    `num_sampling_steps` (int, exclusive with it) selects the steps this object walks; `num_timesteps`
    is then the respaced count and the model still receives original indices in [0, diffusion_steps).
    Training uses the unrespaced process (`timestep_respacing=""`).
    """

    def __init__(self, num_sampling_steps: int | None = None, timestep_respacing: str | Sequence[int] | None = None,
                 noise_schedule: str = "linear", use_kl: bool = False, sigma_small: bool = False,
                 predict_xstart: bool = False, learn_sigma: bool = True, rescale_learned_sigmas: bool = False,
                 diffusion_steps: int = 1000, cfg_scale: float = 4.0, mse_weighting: str = "eps",
                 min_snr_gamma: float = 5.0, max_mse_weight: float = 1000.0):
        if num_sampling_steps is not None:
            if timestep_respacing:
                raise ValueError("give num_sampling_steps or timestep_respacing, not both")
            timestep_respacing = str(num_sampling_steps)
        if timestep_respacing is None or timestep_respacing == "":
            timestep_respacing = [diffusion_steps]
        base_betas = get_named_beta_schedule(noise_schedule, diffusion_steps)
        kept = space_timesteps(diffusion_steps, timestep_respacing)
        loss_type = "rescaled_kl" if use_kl else "rescaled_mse" if rescale_learned_sigmas else "mse"
        var_type = "learned_range" if learn_sigma else ("fixed_small" if sigma_small else "fixed_large")
        super().__init__(respaced_betas(base_betas, kept), mean_type="start_x" if predict_xstart else "epsilon",
                         var_type=var_type, loss_type=loss_type, timestep_map=kept, mse_weighting=mse_weighting,
                         min_snr_gamma=min_snr_gamma, max_mse_weight=max_mse_weight)
        self.diffusion_steps = diffusion_steps
        self.base_alphas_cumprod = torch.cumprod(1.0 - base_betas, dim=0)
        self.cfg_scale = cfg_scale

    def sample_timesteps(self, batch: int, device: torch.device | str = "cpu",
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform timesteps `[batch]` (long) in [0, num_timesteps), as Open-Sora's training loop draws them."""
        gen_device = generator.device if generator is not None else device
        t = torch.randint(0, self.num_timesteps, (batch,), generator=generator, device=gen_device)
        return t.to(device)

    # ---- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, model: Callable, z: torch.Tensor, model_kwargs: dict | None = None,
               y_null: torch.Tensor | None = None, cfg_scale: float | None = 7.0, progress: bool = True,
               generator: torch.Generator | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Ancestral sampling over this object's (respaced) steps.

        Args:
            model: `model(x [B', C, T, H, W], t [B'] original indices, **model_kwargs) -> [B', 2C, T, H, W]`.
            z: initial noise `[B, C, T, H, W]` (x at the last step).
            model_kwargs: e.g. {"y": [B, 1, N, Cc], "mask": [B, N]}; tensors with batch dim B are given to
                the model for both halves of the guided batch, "y" paired with `y_null`.
            y_null: null caption `[B or 1, 1, N, Cc]` (or the model's `[N, Cc]` embedding); None samples
                the conditional model without guidance.
            cfg_scale: eps = uncond + cfg_scale * (cond - uncond) on the first C channels; the variance
                channels come from the conditional half. None uses the scale given at construction.
            generator: draws the per-step noise, so a seeded generator makes sampling reproducible.
            mask: optional frame mask `[B, T]`: frames where it is false keep their value from `z`
                (conditioning frames).
        Returns: x0 `[B, C, T, H, W]` (no clipping: latents are unbounded).
        """
        fn = classifier_free_guidance(model, model_kwargs, y_null, self.cfg_scale if cfg_scale is None else cfg_scale)

        def step(x, t):
            p = self.p_mean_variance(fn, x, t)
            if int(t[0]) == 0:  # the last step returns the mean: no noise at t = 0
                return p["mean"]
            noise = torch.randn(x.shape, generator=generator, device=_gen_device(generator, x), dtype=x.dtype)
            return p["mean"] + torch.exp(0.5 * p["log_variance"]) * noise.to(x.device)

        return self._loop(step, z, mask, progress, "IDDPM sampling")

    @torch.no_grad()
    def ddim_sample(self, model: Callable, z: torch.Tensor, model_kwargs: dict | None = None,
                    y_null: torch.Tensor | None = None, cfg_scale: float | None = 7.0, eta: float = 0.0,
                    progress: bool = True, generator: torch.Generator | None = None,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
        """DDIM sampling (Song et al. eq. 12) over this object's steps; eta=0 is deterministic given `z`.

        Same arguments as `sample`; the learned variance is ignored (DDIM sets its own).
        """
        fn = classifier_free_guidance(model, model_kwargs, y_null, self.cfg_scale if cfg_scale is None else cfg_scale)

        def step(x, t):
            p = self.p_mean_variance(fn, x, t)
            eps = self.predict_eps_from_xstart(x, t, p["pred_xstart"])
            ab, ab_prev = self._at(self.alphas_cumprod, t, x), self._at(self.alphas_cumprod_prev, t, x)
            sigma = eta * ((1 - ab_prev) / (1 - ab)).sqrt() * (1 - ab / ab_prev).sqrt()
            mean = p["pred_xstart"] * ab_prev.sqrt() + (1 - ab_prev - sigma**2).sqrt() * eps
            if eta == 0 or int(t[0]) == 0:
                return mean
            noise = torch.randn(x.shape, generator=generator, device=_gen_device(generator, x), dtype=x.dtype)
            return mean + sigma * noise.to(x.device)

        return self._loop(step, z, mask, progress, "DDIM sampling")

    def _loop(self, step: Callable, z: torch.Tensor, mask: torch.Tensor | None, progress: bool, desc: str):
        x = z
        keep = None if mask is None else mask.bool().to(z.device)[:, None, :, None, None]
        for i in tqdm(range(self.num_timesteps - 1, -1, -1), desc=desc, disable=not progress, leave=False):
            t = torch.full((z.shape[0],), i, device=z.device, dtype=torch.long)
            new = step(x, t).to(z.dtype)
            x = new if keep is None else torch.where(keep, new, x)
        return x


def classifier_free_guidance(model: Callable, model_kwargs: dict | None, y_null: torch.Tensor | None,
                             scale: float) -> Callable:
    """A model function `(x [B, C, ...], t [B]) -> [B, 2C, ...]` with classifier-free guidance folded in.

    The model sees one batch of 2B: conditional first, then unconditional (Open-Sora / GLIDE style).
    """
    kwargs = dict(model_kwargs or {})
    if y_null is None:
        return lambda x, t: model(x, t, **kwargs)

    def guided(x, t):
        B, C = x.shape[:2]
        y = kwargs["y"]
        null = y_null if y_null.ndim == y.ndim else y_null.view(1, 1, *y_null.shape)  # [N, Cc] -> [1, 1, N, Cc]
        null = null.to(device=y.device, dtype=y.dtype).expand(B, *null.shape[1:])
        both = {k: (torch.cat([v, v]) if torch.is_tensor(v) and v.ndim > 0 and v.shape[0] == B else v)
                for k, v in kwargs.items() if k != "y"}
        out = model(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, null]), **both)
        out = out["x"] if isinstance(out, dict) else out
        cond, uncond = out[:B], out[B:]
        eps = uncond[:, :C] + scale * (cond[:, :C] - uncond[:, :C])
        return torch.cat([eps, cond[:, C:]], dim=1)

    return guided


def _gen_device(generator: torch.Generator | None, x: torch.Tensor) -> torch.device:
    """Noise is drawn on the generator's device (a CPU generator gives the same samples on any device)."""
    return generator.device if generator is not None else x.device
