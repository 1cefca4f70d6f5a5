"""Held-out diffusion loss at fixed timestep buckets: the same noise and timesteps for every model, so two runs
(fp16 vs bf16, two learning rates, step 0 vs trained) compare exactly, bucket by bucket."""

from __future__ import annotations

import torch

DEFAULT_BUCKETS = 4


@torch.no_grad()
def heldout_loss(model, diffusion, latents: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None,
                 seed: int = 1234, buckets: int = DEFAULT_BUCKETS, batch_size: int = 16) -> dict[str, float]:
    """Mean `diffusion.training_losses(...)["loss"]` of held-out latents in each timestep bucket.

    Args:
        model: the denoiser (put in eval mode here; its mode is restored afterwards).
        diffusion: an unrespaced IDDPM (`num_timesteps` = 1000 for Open-Sora).
        latents: `[N, C, T, h, w]` clean held-out latents; y: `[N, 1, L, Cc]` captions; mask: `[N, L]` or None.
        seed: fixes, per sample and bucket, the timestep (uniform inside the bucket) and the noise.
        buckets: equal-width buckets of [0, num_timesteps).
    Returns: {"heldout_loss": mean over buckets, "heldout_loss_b{k}": mean of bucket k} (k = 0 is the least noisy).
    """
    n = latents.shape[0]
    g = torch.Generator().manual_seed(seed)
    edges = torch.linspace(0, diffusion.num_timesteps, buckets + 1).long()
    # draw everything up front, in a fixed order, so batch_size never changes what a sample gets
    ts = [edges[k] + (torch.rand(n, generator=g) * (edges[k + 1] - edges[k]).float()).long() for k in range(buckets)]
    noises = [torch.randn(latents.shape, generator=g) for _ in range(buckets)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    try:
        for k in range(buckets):
            losses = []
            for i in range(0, n, batch_size):
                sl = slice(i, i + batch_size)
                kwargs = {"y": y[sl].to(device), "mask": None if mask is None else mask[sl].to(device)}
                loss = diffusion.training_losses(model, latents[sl].to(device).float(), ts[k][sl].to(device),
                                                 model_kwargs=kwargs, noise=noises[k][sl].to(device))["loss"]
                losses.append(loss.float().cpu())
            out[f"heldout_loss_b{k}"] = float(torch.cat(losses).mean())
    finally:
        model.train(was_training)
    out["heldout_loss"] = sum(out[f"heldout_loss_b{k}"] for k in range(buckets)) / buckets
    return out
