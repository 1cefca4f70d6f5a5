"""The data stages the pipeline calls: prepare -> caption -> cache. Each is idempotent: it records what it was
made from (a small stamp file) and returns at once when that has not changed.

Heavy or optional imports (pandas) happen inside the functions that need them, so importing this module (the
CLI, the stage processes, the Dask workers do) does not load them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from opensora_core import project
from opensora_core.data.cache import build_latent_cache  # noqa: F401  (re-exported: the third data stage)

log = logging.getLogger(__name__)


def _stamp_ok(stamp: Path, want: dict, *outputs: Path) -> bool:
    if not stamp.exists() or not all(p.exists() for p in outputs):
        return False
    try:
        return json.loads(stamp.read_text()) == want
    except json.JSONDecodeError:
        return False


def prepare_data(cfg, progress: bool = True) -> Path:
    """Raw clips + raw manifest in cfg.paths.raw_dir: synthetic rendering or ingest of cfg.data.src."""
    d, paths = cfg.data, cfg.paths
    if d.source == "synthetic":
        want = {"source": "synthetic", "num": d.num_videos, "frames": d.video_frames, "size": d.video_size, "seed": cfg.seed,
                "vocabulary": d.synthetic.model_dump()}
    else:
        want = {"source": d.source, "src": source_path(cfg), "min_duration": d.min_duration, "max_duration": d.max_duration,
                "min_resolution": d.min_resolution, "scene_split": scene_split(cfg)}
        if d.source == "csv":  # the captions live in the CSV: an edited caption must re-run prepare
            from opensora_core.data.csv_source import csv_digest

            want["csv_sha256"] = csv_digest(want["src"])
        elif d.scene_split is None:
            del want["scene_split"]  # the stamp of an ingest made before the option existed stays valid
    stamp = paths.raw_dir / "prepare.json"
    if _stamp_ok(stamp, want, paths.raw_manifest):
        log.info("prepare: %s is up to date", paths.raw_manifest)
        return paths.raw_manifest
    if d.source == "synthetic":
        from opensora_core.data.synthetic import Vocabulary, generate_synthetic

        generate_synthetic(paths.raw_dir, d.num_videos, d.video_frames, d.video_size, seed=cfg.seed, progress=progress,
                           vocab=Vocabulary.from_config(d.synthetic))
    elif d.source == "csv":
        from opensora_core.data.csv_source import ingest_csv

        ingest_csv(source_path(cfg), paths.raw_dir, min_duration=d.min_duration, max_duration=d.max_duration,
                   min_resolution=d.min_resolution, scene_split=scene_split(cfg), progress=progress)
    else:
        from opensora_core.data.ingest import ingest

        ingest(source_path(cfg), paths.raw_dir, min_duration=d.min_duration, max_duration=d.max_duration,
               min_resolution=d.min_resolution, scene_split=scene_split(cfg), progress=progress)
    stamp.write_text(json.dumps(want))
    return paths.raw_manifest


def source_path(cfg) -> str:
    """data.src as the prepare stage reads it: s3:// as it is, a local path taken from the project root."""
    return cfg.data.src if project.is_remote(cfg.data.src) else str(cfg.resolve_path(cfg.data.src))


def scene_split(cfg) -> bool:
    """data.scene_split, or the source's default: ingested files are cut at scene changes, CSV rows are clips."""
    return cfg.data.scene_split if cfg.data.scene_split is not None else cfg.data.source != "csv"


def caption_data(cfg, captioner=None, progress: bool = True) -> Path:
    """Captioned manifest with a train/val split at cfg.paths.manifest (from the raw manifest)."""
    from opensora_core.data.caption import build_captioner, caption_manifest

    d, paths = cfg.data, cfg.paths
    stamp, want = caption_stamp(cfg)
    if captioner is None and _stamp_ok(stamp, want, paths.manifest):
        log.info("caption: %s is up to date", paths.manifest)
        return paths.manifest
    if captioner is None:
        kwargs = {"model": d.llava_model} if d.captioner == "llava" else {}
        captioner = build_captioner(d.captioner, **kwargs)
    caption_manifest(paths.raw_manifest, paths.manifest, captioner, val_fraction=d.val_fraction, progress=progress)
    stamp.write_text(json.dumps(want))
    return paths.manifest


def caption_stamp(cfg) -> tuple[Path, dict]:
    """The caption stage's stamp file and what it must hold for cfg.paths.manifest to be up to date."""
    d, paths = cfg.data, cfg.paths
    if not paths.raw_manifest.exists():
        raise FileNotFoundError(f"no raw manifest at {paths.raw_manifest}: run `opensora data prepare` first")
    want = {"raw": hashlib.sha256(paths.raw_manifest.read_bytes()).hexdigest(), "captioner": d.captioner,
            "model": d.llava_model if d.captioner == "llava" else None, "val_fraction": d.val_fraction}
    return paths.manifest.with_name(paths.manifest.name + ".json"), want


def caption_up_to_date(cfg) -> bool:
    stamp, want = caption_stamp(cfg)
    return _stamp_ok(stamp, want, cfg.paths.manifest)
