"""Encoders from the config: `vae.pretrained` / `text_encoder.pretrained`, with `null` meaning the tiny
models the pipeline builds under the run directory (cfg.paths.vae_dir, cfg.paths.text_encoder_dir)."""

from __future__ import annotations

from pathlib import Path

from opensora_core import project
from opensora_core.config import Config
from opensora_core.encoders.text import T5Encoder
from opensora_core.encoders.tiny_text import create_tiny_text_encoder
from opensora_core.encoders.vae import VideoAutoencoderKL
from opensora_core.encoders.vae_train import train_tiny_vae


def _missing_tiny(what: str, folder: Path, command: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"the tiny {what} is missing at {folder} ({what.split()[0]}.pretrained is null, which means the model the "
        f"pipeline builds): create it with `{command}` (or run the pipeline: `dvc repro` / the Prefect flow), "
        f"or set the pretrained key in params.yaml to a hub id or a local folder"
    )


def _weights_source(cfg: Config, pretrained: str | None, tiny_folder: Path, what: str, command: str) -> str | Path:
    """`pretrained` (hub id, or a folder taken from the project root); null means the tiny model the pipeline built
    in `tiny_folder`."""
    if pretrained is not None:
        return project.resolve_local_or_id(cfg.project_dir, pretrained)
    if not (tiny_folder / "config.json").is_file():
        raise _missing_tiny(what, tiny_folder, command)
    return tiny_folder


def build_vae(cfg: Config, device: str = "cpu") -> VideoAutoencoderKL:
    """The configured VAE, frozen; checks that its downsampling and latent channels agree with `cfg.vae`."""
    v = cfg.vae
    source = _weights_source(cfg, v.pretrained, cfg.paths.vae_dir, "vae", "opensora vae train")
    vae = VideoAutoencoderKL.from_pretrained(source, scaling_factor=v.scaling_factor, micro_batch_size=v.micro_batch_size)
    if vae.downsample != v.downsample or vae.out_channels != v.latent_channels:
        raise ValueError(
            f"the VAE at {source} downsamples by {vae.downsample} with {vae.out_channels} latent channels, but params say "
            f"vae.downsample={v.downsample}, vae.latent_channels={v.latent_channels}"
        )
    return vae.to(device)


def ensure_tiny_text_encoder(cfg: Config) -> Path:
    """Create the tiny T5 at cfg.paths.text_encoder_dir unless it exists (deterministic from cfg.seed)."""
    folder = cfg.paths.text_encoder_dir
    if not (folder / "config.json").is_file():
        te = cfg.text_encoder
        create_tiny_text_encoder(folder, hidden_size=te.hidden_size, model_max_length=te.model_max_length, seed=cfg.seed)
    return folder


def build_text_encoder(cfg: Config, device: str = "cpu") -> T5Encoder:
    """The configured T5 encoder, frozen fp32; checks its width against `cfg.text_encoder.hidden_size`."""
    te = cfg.text_encoder
    source = _weights_source(cfg, te.pretrained, cfg.paths.text_encoder_dir, "text_encoder", "opensora text-encoder init")
    enc = T5Encoder.from_pretrained(source, model_max_length=te.model_max_length, device=device)
    if enc.hidden_size != te.hidden_size:
        raise ValueError(f"the text encoder at {source} has width {enc.hidden_size}, params say "
                         f"text_encoder.hidden_size={te.hidden_size}")
    return enc


def train_configured_vae(cfg: Config, source: str | Path | None = None):
    """Train the tiny VAE with the preset's `vae.train_*` recipe on `source` (default: the prepared clips) into
    `cfg.paths.vae_dir`; the one call behind `opensora vae train` and the pipeline's encoders stage."""
    v = cfg.vae
    return train_tiny_vae(
        source or cfg.paths.raw_manifest, cfg.paths.vae_dir, steps=v.train_steps, batch_size=v.train_batch_size,
        lr=v.train_lr, decay_at_psnr=v.train_decay_at_psnr, seed=cfg.seed, latent_channels=v.latent_channels,
        downsample=v.downsample,
        val_fraction=cfg.data.val_fraction or 0.1,
        # synthetic clips: the frames as rendered; real videos: 64 px frames (the tiny VAE's training size)
        frame_size=cfg.data.video_size if cfg.data.source == "synthetic" else 64,
    )
