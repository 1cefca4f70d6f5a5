"""Helpers for the model tests: tiny sizes, random non-zero weights, random inputs."""

import torch

TINY = dict(hidden_size=32, depth=2, num_heads=4, in_channels=4, caption_channels=16, model_max_length=6)


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random non-zero values: zero-initialised outputs would hide bugs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def inputs(b=2, c=4, t=3, h=4, w=6, n=6, cc=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, t, h, w, generator=g)
    timestep = torch.tensor([3.0, 750.0][:b] + [10.0] * max(0, b - 2))
    y = torch.randn(b, 1, n, cc, generator=g)
    return x, timestep, y
