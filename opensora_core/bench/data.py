"""Training throughput with the latent cache vs online encoding (`opensora bench data`).

Both modes time the same training step of the stage's model (IDDPM loss, forward + backward + AdamW step) and
differ only in where a batch comes from:
  cached  LatentCacheDataset: latents [B, 4, T, h, w] and caption embeddings read from safetensors shards
  online  VideoDataset decode (PyAV, stride sampling, resize/crop) + VAE encode + T5 encode of every batch
The Open-Sora 1.0 report blames VAE and T5 encoding for much of its throughput gap; the ratio of the two rows is
what a cache buys. Inputs come from the run dir when it has them (captioned manifest, tiny VAE, tiny T5); what is
missing is built small in a temp dir: a synthetic captioned set, a *randomly initialised* tiny AutoencoderKL of
the preset's shape (its compute is that of the trained one, its latents are meaningless: fine for a throughput
measure) and the project's frozen random tiny T5.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from opensora_core.bench.reporter import Report
from opensora_core.bench.step import time_steps
from opensora_core.data.cache import LatentCacheDataset, build_latent_cache
from opensora_core.data.caption import SyntheticCaptioner, caption_manifest
from opensora_core.data.dataset import VideoDataset
from opensora_core.data.synthetic import generate_synthetic
from opensora_core.diffusion import IDDPM
from opensora_core.encoders import VideoAutoencoderKL, build_text_encoder, build_vae
from opensora_core.encoders.text import T5Encoder
from opensora_core.encoders.tiny_text import create_tiny_text_encoder
from opensora_core.encoders.vae_train import tiny_autoencoder
from opensora_core.models.stage import build_stage_model, latent_size

def bench_inputs(cfg, workdir: Path, num_clips: int = 32) -> tuple[Path, object, object, list[str]]:
    """(captioned manifest, VAE, text encoder, notes on what was built in `workdir` instead of taken from the run)."""
    notes: list[str] = []
    manifest = cfg.paths.manifest
    if not manifest.exists():
        frames = max(cfg.data.video_frames or 0, max(s.num_frames * s.frame_interval for s in map(cfg.stage, cfg.stage_names())))
        size = max(cfg.data.video_size or 0, max(cfg.stage(s).image_size for s in cfg.stage_names()))
        raw = generate_synthetic(workdir / "raw", num_clips, frames, size, seed=cfg.seed, workers=1, progress=False)
        manifest = caption_manifest(raw, workdir / "manifest.csv", SyntheticCaptioner(), val_fraction=0.0, progress=False)
        notes.append(f"manifest: {num_clips} synthetic clips ({frames} frames, {size} px) built in a temp dir")
    try:
        vae = build_vae(cfg)
    except FileNotFoundError:
        tiny_autoencoder(cfg.vae.latent_channels, cfg.vae.downsample, seed=cfg.seed).save_pretrained(workdir / "vae")
        vae = VideoAutoencoderKL.from_pretrained(workdir / "vae", scaling_factor=cfg.vae.scaling_factor,
                                                 micro_batch_size=cfg.vae.micro_batch_size)
        notes.append("VAE: randomly initialised tiny AutoencoderKL of the preset's shape (same compute as the trained "
                     "one; its latents are meaningless, fine for throughput)")
    try:
        text_encoder = build_text_encoder(cfg)
    except FileNotFoundError:
        te = cfg.text_encoder
        create_tiny_text_encoder(workdir / "t5", hidden_size=te.hidden_size, model_max_length=te.model_max_length, seed=cfg.seed)
        text_encoder = T5Encoder.from_pretrained(workdir / "t5", model_max_length=te.model_max_length)
        notes.append("text encoder: the project's frozen random tiny T5, built in a temp dir")
    return Path(manifest), vae.eval(), text_encoder.eval(), notes


def _timed_steps(model, diffusion, opt, next_batch, steps: int, warmup: int, num_tokens: int, batch_size: int) -> dict:
    """Time training steps (IDDPM loss) on batches from next_batch() -> (x [B,C,T,h,w], y [B,1,N,Cc], mask [B,N]);
    the time spent in next_batch is counted apart as data_ms."""
    data_s: list[float] = []

    def step() -> None:
        t0 = time.perf_counter()
        x, y, mask = next_batch()
        data_s.append(time.perf_counter() - t0)
        t = torch.randint(0, diffusion.num_timesteps, (x.shape[0],))
        loss = diffusion.training_losses(model, x, t, model_kwargs={"y": y, "mask": mask})["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = time_steps(step, steps, warmup, torch.device("cpu")).seconds
    data = sum(data_s[warmup:]) / steps
    return {"batch": batch_size, "steps": steps, "data_ms": round(1e3 * data, 2),
            "model_ms": round(1e3 * (seconds - data), 2), "step_ms": round(1e3 * seconds, 2),
            "samples/s": round(batch_size / seconds, 3), "tokens/s": round(batch_size * num_tokens / seconds, 1)}


def _cycle(n: int, batch_size: int):
    i = 0
    while True:
        yield [(i + k) % n for k in range(batch_size)]
        i = (i + batch_size) % n


def run_data_benchmark(cfg, stage: str, steps: int = 5, warmup: int = 1, batch_size: int | None = None,
                       workdir: str | Path | None = None, threads: int | None = 1, on_row=None) -> tuple[list[dict], list[str]]:
    """Cached vs online training throughput of `stage`; returns (rows, notes). Rows: mode, stage, batch, steps,
    data_ms (batch loading: shard read, or decode + VAE + T5), model_ms, step_ms, samples/s, tokens/s."""
    if threads:
        torch.set_num_threads(threads)  # tiny ops: steadier on a shared machine (both modes alike)
    st = cfg.stage(stage)
    bs = batch_size or st.batch_size
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        workdir = Path(workdir) if workdir else Path(tmp)
        manifest, vae, text_encoder, notes = bench_inputs(cfg, workdir, num_clips=max(2 * bs, 16))
        t0 = time.perf_counter()
        cache = build_latent_cache(cfg, stage, vae=vae, text_encoder=text_encoder, manifest=manifest, out=workdir / "cache",
                                   encoder_key="bench", force=True, progress=False, batch_size=bs)
        cache_s = time.perf_counter() - t0
        cached_ds = LatentCacheDataset(cache, split="train")
        video_ds = VideoDataset(manifest, st.num_frames, st.frame_interval, st.image_size, split="train", seed=cfg.seed)
        notes.append(f"cache build: {len(cached_ds)} clips in {cache_s:.1f}s ({len(cached_ds) / cache_s:.1f} clips/s), not in the timings")

        def cached_batches():
            for idx in _cycle(len(cached_ds), bs):
                items = [cached_ds[i] for i in idx]
                yield (torch.stack([it["latent"] for it in items]), torch.stack([it["y"] for it in items]),
                       torch.stack([it["mask"] for it in items]))

        def online_batches():
            for idx in _cycle(len(video_ds), bs):
                items = [video_ds[i] for i in idx]
                with torch.no_grad():
                    x = vae.encode(torch.stack([it["video"] for it in items]))
                    emb = text_encoder.encode([it["text"] for it in items])
                yield x, emb["y"], emb["mask"]

        rows = []
        diffusion = IDDPM(timestep_respacing="")
        for mode, batches in (("cached", cached_batches()), ("online", online_batches())):
            torch.manual_seed(cfg.seed)
            model = build_stage_model(cfg, stage).train()
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=0.0)
            row = {"mode": mode, "stage": stage,
                   **_timed_steps(model, diffusion, opt, lambda b=batches: next(b), steps, warmup,
                                  model.num_tokens(latent_size(cfg, stage)), bs)}
            rows.append(row)
            if on_row:
                on_row(row)
    return rows, notes


def cache_speedup(rows: list[dict]) -> float:
    """Cached samples/s over online samples/s."""
    by = {r["mode"]: r["samples/s"] for r in rows}
    return round(by["cached"] / by["online"], 2)


def data_report(rows: list[dict], notes: list[str], stage: str, steps: int) -> Report:
    """The table, the ratio and notes lines, and the MLflow params and metrics of a data benchmark."""
    ratio = cache_speedup(rows)
    metrics = {"cache_speedup": ratio}
    for r in rows:
        metrics.update({f"{r['mode']}.samples_per_s": r["samples/s"], f"{r['mode']}.tokens_per_s": r["tokens/s"],
                        f"{r['mode']}.data_ms": r["data_ms"], f"{r['mode']}.step_ms": r["step_ms"]})
    return Report(
        "data", f"Training throughput, latent cache vs online encoding ({stage}, cpu)", rows, left=("mode", "stage"),
        lines=[f"cached / online samples/s: {ratio}x", *(f"note: {note}" for note in notes)],
        params={"stage": stage, "steps": steps, "batch_size": rows[0]["batch"]}, metrics=metrics,
        tags={"notes": " | ".join(notes)[:4000]}, run_name=f"bench-data-{stage}", stage=stage)
