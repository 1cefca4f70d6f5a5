"""Train the tiny preset's AutoencoderKL on frames of the synthetic videos (CPU).

The tiny preset cannot download sd-vae-ft-ema, so the project trains a small AutoencoderKL of the same
architecture family (downsample 4, 4 latent channels) on its own frames: reconstruction loss (L1 + MSE) plus a
small KL term, random crops, Adam at a constant lr until the training frames reach a PSNR level, then a short
cosine decay (`StableDecaySchedule`). After training the latent scale is calibrated so that
`latent * 0.18215` has unit standard deviation, as Stable Diffusion's factor does for sd-vae (see
`calibrate_latent_scale`), so the diffusion model sees latents of the scale it expects.

The recipe (hold the lr until a PSNR level, then a short decay, gradients clipped to norm 1) was chosen over a
fixed cosine, wider networks, other norm groups, other lrs, deterministic latents, full frames and smaller crops
(GroupNorm statistics of small crops do not match those of full frames); the measurements are in docs/results.md.

Heavy or optional imports (av, diffusers, pandas) happen inside the functions that need them, so importing
this module (the CLI, the stage processes, the Dask workers do) does not load them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from opensora_core.encoders.vae import SD_SCALING_FACTOR
from opensora_core.encoders.vae_schedule import StableDecaySchedule
from opensora_core.encoders.weights import write_atomically

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def tiny_autoencoder(latent_channels: int = 4, downsample: int = 4, width: int = 8, seed: int = 0, norm_groups: int = 2):
    """A small randomly initialised AutoencoderKL: `log2(downsample)+1` blocks of widths width, 2*width, ...

    One resnet per block and no mid-block attention keep a CPU step at a few tens of milliseconds. Few, wide
    norm groups matter: with one channel per GroupNorm group (instance norm) a flat-coloured frame normalises to
    zero, which leaves the net no easy way to carry absolute colour.
    """
    from diffusers import AutoencoderKL

    levels = int(round(math.log2(downsample))) + 1
    if 2 ** (levels - 1) != downsample:
        raise ValueError(f"downsample must be a power of two, got {downsample}")
    widths = tuple(min(width * 2**i, width * 2) for i in range(levels))
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=widths, layers_per_block=1, norm_num_groups=norm_groups, sample_size=64,
        mid_block_add_attention=False, scaling_factor=SD_SCALING_FACTOR,
    )
    # Start with a narrow posterior (std e^-3 = 0.05): with log-variance 0 the sampled latents are pure noise
    # at first and a short CPU run spends most of its steps learning to shrink it.
    with torch.no_grad():
        vae.quant_conv.bias[latent_channels:] = -6.0
    return vae


# --------------------------------------------------------------------------------------------------------
# Frames


def resolve_videos(source: str | Path | Iterable[str | Path]) -> list[Path]:
    """Video files from a folder (recursively), a manifest CSV (its `path` column), one file, or a list of files.

    Relative manifest paths are tried against the manifest's folder first, then the current directory.
    """
    if not isinstance(source, (str, Path)):
        return [Path(p) for p in source]
    source = Path(source)
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    if source.suffix.lower() == ".csv":
        import pandas as pd

        if not source.is_file():
            raise FileNotFoundError(f"video manifest not found: {source} (run `opensora data prepare` first)")
        paths = []
        for p in pd.read_csv(source)["path"].astype(str):
            p = Path(p)
            paths.append(p if p.is_absolute() or not (source.parent / p).exists() else source.parent / p)
        return paths
    if source.is_file():
        return [source]
    raise FileNotFoundError(f"no videos at {source}: expected a folder of videos, a manifest .csv or a video file")


def read_frames(path: str | Path, num_frames: int = 4, size: int | None = 64) -> torch.Tensor:
    """`num_frames` evenly spaced frames of a video as uint8 `[n, 3, size, size]` (center crop, then resize)."""
    import av
    import numpy as np

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"{path} has no decodable video frames")
    idx = torch.linspace(0, len(frames) - 1, min(num_frames, len(frames))).round().long().unique()
    x = torch.from_numpy(np.stack([frames[i] for i in idx])).permute(0, 3, 1, 2)
    if size is not None and x.shape[-2:] != (size, size):
        h, w = x.shape[-2:]
        s = min(h, w)
        x = x[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255).to(torch.uint8)
    return x


def load_frame_split(videos: list[Path], val_fraction: float = 0.1, frames_per_video: int = 4,
                     max_videos: int = 400, size: int | None = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames in [-1, 1] `[N, 3, H, W]` for training and held-out validation, split by video (never by frame,
    so validation frames come from videos the VAE never saw)."""
    if len(videos) < 2:
        raise ValueError(f"need at least 2 videos to hold one out for validation, got {len(videos)}")
    videos = list(videos)[:max_videos]
    n_val = max(1, int(round(len(videos) * val_fraction)))
    to_float = lambda xs: torch.cat(xs).float() / 127.5 - 1  # noqa: E731
    train = to_float([read_frames(p, frames_per_video, size) for p in videos[:-n_val]])
    val = to_float([read_frames(p, frames_per_video, size) for p in videos[-n_val:]])
    return train, val


# --------------------------------------------------------------------------------------------------------
# Training


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [-1, 1] (peak-to-peak 2), over the whole batch."""
    mse = F.mse_loss(x.clamp(-1, 1).float(), y.clamp(-1, 1).float()).item()
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


@torch.no_grad()
def reconstruct(vae, frames: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Deterministic (posterior mean) reconstruction of frames `[N, 3, H, W]`."""
    return torch.cat([vae.decode(vae.encode(b).latent_dist.mode()).sample for b in frames.split(batch_size)])


@torch.no_grad()
def calibrate_latent_scale(vae, frames: torch.Tensor, target_std: float = 1 / SD_SCALING_FACTOR) -> float:
    """Rescale the latent space so its posterior means have std `target_std` (5.49 = 1/0.18215); returns the factor.

    quant_conv's mean half is multiplied by k (its log-variance half shifted by 2 log k) and post_quant_conv's
    input weights divided by k: reconstructions are unchanged, the latent scale is fixed.
    """
    mean = torch.cat([vae.encode(b).latent_dist.mode() for b in frames.split(64)])
    k = target_std / mean.std().item()
    c = vae.config.latent_channels
    qc, pqc = vae.quant_conv, vae.post_quant_conv
    qc.weight[:c] *= k
    qc.bias[:c] *= k
    qc.bias[c:] += 2 * math.log(k)
    pqc.weight /= k
    return k


def _random_crops(frames: torch.Tensor, n: int, crop: int, g: torch.Generator) -> torch.Tensor:
    idx = torch.randint(len(frames), (n,), generator=g)
    h, w = frames.shape[-2:]
    crop = min(crop, h, w)
    ys = torch.randint(h - crop + 1, (n,), generator=g)
    xs = torch.randint(w - crop + 1, (n,), generator=g)
    batch = torch.stack([frames[i, :, y:y + crop, x:x + crop] for i, y, x in zip(idx, ys, xs)])
    flip = torch.rand(n, generator=g) < 0.5
    return torch.where(flip[:, None, None, None], batch.flip(-1), batch)


@dataclass
class VAETrainResult:
    out_dir: str
    psnr_val: float        # dB on held-out frames, deterministic encoding
    psnr_train: float      # dB on (up to 256) training frames
    steps: int
    seconds: float
    num_train_frames: int
    num_val_frames: int
    latent_scale: float    # factor applied by calibrate_latent_scale

    def to_dict(self) -> dict:
        return asdict(self)


VAE_THREADS = 2


def train_tiny_vae(source: str | Path | Iterable[str | Path] | tuple[torch.Tensor, torch.Tensor], out_dir: str | Path,
                   steps: int = 3000, batch_size: int = 16, lr: float = 3e-3, seed: int = 0, *,
                   decay_at_psnr: float = 27.0, decay_steps: int = 400,
                   latent_channels: int = 4, downsample: int = 4, width: int = 8, crop: int = 32,
                   kl_weight: float = 1e-6, val_fraction: float = 0.1, frame_size: int | None = 64,
                   progress: bool = True) -> VAETrainResult:
    """Train a tiny AutoencoderKL and save it (diffusers `save_pretrained`, atomically) to `out_dir`.

    Args:
        source: videos (folder, manifest CSV, or list of files; read with PyAV), or a `(train, val)` pair of
            frame tensors `[N, 3, H, W]` in [-1, 1].
        steps, batch_size, lr: optimisation (Adam), at most `steps` steps: `lr` held until the training frames'
            PSNR reaches `decay_at_psnr` dB (checked every 100 steps), then `decay_steps` of cosine decay to 10%
            of `lr` (warmup-stable-decay, see `StableDecaySchedule`); gradients clipped to norm 1.
        crop: training crop size; the network is fully convolutional, so it encodes full frames afterwards.
        frame_size: frames are center-cropped and resized to this side when read from videos (None: as stored).
        kl_weight: weight of the per-element KL term (keeps the posterior a proper Gaussian, latents bounded).
    Returns:
        VAETrainResult with held-out PSNR (dB) and wall time.
    """
    t0 = time.perf_counter()
    if isinstance(source, tuple) and len(source) == 2 and all(isinstance(s, torch.Tensor) for s in source):
        train, val = source
    else:
        train, val = load_frame_split(resolve_videos(source), val_fraction=val_fraction, size=frame_size)
    # Exactly 2 intra-op threads, whatever the machine or OMP_NUM_THREADS says: the thread count changes the
    # float rounding of the convolutions' reductions, which changes every weight of the result, so the encoders
    # stage must not depend on it. 2 also pays: these convolutions are too small to split further, and 2 threads
    # run faster than 1 on a 2-core machine. Restored on exit.
    threads = torch.get_num_threads()
    torch.set_num_threads(VAE_THREADS)
    try:
        schedule = StableDecaySchedule(steps, decay_at_psnr, min(decay_steps, steps // 2))
        return _train(train, val, out_dir, t0, schedule, batch_size, lr, seed, latent_channels, downsample, width,
                      crop, kl_weight, progress)
    finally:
        torch.set_num_threads(threads)


CHECK_EVERY = 100  # steps between PSNR checks of the stable phase (on 256 frames: cheap next to 100 steps)
GRAD_CLIP = 1.0    # max global gradient norm


def _train(train, val, out_dir, t0, schedule: StableDecaySchedule, batch_size, lr, seed, latent_channels, downsample, width,
           crop, kl_weight, progress) -> VAETrainResult:
    g = torch.Generator().manual_seed(seed)
    vae = tiny_autoencoder(latent_channels, downsample, width, seed).train()
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    check = train[:256]  # the frames behind the PSNR checks, the latent calibration and psnr_train
    bar = tqdm(total=schedule.steps, desc="vae", disable=not progress, mininterval=2)
    step = 0
    while not schedule.done(step):
        for group in opt.param_groups:
            group["lr"] = lr * schedule.factor(step)
        x = _random_crops(train, batch_size, crop, g)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample
        kl = post.kl().mean() / post.mean[0].numel()
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # at the held lr the plateau's loss spikes otherwise undo hundreds of steps
        torch.nn.utils.clip_grad_norm_(vae.parameters(), GRAD_CLIP)
        opt.step()
        step += 1
        measured = None
        if schedule.decay_from is None and step % CHECK_EVERY == 0:
            measured = psnr(reconstruct(vae.eval(), check), check)
            vae.train()
            bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{measured:.1f}", refresh=False)
        schedule.observe(step, measured)
        bar.update()
    bar.close()
    steps = step
    if not schedule.reached:
        log.warning("tiny VAE: the training frames did not reach %.1f dB in %d steps at the full lr; decayed anyway "
                    "(more vae.train_steps give the plateau more time)", schedule.decay_at_psnr, schedule.decay_from)
    vae.eval().requires_grad_(False)
    scale = calibrate_latent_scale(vae, check)
    result = VAETrainResult(
        out_dir=str(out_dir), psnr_val=psnr(reconstruct(vae, val), val), psnr_train=psnr(reconstruct(vae, check), check),
        steps=steps, seconds=0.0, num_train_frames=len(train), num_val_frames=len(val), latent_scale=scale,
    )
    write_atomically(out_dir, lambda tmp: vae.save_pretrained(tmp, safe_serialization=True))
    result.seconds = round(time.perf_counter() - t0, 2)
    log.info("tiny VAE: %.2f dB held-out PSNR after %d steps in %.1f s -> %s", result.psnr_val, steps, result.seconds, out_dir)
    return result
