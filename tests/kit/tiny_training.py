"""The training tests' tiny stage: a config small enough for a step in a few ms and random latent datasets (in
memory, or written in the latent cache's format). Used by tests/train, tests/faults and their torchrun scripts."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from opensora_core.config import load_config

STAGE = "pretrain_256"


def tiny_overrides(run_dir: Path, **extra) -> list[str]:
    """A config small enough for a step in a few ms: STDiT hidden 32, depth 2, latents 4x2x4x4, 8 tokens."""
    items = {
        "run_dir": str(run_dir),
        "model.hidden_size": 32, "model.depth": 2, "model.num_heads": 2,
        "text_encoder.hidden_size": 16, "text_encoder.model_max_length": 8,
        "train.dtype": "fp32", "train.lr": 1e-3, "train.warmup_steps": 2, "train.ckpt_every": 3,
        "train.log_every": 1, "train.keep_last": 2, "train.processes": 1, "train.sample_every": 0,
        f"stages.{STAGE}.num_frames": 2, f"stages.{STAGE}.image_size": 16, f"stages.{STAGE}.batch_size": 2,
        f"stages.{STAGE}.max_steps": 6,
        "stages.finetune_512.num_frames": 2, "stages.finetune_512.image_size": 32,
        "stages.finetune_512.batch_size": 2, "stages.finetune_512.max_steps": 2,
    }
    items.update(extra)
    return [f"{k}={v}" for k, v in items.items()]


def tiny_config(run_dir: Path, **extra):
    """The validated config of `tiny_overrides`."""
    return load_config(overrides=tiny_overrides(run_dir, **extra))


class RandomLatents(torch.utils.data.Dataset):
    """`n` items shaped like LatentCacheDataset's, a fixed function of the index (optionally NaN)."""

    def __init__(self, n: int, latent=(4, 2, 4, 4), tokens: int = 8, channels: int = 16, nan: bool = False):
        self.n, self.latent, self.tokens, self.channels, self.nan = n, latent, tokens, channels, nan

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(1000 + i)
        latent = torch.randn(self.latent, generator=g)
        if self.nan:
            latent[0, 0, 0, 0] = float("nan")
        mask = torch.zeros(self.tokens, dtype=torch.long)
        mask[: 2 + i % (self.tokens - 2)] = 1
        return {"latent": latent, "y": torch.randn(1, self.tokens, self.channels, generator=g), "mask": mask,
                "text": f"clip {i}", "index": i}


def write_latent_cache(cache_dir: Path, dataset: RandomLatents) -> Path:
    """Store `dataset` in the latent cache's on-disk format (one shard + index.json) for LatentCacheDataset."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    items = [dataset[i] for i in range(len(dataset))]
    save_file({"latent": torch.stack([it["latent"] for it in items]), "y": torch.stack([it["y"] for it in items]),
               "mask": torch.stack([it["mask"] for it in items]), "index": torch.arange(len(items))},
              str(cache_dir / "train-00000.safetensors"))
    index = {"fingerprint": "test", "splits": {"train": {
        "shards": [{"file": "train-00000.safetensors", "count": len(items)}], "count": len(items),
        "texts": [it["text"] for it in items], "rows": list(range(len(items)))}}}
    (cache_dir / "index.json").write_text(json.dumps(index))
    return cache_dir
