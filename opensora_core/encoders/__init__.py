"""Frozen encoders: a frame-wise video VAE (diffusers AutoencoderKL) and a T5 text encoder (transformers).

Heavy libraries are imported lazily by the submodules' functions only where noted; importing this package
imports torch.
"""

from opensora_core.encoders.build import build_text_encoder, build_vae, ensure_tiny_text_encoder
from opensora_core.encoders.text import T5Encoder
from opensora_core.encoders.tiny_text import create_tiny_text_encoder
from opensora_core.encoders.vae import SD_SCALING_FACTOR, VideoAutoencoderKL
from opensora_core.encoders.vae_train import VAETrainResult, train_tiny_vae

__all__ = [
    "SD_SCALING_FACTOR", "T5Encoder", "VAETrainResult", "VideoAutoencoderKL", "build_text_encoder", "build_vae",
    "create_tiny_text_encoder", "ensure_tiny_text_encoder", "train_tiny_vae",
]
