"""Build the model of a stage and choose its starting weights (progressive training, Open-Sora 1.0).

pretrain_256 starts from a PixArt-alpha image checkpoint (`cfg.model.init_from`) or from scratch; every later
stage starts from the previous stage's final checkpoint (EMA weights unless `train.init_from_ema=false`).
Position embeddings are never carried over: the model is built at the new stage's latent size with the
stage's space_scale / time_scale, so its `pos_embed` / `pos_embed_temporal` buffers are recomputed.
`stages.<name>.init_from` overrides: "previous", "scratch", a stage directory / checkpoint directory of
ours, or a PixArt / Open-Sora `.pth`/`.safetensors` file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from opensora_core import project
from opensora_core.config import Config
from opensora_core.train.checkpoint import META, load_ema_weights

log = logging.getLogger(__name__)

# buffers that depend on the stage's size and scales: recomputed, never loaded
POSITION_KEYS = ("pos_embed", "pos_embed_temporal")


def latent_size(cfg: Config, stage: str) -> tuple[int, int, int]:
    """Latent (T, H, W) of a stage: the VAEs here are frame-wise (no temporal compression)."""
    st = cfg.stage(stage)
    side = st.image_size // cfg.vae.downsample
    return (st.num_frames, side, side)


def training_diffusion(cfg: Config):
    """The diffusion process a training step draws timesteps and losses from (IDDPM with train.loss_weighting)."""
    from opensora_core.diffusion import IDDPM

    tc = cfg.train
    return IDDPM(timestep_respacing="", mse_weighting=tc.loss_weighting, min_snr_gamma=tc.min_snr_gamma,
                 max_mse_weight=tc.max_loss_weight)


def build_stage_model(cfg: Config, stage: str) -> nn.Module:
    """STDiT (or any registry model) for `stage`, freshly initialised (weights are loaded by `init_weights`)."""
    from opensora_core.models import build_model

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


def load_carried_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load a previous stage's weights except the position embeddings; returns the keys left as built."""
    state = {k: v for k, v in state.items() if k not in POSITION_KEYS}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in POSITION_KEYS]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint does not fit {type(model).__name__}: missing {missing[:5]} "
                           f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")
    return list(POSITION_KEYS)


def init_source(cfg: Config, stage: str) -> str:
    """What `stage` starts from: "scratch", "stage:<name>", or a path."""
    choice = cfg.stage(stage).init_from
    if choice == "scratch":
        return "scratch"
    if choice in (None, "previous"):
        prev = cfg.previous_stage(stage)
        if prev is not None:
            return f"stage:{prev}"
        return project.resolve_local_or_id(cfg.project_dir, cfg.model.init_from) if cfg.model.init_from else "scratch"
    return project.resolve_local_or_id(cfg.project_dir, choice)


def init_weights(model: nn.Module, cfg: Config, stage: str) -> str:
    """Load the starting weights of `stage` into `model`; returns a description for the logs/MLflow."""
    source = init_source(cfg, stage)
    if source == "scratch":
        return "scratch"
    if source.startswith("stage:"):
        prev = source.removeprefix("stage:")
        state = load_ema_weights(cfg.paths.ckpt_dir(prev), use_ema=cfg.train.init_from_ema)
        load_carried_weights(model, state)
        return f"{prev} ({'ema' if cfg.train.init_from_ema else 'model'} weights)"
    path = Path(source)
    if path.is_dir() and ((path / META).is_file() or (path / "latest").is_file()):
        load_carried_weights(model, load_ema_weights(path, use_ema=cfg.train.init_from_ema))
        return str(path)
    from opensora_core.models.image_init import load_pretrained

    kind = load_pretrained(model, path)
    # an Open-Sora/PixArt checkpoint brings its own position buffers: recompute ours for this stage
    model.set_input_size(model.input_size, model.space_scale, model.time_scale)
    return f"{kind}:{path}"
