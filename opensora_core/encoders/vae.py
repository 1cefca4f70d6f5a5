"""Frame-wise video VAE: diffusers' AutoencoderKL applied to every frame of a `[B, 3, T, H, W]` video.

Open-Sora 1.0 encodes videos with the image VAE `stabilityai/sd-vae-ft-ema` frame by frame (T folded into
the batch) and multiplies latents by the SD scaling factor 0.18215 (Open-Sora v1.0 `VideoAutoencoderKL`).
The tiny preset uses the same class with a small AutoencoderKL trained by `opensora vae train`.

Heavy or optional imports (diffusers) happen inside the functions that need them, so importing this module (the
CLI, the stage processes, the Dask workers do) does not load them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from opensora_core.encoders.weights import load_pretrained

SD_SCALING_FACTOR = 0.18215  # Stable Diffusion's latent scale, used unchanged by Open-Sora 1.0


class VideoAutoencoderKL(nn.Module):
    """Encode/decode videos `[B, 3, T, H, W]` in [-1, 1] <-> scaled latents `[B, C_lat, T, H/ds, W/ds]`.

    Args:
        vae: a diffusers `AutoencoderKL`.
        scaling_factor: latents are multiplied by this after encoding and divided before decoding.
        micro_batch_size: frames per forward pass of the 2-D VAE (bounds memory; results do not depend on it).
        sample_posterior: draw latents from the posterior instead of taking its mean (mode).
    """

    def __init__(self, vae: nn.Module, scaling_factor: float = SD_SCALING_FACTOR, micro_batch_size: int | None = 16,
                 sample_posterior: bool = False):
        super().__init__()
        self.module = vae
        self.scaling_factor = float(scaling_factor)
        self.micro_batch_size = micro_batch_size
        self.sample_posterior = sample_posterior

    @classmethod
    def from_pretrained(cls, id_or_path: str | Path, scaling_factor: float = SD_SCALING_FACTOR,
                        micro_batch_size: int | None = 16, sample_posterior: bool = False,
                        param: str = "vae.pretrained", **kwargs) -> VideoAutoencoderKL:
        """Load a hub id (`stabilityai/sd-vae-ft-ema`) or a `save_pretrained` folder; frozen, in eval mode.

        Raises FileNotFoundError saying what to download and where to put it when the weights are missing.
        """
        from diffusers import AutoencoderKL
        from diffusers.utils import is_accelerate_available

        # diffusers asks for its low-memory loader by default, which needs `accelerate`; without it diffusers falls
        # back to the plain loader and warns "install accelerate" on every load. Ask for the loader we have.
        kwargs.setdefault("low_cpu_mem_usage", is_accelerate_available())
        vae = load_pretrained(lambda p: AutoencoderKL.from_pretrained(p, **kwargs), id_or_path, "VAE", param)
        vae.requires_grad_(False).eval()
        return cls(vae, scaling_factor=scaling_factor, micro_batch_size=micro_batch_size, sample_posterior=sample_posterior)

    # --- facts about the latent space ---
    @property
    def downsample(self) -> int:
        """Spatial factor between pixels and latents: one 2x downsampling per encoder block but the last."""
        return 2 ** (len(self.module.config.block_out_channels) - 1)

    @property
    def out_channels(self) -> int:
        return int(self.module.config.latent_channels)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def get_latent_size(self, input_size: tuple[int, int, int]) -> tuple[int, int, int]:
        """`(T, H, W)` of a video -> `(T, H/ds, W/ds)` of its latents (frames are encoded independently)."""
        t, h, w = input_size
        ds = self.downsample
        if h % ds or w % ds:
            raise ValueError(f"frame size {h}x{w} is not divisible by the VAE downsampling factor {ds}")
        return (t, h // ds, w // ds)

    # --- frame-wise encode/decode ---
    def _chunks(self, frames: torch.Tensor):
        n = self.micro_batch_size or frames.shape[0]
        return frames.split(max(1, n), dim=0)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Videos `[B, 3, T, H, W]` in [-1, 1] -> scaled latents `[B, C_lat, T, H/ds, W/ds]`.

        Deterministic (posterior mean) unless `sample_posterior` was set; `generator` seeds the sampling.
        """
        if x.ndim != 5:
            raise ValueError(f"expected a video batch [B, 3, T, H, W], got shape {tuple(x.shape)}")
        b, _, t = x.shape[:3]
        frames = x.permute(0, 2, 1, 3, 4).flatten(0, 1).to(device=self.device, dtype=self.dtype)  # [B*T, 3, H, W]
        out = []
        for chunk in self._chunks(frames):
            dist = self.module.encode(chunk).latent_dist
            out.append(dist.sample(generator) if self.sample_posterior else dist.mode())
        z = torch.cat(out) * self.scaling_factor
        return z.unflatten(0, (b, t)).permute(0, 2, 1, 3, 4).contiguous()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents `[B, C_lat, T, h, w]` -> videos `[B, 3, T, h*ds, w*ds]` (roughly in [-1, 1]; not clamped)."""
        if z.ndim != 5:
            raise ValueError(f"expected latents [B, C, T, h, w], got shape {tuple(z.shape)}")
        b, _, t = z.shape[:3]
        frames = z.permute(0, 2, 1, 3, 4).flatten(0, 1).to(device=self.device, dtype=self.dtype) / self.scaling_factor
        x = torch.cat([self.module.decode(chunk).sample for chunk in self._chunks(frames)])
        return x.unflatten(0, (b, t)).permute(0, 2, 1, 3, 4).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction `decode(encode(x))`, `[B, 3, T, H, W]`."""
        return self.decode(self.encode(x))
