"""The tiny VAE's learning-rate schedule: hold the lr until the reconstructions reach a PSNR level, then decay."""

from __future__ import annotations

import math


class StableDecaySchedule:
    """Stable, then decay (warmup-stable-decay without the warmup): the lr factor is 1 until the decay starts,
    then a cosine to 0.1.

    Why not a fixed cosine: this recipe sits on a PSNR plateau for a number of steps that depends on the CPU's
    float rounding, then climbs; a fixed cosine can decay the lr before the run leaves the plateau (one host
    then ends several dB below another). Holding the lr until the training frames reach `decay_at_psnr` waits
    for the climb wherever it comes; the decay then adds a few dB. The decay starts at `steps - decay_steps` at
    the latest, so a run never exceeds `steps`.
    """

    def __init__(self, steps: int, decay_at_psnr: float, decay_steps: int):
        self.steps, self.decay_at_psnr, self.decay_steps = steps, decay_at_psnr, decay_steps
        self.decay_from: int | None = None if decay_steps < steps else 0
        self.reached = False  # the decay started because the PSNR reached decay_at_psnr (not the budget)

    def factor(self, step: int) -> float:
        if self.decay_from is None:
            return 1.0
        p = min(1.0, (step - self.decay_from) / max(1, self.decay_steps))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))

    def observe(self, step: int, psnr_db: float | None) -> None:
        """After `step` steps: start the decay once the PSNR reached the level, or when the budget says so."""
        if self.decay_from is not None:
            return
        self.reached = psnr_db is not None and psnr_db >= self.decay_at_psnr
        if self.reached or step >= self.steps - self.decay_steps:
            self.decay_from = step

    def done(self, step: int) -> bool:
        return step >= self.steps or (self.decay_from is not None and step >= self.decay_from + self.decay_steps)
