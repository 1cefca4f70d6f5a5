"""The model of a training stage, built from the config: the registry model at the stage's latent size and scales.

Training, evaluation, sampling and the memory doctor all build a stage's model here, so they agree on its shape.
Weights are loaded by the caller (opensora_core.train.init for training, the checkpoint readers elsewhere).
"""

from __future__ import annotations

from torch import nn

from opensora_core.config import Config
from opensora_core.models.registry import build_model


def latent_size(cfg: Config, stage: str) -> tuple[int, int, int]:
    """Latent (T, H, W) of a stage: the VAEs here are frame-wise (no temporal compression)."""
    st = cfg.stage(stage)
    side = st.image_size // cfg.vae.downsample
    return (st.num_frames, side, side)


def build_stage_model(cfg: Config, stage: str) -> nn.Module:
    """STDiT (or any registry model) for `stage`, freshly initialised."""
    st = cfg.stage(stage)
    m = cfg.model
    grad_ckpt = st.grad_checkpoint if st.grad_checkpoint is not None else m.grad_checkpoint
    return build_model(
        m.name, input_size=latent_size(cfg, stage), in_channels=cfg.vae.latent_channels,
        caption_channels=cfg.text_encoder.hidden_size, model_max_length=cfg.text_encoder.model_max_length,
        space_scale=st.space_scale, time_scale=st.time_scale, hidden_size=m.hidden_size, depth=m.depth,
        num_heads=m.num_heads, patch_size=tuple(m.patch_size), mlp_ratio=m.mlp_ratio,
        class_dropout_prob=m.class_dropout_prob, drop_path=m.drop_path, freeze=m.freeze,
        grad_checkpoint=grad_ckpt, temporal_pos=m.temporal_pos,
    )
