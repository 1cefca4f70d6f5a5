"""Captioning: a small Captioner interface and a resumable driver.

Captioners take a batch of manifest rows (dicts) and return one caption per row:
  synthetic  the ground-truth text of synthetic clips (generated from the same attributes as the pixels)
  existing   a caption column already present (default `text`)
  llava      a LLaVA-family VLM (transformers), 3 frames per clip (first, middle, last), see caption_llava.py

`caption_manifest` appends each finished batch to a jsonl checkpoint next to the output, so an interrupted run
resumes without redoing finished clips; the output manifest gets the captions and a stable train/val split.

The LLaVA captioner (transformers, an optional model) is imported only when data.captioner asks for it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Protocol

import pandas as pd
from tqdm import tqdm

from opensora_core.data.manifest import assign_split, read_manifest, write_manifest
from opensora_core.io import read_jsonl
from opensora_core.remote import remote_operation

log = logging.getLogger(__name__)


class Captioner(Protocol):
    name: str

    def caption(self, rows: list[dict]) -> list[str]:
        """One caption per manifest row."""


class SyntheticCaptioner:
    """Ground truth of synthetic clips: their `text` was generated from the attributes that drew the pixels."""

    name = "synthetic"

    def caption(self, rows: list[dict]) -> list[str]:
        for r in rows:
            if not r.get("color") or not str(r.get("text", "")).strip():
                raise ValueError(f"{r['path']}: the synthetic captioner needs a synthetic manifest (ground-truth columns and text)")
        return [str(r["text"]) for r in rows]


class ExistingCaptioner:
    """Keep captions that came with the data (a `text` column, or another column named by `column`)."""

    name = "existing"

    def __init__(self, column: str = "text"):
        self.column = column

    def caption(self, rows: list[dict]) -> list[str]:
        out = []
        for r in rows:
            text = r.get(self.column)
            if text is None or (isinstance(text, float) and pd.isna(text)) or not str(text).strip():
                raise ValueError(f"{r['path']}: no caption in column {self.column!r} (use the llava captioner for raw videos)")
            out.append(str(text))
        return out


def build_captioner(name: str, **kwargs) -> Captioner:
    if name == "synthetic":
        return SyntheticCaptioner()
    if name == "existing":
        return ExistingCaptioner(**kwargs)
    if name == "llava":
        from opensora_core.data.caption_llava import LlavaCaptioner

        return LlavaCaptioner(**kwargs)
    raise ValueError(f"unknown captioner {name!r} (synthetic | existing | llava)")


def clip_key(row: dict) -> str:
    """Identity of a clip in the checkpoint: its path, plus the start of a range."""
    start = row.get("start")
    return str(row["path"]) if start is None or pd.isna(start) else f"{row['path']}@{float(start):.3f}"


def caption_checkpoint(manifest_out: Path) -> Path:
    """The jsonl log of finished captions beside a captioned manifest being written: a rerun resumes from it."""
    return manifest_out.with_name(manifest_out.name + ".captions.jsonl")


def finished_captions(checkpoint: Path) -> dict[str, str]:
    """clip key -> caption of every clip the checkpoint holds (a line a crash cut short is redone)."""
    return {k: rec["text"] for k, rec in read_jsonl(checkpoint, "key").items() if "text" in rec}


def caption_manifest(manifest_in: str | Path, manifest_out: str | Path, captioner: Captioner, val_fraction: float = 0.1,
                     batch_size: int = 8, progress: bool = True) -> Path:
    """Caption every clip of `manifest_in` and write `manifest_out` (text + split). Resumable: finished batches are
    in `<manifest_out>.captions.jsonl`, which is read first and removed once the manifest is written."""
    df = read_manifest(manifest_in, reject_bad_rows=True)  # a bad row is dropped with a warning, not the whole run
    out = Path(manifest_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt = caption_checkpoint(out)
    done = finished_captions(ckpt)
    rows = df.to_dict("records")
    todo = [r for r in rows if clip_key(r) not in done]
    if done:
        log.info("captioning resumes: %d clips already captioned, %d to go", len(rows) - len(todo), len(todo))
    with ckpt.open("a") as f, tqdm(total=len(todo), desc=f"caption ({captioner.name})", unit="clip", disable=not progress) as bar:
        for b in range(0, len(todo), batch_size):
            batch = todo[b:b + batch_size]
            # S3 down mid-way: one line; the batches already in the checkpoint are kept for the rerun
            with remote_operation("caption", f"reading {batch[0]['path']}" + (f" (+{len(batch) - 1} clips)" if len(batch) > 1 else "")):
                texts = captioner.caption(batch)
            if len(texts) != len(batch):
                raise RuntimeError(f"captioner {captioner.name} returned {len(texts)} captions for {len(batch)} clips")
            for r, t in zip(batch, texts):
                done[clip_key(r)] = t
                f.write(json.dumps({"key": clip_key(r), "text": t}) + "\n")
            f.flush()
            bar.update(len(batch))
    df["text"] = [done[clip_key(r)] for r in rows]
    df = assign_split(df, val_fraction)
    write_manifest(df, out)
    ckpt.unlink()
    return out
