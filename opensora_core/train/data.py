"""Training batches of a stage: latents + caption embeddings, from the latent cache or encoded online.

`TrainData.batch_inputs(batch)` turns a DataLoader batch into `(x [B, C, T, h, w], y [B, 1, N, Cc],
mask [B, N])` on the device, whichever the source: the cache already holds VAE latents and T5 outputs; online
encoding runs the frozen VAE and text encoder on each batch (Open-Sora 1.0's default).

Heavy or optional imports (pandas) happen inside the functions that need them, so importing this module (the CLI,
the stage processes, the Dask workers do) does not load them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from opensora_core.config import Config
from opensora_core.data.cache import LatentCacheDataset
from opensora_core.encoders import build_text_encoder, build_vae


@dataclass
class TrainData:
    dataset: Any
    sampler: Any
    loader: Any
    vae: Any = None
    text_encoder: Any = None
    device: torch.device = torch.device("cpu")

    @torch.no_grad()
    def batch_inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if "latent" in batch:
            x = batch["latent"].to(self.device, torch.float32)
            y = batch["y"].to(self.device, torch.float32)
            mask = batch["mask"].to(self.device)
            return x, y, mask
        x = self.vae.encode(batch["video"].to(self.device)).float()
        enc = self.text_encoder.encode(list(batch["text"]))
        return x, enc["y"].to(self.device).float(), enc["mask"].to(self.device)


def build_dataset(cfg: Config, stage: str):
    """LatentCacheDataset of the stage (train.use_latent_cache) or the VideoDataset of the manifest's train split."""
    st = cfg.stage(stage)
    if cfg.train.use_latent_cache:
        cache = cfg.paths.cache_dir(stage)
        if not cache.exists():
            raise FileNotFoundError(f"latent cache {cache} not found: run `opensora data cache --stage {stage}` first "
                                    "(or set train.use_latent_cache=false to encode online)")
        return LatentCacheDataset(cache)
    from opensora_core.data.dataset import VideoDataset

    return VideoDataset(cfg.paths.manifest, st.num_frames, st.frame_interval, st.image_size, split="train",
                        require_text=True)


def sampler_class():
    """The data area's ResumableDistributedSampler (state_dict/load_state_dict hold epoch and position)."""
    from opensora_core.data.dataset import ResumableDistributedSampler

    return ResumableDistributedSampler


def build_train_data(cfg: Config, stage: str, rank: int, dp_size: int, dp_rank: int, device: torch.device,
                     dataset=None) -> TrainData:
    """Dataset, resumable sampler and loader for one data-parallel rank (`dp_rank` of `dp_size`).

    Ranks of the same sequence-parallel group share a dp_rank, so they see the same samples.
    """
    st = cfg.stage(stage)
    dataset = dataset if dataset is not None else build_dataset(cfg, stage)
    if len(dataset) < st.batch_size * dp_size:
        raise ValueError(f"{len(dataset)} training samples are fewer than one global batch "
                         f"({st.batch_size} x {dp_size} data-parallel ranks)")
    sampler = sampler_class()(dataset, num_replicas=dp_size, rank=dp_rank, shuffle=True,
                                          seed=cfg.seed)
    loader = DataLoader(dataset, batch_size=st.batch_size, sampler=sampler, num_workers=cfg.train.num_workers,
                        drop_last=True, pin_memory=device.type == "cuda",
                        persistent_workers=False,
                        # its own generator: each new iterator draws a base seed, which must not consume the
                        # global RNG (a resumed run creates a different number of iterators)
                        generator=torch.Generator().manual_seed(cfg.seed + rank))
    vae = text_encoder = None
    if not cfg.train.use_latent_cache:
        vae = build_vae(cfg).to(device).eval()
        text_encoder = build_text_encoder(cfg)
        if hasattr(text_encoder, "to"):
            text_encoder = text_encoder.to(device)
    return TrainData(dataset, sampler, loader, vae, text_encoder, device)
