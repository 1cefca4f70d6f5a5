"""Text-to-video sampling with the EMA weights, and the files a person looks at: H.264 mp4, gif, frame grid.

`generate` runs IDDPM respaced ancestral sampling with classifier-free guidance (the null caption is the model's
learned `y_embedder.y_embedding`, as in Open-Sora 1.0) and decodes through the VAE. Determinism: the initial
noise of prompt i comes from its own generator seeded (seed, i), so a prompt's video does not depend on the
batch size or on the other prompts; the per-step noise comes from one generator per batch seeded
(seed, first index), so a whole run is reproducible for a seed and batch size.

Heavy or optional imports (PIL, av, mlflow) happen inside the functions that need them, so importing this module
(the CLI, the stage processes, the Dask workers do) does not load them.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from opensora_core.config import config_from_json
from opensora_core.diffusion import IDDPM
from opensora_core.encoders import build_text_encoder, build_vae
from opensora_core.models.stage import build_stage_model
from opensora_core.tracking import configure

log = logging.getLogger(__name__)


# --- prompts ------------------------------------------------------------------------------------------------


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with '#' are ignored."""
    lines = Path(path).read_text().splitlines()
    prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"{path}: no prompts (one per line, '#' starts a comment)")
    return prompts


def slug(text: str, max_len: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:max_len] or "prompt"


# --- checkpoints ----------------------------------------------------------------------------------------------


def load_checkpoint_model(checkpoint: str | Path, use_ema: bool = True):
    """Rebuild the model of a training checkpoint: returns (model in eval mode, Config, stage name, step dir).

    `checkpoint` is a stage directory (its `latest` is used) or one `step_XXXXXXX` directory; the model is
    built from the config and stage stored in its meta.json, so no params.yaml is needed.
    """
    from opensora_core.checkpoint import META, load_weights, resolve_checkpoint

    path = Path(checkpoint)
    try:  # verified like a resume: a damaged `latest` falls back to the newest complete checkpoint, warning
        step_dir = resolve_checkpoint(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not a checkpoint (no {META}) nor a stage directory with `latest`") from None
    meta = json.loads((step_dir / META).read_text())
    cfg = config_from_json(json.dumps(meta["config"]))
    stage = (meta.get("extra") or {}).get("stage") or step_dir.parent.name
    model = build_stage_model(cfg, stage)
    model.load_state_dict(load_weights(step_dir, use_ema=use_ema))
    return model.eval(), cfg, stage, step_dir


# --- generation -----------------------------------------------------------------------------------------------


def null_caption(model, batch: int) -> torch.Tensor:
    """The model's learned null caption `[batch, 1, N, Cc]` (classifier-free guidance's unconditional input)."""
    y = model.y_embedder.y_embedding
    return y[None, None].expand(batch, 1, *y.shape).to(torch.float32)


@torch.no_grad()
def generate(model, vae, text_encoder, prompts: Sequence[str], *, cfg_scale: float = 7.0, steps: int = 100,
             seed: int = 0, batch_size: int = 8, latent_size: tuple[int, int, int] | None = None,
             progress: bool = True, decode: bool = True) -> torch.Tensor:
    """Sample one video per prompt.

    Args:
        model: STDiT (`input_size` = latent (T, h, w), `in_channels`, `y_embedder.y_embedding`).
        vae: `decode(z [B, C, T, h, w]) -> [B, 3, T, H, W]`; text_encoder: `encode(list[str]) -> {"y", "mask"}`.
        cfg_scale: classifier-free guidance scale; steps: respaced IDDPM steps.
        latent_size: (T, h, w); default the model's `input_size`.
        decode: False returns the sampled latents (unclamped; `vae` is not used and may be None).
    Returns: videos `[len(prompts), 3, T, H, W]` in [-1, 1] (float32, CPU), or latents `[len(prompts), C, T, h, w]`.
    """
    device = next(model.parameters()).device
    model.eval()
    T, h, w = latent_size or model.input_size
    diffusion = IDDPM(num_sampling_steps=steps)
    videos = []
    bar = tqdm(total=len(prompts), desc=f"sampling ({steps} steps, cfg {cfg_scale:g})", unit="video",
               disable=not progress)
    for start in range(0, len(prompts), batch_size):
        batch = list(prompts[start : start + batch_size])
        z = torch.stack([torch.randn(model.in_channels, T, h, w, generator=torch.Generator().manual_seed(seed * 100003 + start + i))
                         for i in range(len(batch))]).to(device)
        enc = text_encoder.encode(batch)
        y, mask = enc["y"].to(device).float(), enc["mask"].to(device)
        gen = torch.Generator().manual_seed(seed * 100003 + start)
        x0 = diffusion.sample(model, z, model_kwargs={"y": y, "mask": mask}, y_null=null_caption(model, len(batch)).to(device),
                              cfg_scale=cfg_scale, progress=False, generator=gen)
        videos.append((vae.decode(x0).float().clamp(-1, 1) if decode else x0.float()).cpu())
        bar.update(len(batch))
    bar.close()
    return torch.cat(videos)


# --- files ----------------------------------------------------------------------------------------------------


def to_uint8(video: torch.Tensor | np.ndarray) -> np.ndarray:
    """`[3, T, H, W]` in [-1, 1] -> uint8 `[T, H, W, 3]`."""
    v = video.detach().float().cpu().numpy() if hasattr(video, "detach") else np.asarray(video, np.float32)
    return np.clip((v.transpose(1, 2, 3, 0) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 8) -> Path:
    """Browser-playable H.264 (yuv420p, even dimensions: odd sides are padded by edge replication)."""
    import av

    T, H, W, _ = frames.shape
    if H % 2 or W % 2:
        frames = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")
        H, W = H + H % 2, W + W % 2
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast", "threads": "1", "movflags": "+faststart"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _upscale(frames: np.ndarray, min_side: int) -> np.ndarray:
    """Nearest-neighbour upscaling so 32x32 samples are visible in a browser."""
    k = max(1, -(-min_side // max(frames.shape[1:3])))
    return frames.repeat(k, axis=-3).repeat(k, axis=-2) if k > 1 else frames


def write_gif(frames: np.ndarray, path: str | Path, fps: int = 8, min_side: int = 128) -> Path:
    """An animated gif of `frames` `[T, H, W, 3]` uint8, upscaled (nearest) to at least `min_side` pixels.

    One palette for the whole clip, chosen at the native size: PIL would otherwise pick one per frame after the
    upscale, a median cut over 16x the pixels (a large share of the evaluate stage's time), and a per-frame
    palette can make a still colour flicker. Upscaling the palette image with nearest neighbour adds no colour.
    """
    from PIL import Image

    t, h, w, _ = frames.shape
    k = max(1, -(-min_side // max(h, w)))
    strip = Image.fromarray(np.ascontiguousarray(frames).reshape(t * h, w, 3))  # frames stacked vertically
    indexed = strip.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    imgs = [indexed.crop((0, i * h, w, (i + 1) * h)) for i in range(t)]
    if k > 1:
        imgs = [im.resize((w * k, h * k), Image.Resampling.NEAREST) for im in imgs]
    imgs[0].save(str(path), save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)
    return Path(path)


def write_grid(frames: np.ndarray, path: str | Path, min_side: int = 128) -> Path:
    """First, middle and last frame side by side (2-pixel white gaps)."""
    from PIL import Image

    picks = _upscale(frames[[0, len(frames) // 2, len(frames) - 1]], min_side)
    n, H, W, _ = picks.shape
    canvas = np.full((H, n * W + (n - 1) * 2, 3), 255, np.uint8)
    for i, f in enumerate(picks):
        canvas[:, i * (W + 2) : i * (W + 2) + W] = f
    Image.fromarray(canvas).save(str(path))
    return Path(path)


def write_gif_grid(videos: torch.Tensor, path: str | Path, cols: int | None = None, fps: int = 8,
                   tile_side: int = 64) -> Path:
    """One animated gif of `videos` `[N, 3, T, H, W]` in [-1, 1] tiled row by row (`cols` default ceil(sqrt(N))),
    each tile upscaled to at least `tile_side` pixels, 2-pixel white gaps."""
    tiles = [_upscale(to_uint8(v), tile_side) for v in videos]
    n, (T, H, W, _) = len(tiles), tiles[0].shape
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = -(-n // cols)
    canvas = np.full((T, rows * H + (rows - 1) * 2, cols * W + (cols - 1) * 2, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        canvas[:, r * (H + 2) : r * (H + 2) + H, c * (W + 2) : c * (W + 2) + W] = tile
    return write_gif(canvas, path, fps, min_side=1)


def write_samples(videos: torch.Tensor, prompts: Sequence[str], out_dir: str | Path, fps: int = 8) -> list[dict[str, Any]]:
    """Write `{i:03d}_{slug}.mp4/.gif/.png` per video and `prompts.json`; returns one record per video."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i, (video, prompt) in enumerate(zip(videos, prompts, strict=True)):
        frames = to_uint8(video)
        stem = f"{i:03d}_{slug(prompt)}"
        write_mp4(frames, out / f"{stem}.mp4", fps)
        write_gif(frames, out / f"{stem}.gif", fps)
        write_grid(frames, out / f"{stem}.png")
        records.append({"index": i, "prompt": prompt, "mp4": f"{stem}.mp4", "gif": f"{stem}.gif", "grid": f"{stem}.png"})
    (out / "prompts.json").write_text(json.dumps(records, indent=1))
    return records


def log_samples_to_run(cfg, run_id: str | None, sample_dir: str | Path, artifact_path: str = "samples") -> bool:
    """Attach a sample folder to an existing MLflow run (e.g. the stage's training run); False when no run."""
    if not run_id:
        return False
    from mlflow.tracking import MlflowClient

    configure(cfg)
    try:
        MlflowClient().log_artifacts(run_id, str(sample_dir), artifact_path=artifact_path)
    except Exception as e:  # a checkpoint copied from another machine names a run this tracking DB lacks
        log.warning("could not log samples to MLflow run %s: %s", run_id, e)
        return False
    return True


def sample_checkpoint(checkpoint: str | Path, prompts: Sequence[str], out_dir: str | Path, *, cfg_scale: float = 7.0,
                      steps: int = 100, seed: int = 0, batch_size: int = 8, track: bool = True,
                      progress: bool = True) -> list[dict[str, Any]]:
    """What `opensora sample` does: EMA model of a checkpoint -> videos -> files (-> the stage's MLflow run)."""
    model, cfg, stage, step_dir = load_checkpoint_model(checkpoint)
    vae, text_encoder = build_vae(cfg), build_text_encoder(cfg)
    videos = generate(model, vae, text_encoder, prompts, cfg_scale=cfg_scale, steps=steps, seed=seed,
                      batch_size=batch_size, progress=progress)
    records = write_samples(videos, prompts, out_dir)
    log.info("wrote %d samples of %s (%s) to %s", len(records), stage, step_dir.name, out_dir)
    if track:
        run_id = json.loads((step_dir / "meta.json").read_text()).get("mlflow_run_id")
        log_samples_to_run(cfg, run_id, out_dir, artifact_path=f"samples/{step_dir.name}")
    return records
