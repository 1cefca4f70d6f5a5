"""Choose the starting weights of a stage's model (progressive training, Open-Sora 1.0).

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
from opensora_core.checkpoint import META, load_ema_weights
from opensora_core.config import Config
from opensora_core.models.image_init import load_pretrained

log = logging.getLogger(__name__)

# buffers that depend on the stage's size and scales: recomputed, never loaded
POSITION_KEYS = ("pos_embed", "pos_embed_temporal")


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
    kind = load_pretrained(model, path)
    # an Open-Sora/PixArt checkpoint brings its own position buffers: recompute ours for this stage
    model.set_input_size(model.input_size, model.space_scale, model.time_scale)
    return f"{kind}:{path}"
