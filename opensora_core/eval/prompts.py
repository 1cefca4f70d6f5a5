"""Held-out prompts with their ground truth, and the real held-out clips they describe.

Source of prompts, in order: `cfg.eval.prompts` (a text file, one prompt per line; ground truth parsed back
from synthetic captions where possible), else the manifest's val split (ground truth from its columns;
single-object clips first, interleaved across motions so a short list still covers every direction), else
the bundled `assets/prompts/tiny_heldout.txt` (package data, see opensora_core.project).

Heavy or optional imports (av, pandas, safetensors, torch) happen inside the functions that need them, so importing
this module (the CLI, the stage processes, the Dask workers do) does not load them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from opensora_core import project
from opensora_core.config import Config
from opensora_core.data.synthetic import BACKGROUNDS, COLORS, SHAPES, SIZES

TINY_HELDOUT = "assets/prompts/tiny_heldout.txt"
_PHRASE_MOTION = {"moves to the left": "left", "moves to the right": "right", "moves up": "up", "moves down": "down",
                  "zooms in": "zoom_in", "zooms out": "zoom_out", "rotates": "rotate"}
_OBJECT = re.compile(r"a (?P<size>{}) (?P<color>{}) (?P<shape>{}) (?P<motion>{})".format(
    "|".join(SIZES), "|".join(COLORS), "|".join(SHAPES), "|".join(map(re.escape, _PHRASE_MOTION))))


def parse_synthetic_caption(text: str) -> dict[str, Any] | None:
    """Ground truth of a synthetic caption ("a small red circle moves to the left on a black background"):
    {color, shape, size, motion, background, num_objects} of the first object, or None if not synthetic."""
    objs = list(_OBJECT.finditer(text))
    if not objs:
        return None
    first = objs[0]
    if "sky turns from day to night" in text:
        background = "day to night"
    else:
        m = re.search(r"on a (.+) background", text)
        background = m.group(1) if m and m.group(1) in BACKGROUNDS else ""
    return {"text": text, "color": first["color"], "shape": first["shape"], "size": first["size"],
            "motion": _PHRASE_MOTION[first["motion"]], "background": background, "num_objects": len(objs)}


def _interleave(df, n: int):
    """Up to n rows, single-object first, round-robin over motion values (stable: manifest order inside each)."""
    if "num_objects" in df.columns:
        df = df.assign(_single=(df["num_objects"].astype(int) != 1)).sort_values("_single", kind="stable")
    if "motion" not in df.columns:
        return df.head(n)
    rank = df.groupby("motion", sort=False).cumcount()
    order = np.lexsort((df["motion"].astype(str).to_numpy(), rank.to_numpy()))
    return df.iloc[order].head(n)


def heldout_rows(cfg: Config, n: int | None = None) -> list[dict[str, Any]]:
    """Prompts to evaluate: dicts with "text", ground-truth keys when known, "path" when a real clip exists."""
    n = n or cfg.eval.num_prompts
    if cfg.eval.prompts:
        from opensora_core.eval.sample import read_prompts

        path = project.bundled_or_project(cfg.project_dir, cfg.eval.prompts)
        return [parse_synthetic_caption(p) or {"text": p} for p in read_prompts(path)[:n]]
    if cfg.paths.manifest.is_file():
        from opensora_core.data.manifest import read_manifest

        df = read_manifest(cfg.paths.manifest)
        if "split" in df.columns:
            df = df[df["split"] == "val"]
        df = df.drop_duplicates("text")  # distinct prompts (two clips of one caption would count one prompt twice)
        if len(df):
            return [{k: v for k, v in r.items() if not (isinstance(v, float) and np.isnan(v))}
                    for r in _interleave(df, n).drop(columns=["_single"], errors="ignore").to_dict("records")]
    from opensora_core.eval.sample import read_prompts

    return [parse_synthetic_caption(p) or {"text": p} for p in read_prompts(project.resource(*Path(TINY_HELDOUT).parts))[:n]]


def read_clip(path: str | Path, num_frames: int, frame_interval: int, image_size: int, start: float | None = None):
    """Frames of a held-out clip as the stage sees them, deterministically: `num_frames` frames at stride
    `frame_interval` from the clip's first frame (or `start` seconds), resized to `image_size` (area mean for
    downscaling, so colours are not aliased). Returns `[3, T, S, S]` float in [-1, 1]."""
    import av
    import torch
    import torch.nn.functional as F

    need = (num_frames - 1) * frame_interval + 1
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        first = int(round((start or 0.0) * float(stream.average_rate or 0))) if start else 0
        for i, frame in enumerate(container.decode(stream)):
            if i >= first and (i - first) % frame_interval == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
            if i - first + 1 >= need:
                break
    if not frames:
        raise ValueError(f"{path}: no frames")
    while len(frames) < num_frames:  # a short clip: hold its last frame
        frames.append(frames[-1])
    x = torch.from_numpy(np.stack(frames[:num_frames])).float().permute(0, 3, 1, 2) / 127.5 - 1.0  # [T, 3, H, W]
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="area" if x.shape[-1] > image_size else "bilinear")
    return x.permute(1, 0, 2, 3).contiguous()
