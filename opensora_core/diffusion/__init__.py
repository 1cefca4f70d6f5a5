"""Diffusion processes (kept apart from the networks: the model predicts, the diffusion owns noise, losses
and sampling). `IDDPM` is Open-Sora 1.0's scheduler."""

from .gaussian import GaussianDiffusion
from .iddpm import IDDPM, classifier_free_guidance
from .losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from .schedule import get_named_beta_schedule, respaced_betas, space_timesteps

__all__ = [
    "IDDPM",
    "GaussianDiffusion",
    "classifier_free_guidance",
    "discretized_gaussian_log_likelihood",
    "get_named_beta_schedule",
    "mean_flat",
    "normal_kl",
    "respaced_betas",
    "space_timesteps",
]
