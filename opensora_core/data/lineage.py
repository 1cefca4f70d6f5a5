"""Which clips trained a checkpoint: one identity for MLflow's Dataset column and the checkpoint's meta.json.

A stage trains on the manifest rows its dataset holds (the latent cache's train rows, or the manifest's train
split when encoding online). Their identity is the rows' (path relative to the manifest, start, end, source
sha256 when the ingest hashed the file, caption), in training order; its digest changes when any clip, cut or
caption does. The stage's checkpoint folder holds the full list (`dataset.csv`); every meta.json and the MLflow
run carry the digest, the source and the count, so a checkpoint answers "what trained this?" without the run.

Heavy or optional imports (mlflow) happen inside the functions that need them, so importing this module (the CLI,
the stage processes, the Dask workers do) does not load them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from opensora_core.data.cache import INDEX
from opensora_core.data.manifest import ManifestError, read_manifest
from opensora_core.io import atomic_write

CLIPS_FILE = "dataset.csv"
IDENTITY_COLUMNS = ("path", "start", "end", "sha256", "text")


def training_clips(cfg, stage: str) -> pd.DataFrame:
    """The manifest rows `stage` trains on, with the identity columns present in the manifest."""
    manifest = cfg.paths.manifest
    index = cfg.paths.cache_dir(stage) / INDEX
    cached = cfg.train.use_latent_cache and index.is_file()
    try:  # the cache's rows number the manifest as the cache read it: bad rows screened out
        df = read_manifest(manifest, reject_bad_rows=True, require_text=True) if cached else read_manifest(manifest)
    except ManifestError:
        df = read_manifest(manifest, reject_bad_rows=True, require_text=True)
    if cached:
        rows = json.loads(index.read_text())["splits"].get("train", {}).get("rows") or []
        df = df.iloc[rows]
    elif "split" in df.columns:
        df = df[df["split"] == "train"]
    base = manifest.resolve().parent
    df = df.assign(path=[p if "://" in p else os.path.relpath(p, base) for p in df["path"]])
    return df[[c for c in IDENTITY_COLUMNS if c in df.columns]].reset_index(drop=True)


def digest(clips: pd.DataFrame) -> str:
    """Content digest of the clip list (order included: it is the sampler's global order)."""
    return hashlib.sha256(clips.to_csv(index=False).encode()).hexdigest()[:16]


def describe(cfg, stage: str, clips: pd.DataFrame) -> dict[str, Any]:
    """The summary that goes into meta.json and MLflow: name, digest, source (the manifest), origin (data.src or
    the synthetic spec), number of clips, the list's file."""
    origin = cfg.data.src if cfg.data.source != "synthetic" else f"synthetic:{cfg.data.num_videos}x{cfg.data.video_frames}f"
    return {"name": f"{cfg.preset}-{stage}", "digest": digest(clips), "source": str(cfg.paths.manifest),
            "origin": str(origin), "num_clips": len(clips), "clips_file": CLIPS_FILE}


def write_clips(clips: pd.DataFrame, out_dir: Path) -> Path:
    """The full clip list beside the stage's checkpoints (atomic)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CLIPS_FILE
    return atomic_write(path, clips.to_csv(index=False))


def log_input(mlflow, clips: pd.DataFrame, info: dict[str, Any]) -> None:
    """`mlflow.log_input` of the clip list, so the runs table's Dataset column names what trained the run."""
    dataset = mlflow.data.from_pandas(clips, source=_local_source(mlflow, info["source"]), name=info["name"],
                                      digest=info["digest"])
    mlflow.log_input(dataset, context="training")


def _local_source(mlflow, path: str):
    """The manifest as MLflow's local-file dataset source. Built directly: from a plain path MLflow 3 finds two
    equal candidates (its `file` and `local` artifact schemes) and warns that the source is ambiguous."""
    from mlflow.data.dataset_source_registry import get_registered_sources

    for source in get_registered_sources():
        if source._get_source_type() == "local":
            return source(path)
    return path  # an MLflow without it: let it resolve (and warn)
