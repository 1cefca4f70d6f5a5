"""Elementwise likelihood terms of the variational bound, and the per-sample mean used for every loss."""

from __future__ import annotations

import torch

# Pixel data in [-1, 1] quantised to 256 levels: a bin is 2/255 wide.
_HALF_BIN = 1.0 / 255.0


def mean_flat(x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over all non-batch dims: `[B, ...] -> [B]`.

    With `frame_mask` `[B, T]` (bool/0-1, for `x` `[B, C, T, H, W]`) only frames where it is true count.
    """
    if frame_mask is None:
        return x.mean(dim=tuple(range(1, x.ndim)))
    if x.ndim != 5 or frame_mask.shape != (x.shape[0], x.shape[2]):
        raise ValueError(f"frame_mask {tuple(frame_mask.shape)} does not match [B, T] of x {tuple(x.shape)}")
    w = frame_mask.to(x.dtype)[:, None, :, None, None]
    per_frame = x.shape[1] * x.shape[3] * x.shape[4]  # C * H * W elements in one frame
    return (x * w).sum(dim=(1, 2, 3, 4)) / (frame_mask.to(x.dtype).sum(dim=1) * per_frame)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats (arguments broadcast)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(bin of x) under N(mean, exp(log_scale)^2), elementwise, for x in [-1, 1] on a 256-level grid.

    The two edge bins extend to -inf / +inf. Uses the exact normal CDF (log_ndtr in the tails) where
    improved-diffusion uses a tanh approximation; the values agree to ~1e-3 and ours never hit log(0).
    """
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (x - mean + _HALF_BIN)
    lower = inv_std * (x - mean - _HALF_BIN)
    log_cdf_upper = torch.special.log_ndtr(upper)  # edge bin (-inf, x + half]
    log_sf_lower = torch.special.log_ndtr(-lower)  # edge bin [x - half, +inf)
    mass = (torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12)
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, torch.log(mass)))
