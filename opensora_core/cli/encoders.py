"""`opensora vae train` and `opensora text-encoder init`: build the tiny preset's frozen encoders.

Heavy imports (torch) happen inside the commands, so `opensora --help` and the other commands start without
them.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from opensora_core.cli.common import OverridesArgument, ParamsOption, PresetOption, fail, load_cli_config

vae_app = typer.Typer(help="The video VAE (frame-wise AutoencoderKL).", no_args_is_help=True)
text_app = typer.Typer(help="The T5 text encoder.", no_args_is_help=True)


@vae_app.command("train")
def vae_train(
    params: Path = ParamsOption,
    preset: str = PresetOption,
    videos: Path = typer.Option(None, "--videos", help="folder of videos or manifest CSV (default: paths.raw_manifest)"),
    overrides: list[str] = OverridesArgument,
) -> None:
    """Train the tiny AutoencoderKL on video frames; writes paths.vae_dir and encoders/vae_metrics.json."""
    cfg = load_cli_config(params, preset, overrides)
    if cfg.vae.pretrained is not None:
        typer.echo(f"vae.pretrained is {cfg.vae.pretrained!r}: a pretrained VAE, nothing to train")
        return
    if not (cfg.vae.train_steps and cfg.vae.train_batch_size and cfg.vae.train_lr):
        fail("vae.train_steps, vae.train_batch_size and vae.train_lr must be > 0 to train the tiny VAE")
    source = videos or cfg.paths.raw_manifest
    if not Path(source).exists():
        fail(f"no videos at {source}; run `opensora data prepare` first or pass --videos DIR_OR_MANIFEST")

    import torch

    from opensora_core.encoders.build import train_configured_vae

    torch.manual_seed(cfg.seed)
    result = train_configured_vae(cfg, source)
    metrics = cfg.paths.encoders_dir / "vae_metrics.json"
    metrics.write_text(json.dumps({"psnr_val": round(result.psnr_val, 3), "psnr_train": round(result.psnr_train, 3),
                                   "steps": result.steps, "seconds": result.seconds,
                                   "num_train_frames": result.num_train_frames, "num_val_frames": result.num_val_frames},
                                  indent=2) + "\n")
    typer.echo(f"tiny VAE -> {cfg.paths.vae_dir}: held-out PSNR {result.psnr_val:.2f} dB "
               f"(train {result.psnr_train:.2f} dB), {result.steps} steps in {result.seconds:.0f} s; metrics -> {metrics}")


@text_app.command("init")
def text_encoder_init(
    params: Path = ParamsOption,
    preset: str = PresetOption,
    force: bool = typer.Option(False, "--force", help="rebuild even if it exists"),
    overrides: list[str] = OverridesArgument,
) -> None:
    """Write the tiny preset's frozen random T5 (model + offline tokenizer) to paths.text_encoder_dir."""
    cfg = load_cli_config(params, preset, overrides)
    if cfg.text_encoder.pretrained is not None:
        typer.echo(f"text_encoder.pretrained is {cfg.text_encoder.pretrained!r}: a pretrained T5, nothing to build")
        return
    from opensora_core.encoders.build import ensure_tiny_text_encoder
    from opensora_core.encoders.tiny_text import create_tiny_text_encoder

    te = cfg.text_encoder
    if force:
        folder = create_tiny_text_encoder(cfg.paths.text_encoder_dir, te.hidden_size, te.model_max_length, seed=cfg.seed)
    else:
        folder = ensure_tiny_text_encoder(cfg)
    typer.echo(f"tiny T5 text encoder (d_model {te.hidden_size}, {te.model_max_length} tokens) -> {folder}")


def register(app: typer.Typer) -> None:
    app.add_typer(vae_app, name="vae")
    app.add_typer(text_app, name="text-encoder")
