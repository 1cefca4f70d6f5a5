"""Diffusion transformers: STDiT (Open-Sora 1.0), DiT (full attention baseline), image init, named sizes,
FLOP count (``flops_per_sample(model_cfg, frames, size, caption_tokens)``, for MFU)."""

from opensora_core.models.dit import DiT
from opensora_core.models.flops import flops_per_sample
from opensora_core.models.image_init import load_opensora_checkpoint, load_pixart_checkpoint
from opensora_core.models.registry import MODELS, build_model
from opensora_core.models.stdit import STDiT

__all__ = [
    "STDiT", "DiT", "build_model", "MODELS", "load_pixart_checkpoint", "load_opensora_checkpoint", "flops_per_sample",
]
