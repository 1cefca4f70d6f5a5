"""Where each stage reads and writes under a run directory."""

from __future__ import annotations

from pathlib import Path


class RunPaths:
    """Where each stage reads and writes, under the run directory: one place, so stages agree."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.raw_dir = self.root / "data" / "raw"              # prepare: videos/ + manifest.csv + rejects.csv
        self.videos_dir = self.raw_dir / "videos"
        self.raw_manifest = self.raw_dir / "manifest.csv"
        self.rejects = self.raw_dir / "rejects.csv"
        self.manifest = self.root / "data" / "manifest.csv"    # caption: captioned clips with a split column
        self.encoders_dir = self.root / "encoders"
        self.vae_dir = self.encoders_dir / "vae"               # tiny preset: AutoencoderKL trained by the pipeline
        self.text_encoder_dir = self.encoders_dir / "text_encoder"
        self.eval_dir = self.root / "eval"
        self.metrics = self.eval_dir / "metrics.json"

    def cache_dir(self, stage: str) -> Path:
        return self.root / "cache" / stage

    def ckpt_dir(self, stage: str) -> Path:
        return self.root / "checkpoints" / stage
