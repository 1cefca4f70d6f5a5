"""The diffusion process of training, from the config: the one place its loss weighting is read."""

from __future__ import annotations

from opensora_core.config import Config
from opensora_core.diffusion.iddpm import IDDPM


def training_diffusion(cfg: Config) -> IDDPM:
    """The diffusion process a training step draws timesteps and losses from (IDDPM with train.loss_weighting)."""
    tc = cfg.train
    return IDDPM(timestep_respacing="", mse_weighting=tc.loss_weighting, min_snr_gamma=tc.min_snr_gamma,
                 max_mse_weight=tc.max_loss_weight)
