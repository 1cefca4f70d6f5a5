"""Noise schedules and timestep respacing (facts from improved-diffusion / DiT / Open-Sora 1.0).

Tables are float64 torch tensors: the products of 1000 numbers close to 1 lose precision in float32,
and every consumer casts the looked-up value to the working dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def get_named_beta_schedule(name: str, num_timesteps: int) -> torch.Tensor:
    """Betas `[num_timesteps]` (float64) for a named schedule.

    "linear": Ho et al.'s 1e-4..0.02 over 1000 steps, scaled by 1000/num_timesteps so that other step
    counts describe the same continuous process (Open-Sora 1.0 uses "linear" with 1000 steps).
    "squaredcos_cap_v2": the cosine schedule of Nichol & Dhariwal, betas capped at 0.999.
    """
    if name == "linear":
        scale = 1000.0 / num_timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)
    if name == "squaredcos_cap_v2":
        s = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        alpha_bar = torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown noise schedule {name!r}; expected 'linear' or 'squaredcos_cap_v2'")


def space_timesteps(num_timesteps: int, section_counts: str | int | Sequence[int]) -> list[int]:
    """Sorted original timesteps kept when respacing a `num_timesteps` process.

    `section_counts` is "ddimN" (a fixed integer stride giving exactly N steps), or a count / comma-separated
    counts: the process is cut into equal sections and each section keeps that many evenly spaced steps
    (first and last of the section included). "100" over 1000 steps keeps 0, 10, 20, ..., 999.
    """
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = int(section_counts[len("ddim"):])
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))
            raise ValueError(f"cannot get exactly {desired} steps with an integer stride over {num_timesteps}")
        counts = [int(c) for c in section_counts.split(",")]
    elif isinstance(section_counts, int):
        counts = [section_counts]
    else:
        counts = [int(c) for c in section_counts]

    size_per, extra = divmod(num_timesteps, len(counts))
    kept: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if not 0 < count <= size:
            raise ValueError(f"cannot keep {count} steps out of a section of {size}")
        stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
        # Accumulate the stride (not i * stride) so the kept set is identical to improved-diffusion's,
        # whose rounding of float sums is what trained models were sampled with.
        pos = 0.0
        for _ in range(count):
            kept.append(start + round(pos))
            pos += stride
        start += size
    return sorted(set(kept))


def respaced_betas(betas: torch.Tensor, kept: Sequence[int]) -> torch.Tensor:
    """Betas `[len(kept)]` of the process that visits only `kept` steps with the same alphas_cumprod there.

    new_beta_i = 1 - alpha_bar[kept_i] / alpha_bar[kept_{i-1}] (alpha_bar before the first step is 1).
    """
    alpha_bar = torch.cumprod(1.0 - betas.to(torch.float64), dim=0)[list(kept)]
    prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    return 1.0 - alpha_bar / prev
