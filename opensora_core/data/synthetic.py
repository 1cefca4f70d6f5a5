"""Synthetic captioned videos: the embedded default dataset of the tiny preset.

Every clip is rendered procedurally from a handful of attributes (colour, shape, size, motion, background, one or
two objects) and its caption is generated from the same attributes, so the ground truth is known exactly and
kept in the manifest for evaluation. The vocabulary is deliberately small and the signal strong (saturated
objects of radius >= 1/6 of the frame on dark/unsaturated backgrounds, moving across most of the frame), so a
tiny STDiT trained for minutes on CPU at 32x32 can learn colour and motion direction, and an evaluator can read
colour and position back from pixels.

Clips are written as real H.264 mp4 files (yuv420p, low CRF so colours survive) with PyAV, in parallel.
Determinism: clip `i` of seed `k` is drawn from `numpy.random.default_rng([k, i])`, and x264 runs single-threaded,
so the same (seed, index) always yields the same bytes.

Heavy or optional imports (av, pandas) happen inside the functions that need them, so importing this module (the
CLI, the stage processes, the Dask workers do) does not load them.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from opensora_core.vocabulary import (  # noqa: F401 - the vocabulary's names, where the renderer uses them
    _MOTION_PHRASE,
    BACKGROUNDS,
    COLORS,
    FPS,
    FULL_VOCABULARY,
    LANE_JITTER,
    MOTION_WEIGHTS,
    MOTIONS,
    SHAPES,
    SIZES,
    TRANSLATION_STARTS,
    TWO_OBJECT_FRACTION,
    Vocabulary,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ObjectSpec:
    color: str
    shape: str
    size: str
    motion: str
    x: float  # centre across the clip's middle line, as a fraction of the side (the moving axis ignores it)
    y: float
    start: str = "edge"  # a translation's start (Vocabulary.start)


@dataclass(frozen=True)
class ClipSpec:
    index: int
    objects: tuple[ObjectSpec, ...]
    background: str

    @property
    def caption(self) -> str:
        parts = [f"a {o.size} {o.color} {o.shape} {_MOTION_PHRASE[o.motion]}" for o in self.objects]
        text = " and ".join(parts)
        if self.background == "day to night":
            return f"{text} while the sky turns from day to night"
        return f"{text} on a {self.background} background"


def sample_clip_spec(seed: int, index: int, vocab: Vocabulary = FULL_VOCABULARY) -> ClipSpec:
    """The attributes of clip `index` for `seed` (independent of every other clip)."""
    rng = np.random.default_rng([seed, index])
    n = 2 if rng.random() < vocab.two_object_fraction else 1
    colors = rng.choice(list(vocab.colors), size=n, replace=False)
    objects = []
    if n == 1:
        j = vocab.lane_jitter
        motion = str(rng.choice(vocab.motions, p=vocab.motion_weights))
        shape = str(rng.choice(SHAPES if motion != "rotate" else ("square", "triangle")))  # a rotating circle is invisible
        size = str(rng.choice(list(SIZES)))
        x, y = (float(c) for c in rng.uniform(0.5 - j, 0.5 + j, 2))
        objects.append(ObjectSpec(str(colors[0]), shape, size, motion, x, y, vocab.start))
    else:
        # a pair translates along one axis in two separate lanes (small objects), so they never hide each other
        horizontal = rng.random() < 0.5
        for k in range(2):
            motion = str(rng.choice(("left", "right") if horizontal else ("up", "down")))
            lane, free = float(rng.uniform(0.25, 0.3) if k == 0 else rng.uniform(0.7, 0.75)), float(rng.uniform(0.3, 0.7))
            x, y = (free, lane) if horizontal else (lane, free)
            objects.append(ObjectSpec(str(colors[k]), str(rng.choice(SHAPES)), "small", motion, x, y))
    background = str(rng.choice(list(vocab.backgrounds)))
    return ClipSpec(index, tuple(objects), background)


def _trajectory(obj: ObjectSpec, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame centre (cx, cy), radius and angle, all as fractions of the side; t in [0, 1], shape [T]."""
    r0 = SIZES[obj.size]
    cx = np.full_like(t, obj.x)
    cy = np.full_like(t, obj.y)
    r = np.full_like(t, r0)
    angle = np.zeros_like(t)
    # across 60% of the frame from an edge, 35% from the centre, so short strided clips still show motion
    first, travel = (0.5, 0.35) if obj.start == "centre" else (0.2, 0.6)
    if obj.motion == "left":
        cx = (1.0 - first) - travel * t
    elif obj.motion == "right":
        cx = first + travel * t
    elif obj.motion == "up":  # image y grows downwards
        cy = (1.0 - first) - travel * t
    elif obj.motion == "down":
        cy = first + travel * t
    elif obj.motion == "zoom_in":
        cx, cy, r = np.full_like(t, 0.5), np.full_like(t, 0.5), 0.12 + 0.24 * t
    elif obj.motion == "zoom_out":
        cx, cy, r = np.full_like(t, 0.5), np.full_like(t, 0.5), 0.36 - 0.24 * t
    elif obj.motion == "rotate":
        cx, cy, angle = np.full_like(t, 0.5), np.full_like(t, 0.5), t * np.pi
    return cx, cy, r, angle


def _signed_distance(shape: str, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance to the shape's edge (negative inside) in object coordinates (u right, v down, centred,
    rotated), as a fraction of the side; exact for the circle, the max of edge distances for polygons (exact
    near the edges, which is all anti-aliasing needs)."""
    if shape == "circle":
        return np.sqrt(u * u + v * v) - r
    if shape == "square":  # half side 0.85 r: about the same area as the circle
        return np.maximum(np.abs(u), np.abs(v)) - 0.85 * r
    # equilateral triangle, circumradius 1.2 r, apex up: three half-planes at inradius R/2
    half = 0.6 * r
    d = v - half
    for a in (np.pi / 6, 5 * np.pi / 6):  # the two slanted edges
        d = np.maximum(d, u * np.cos(a) - v * np.sin(a) - half)
    return d


def render_clip(spec: ClipSpec, num_frames: int, size: int) -> np.ndarray:
    """Render a clip: uint8 [T, H, W, 3] (H = W = size). Vectorised over frames; edges anti-aliased by coverage
    estimated from the signed distance (one pixel wide ramp), which is 4x cheaper than supersampling."""
    t = np.linspace(0.0, 1.0, num_frames, dtype=np.float32)
    c0, c1 = (np.asarray(c, np.float32) for c in BACKGROUNDS[spec.background])
    frames = np.empty((num_frames, size, size, 3), np.float32)
    frames[:] = (c0 + (c1 - c0) * t[:, None])[:, None, None, :]
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    X, Y = coords[None, None, :], coords[None, :, None]
    for obj in spec.objects:
        cx, cy, r, ang = (a.astype(np.float32)[:, None, None] for a in _trajectory(obj, t))
        dx, dy = X - cx, Y - cy
        cos, sin = np.cos(ang), np.sin(ang)
        u, v = dx * cos + dy * sin, -dx * sin + dy * cos
        alpha = np.clip(0.5 - _signed_distance(obj.shape, u, v, r) * size, 0.0, 1.0)[..., None]
        frames += alpha * (np.asarray(COLORS[obj.color], np.float32) - frames)
    return np.clip(frames + 0.5, 0, 255).astype(np.uint8)


def rgb_to_yuv420p(frame: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> PyAV's packed yuv420p layout [H*3/2, W] (BT.601 limited range, 2x2 chroma mean)."""
    f = frame.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    H, W = y.shape

    def sub(c: np.ndarray) -> np.ndarray:
        return c.reshape(H // 2, 2, W // 2, 2).mean(axis=(1, 3))

    planes = [y.ravel(), sub(cb).ravel(), sub(cr).ravel()]
    return np.clip(np.concatenate(planes) + 0.5, 0, 255).astype(np.uint8).reshape(H * 3 // 2, W)


def write_mp4(frames: np.ndarray, path: Path, fps: int = FPS, crf: int = 12) -> None:
    """Encode uint8 [T, H, W, 3] as H.264 yuv420p (single-threaded x264: deterministic bytes)."""
    import av

    T, H, W, _ = frames.shape
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        # ultrafast: with veryfast, x264 (single-threaded) still produced run-to-run byte differences on tiny frames
        stream.options = {"crf": str(crf), "preset": "ultrafast", "threads": "1"}
        stream.thread_count = 1
        for i, frame in enumerate(frames):
            # RGB -> yuv420p in numpy: letting swscale convert made the output bytes vary from run to run
            vf = av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame), format="yuv420p")
            vf.pts = i
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _make_one(args: tuple[int, int, int, int, str, Vocabulary]) -> dict:
    seed, index, num_frames, size, videos_dir, vocab = args
    spec = sample_clip_spec(seed, index, vocab)
    name = f"{index:06d}.mp4"
    write_mp4(render_clip(spec, num_frames, size), Path(videos_dir) / name)
    return clip_row(spec, f"videos/{name}", num_frames, size)


def clip_row(spec: ClipSpec, path: str, num_frames: int, size: int) -> dict:
    """One manifest row: the standard columns plus the ground truth (first object unprefixed, second as obj2_*)."""
    first = spec.objects[0]
    row = {
        "path": path, "text": spec.caption, "num_frames": num_frames, "fps": float(FPS), "height": size, "width": size,
        "color": first.color, "shape": first.shape, "motion": first.motion, "size": first.size,
        "background": spec.background, "num_objects": len(spec.objects),
    }
    second = spec.objects[1] if len(spec.objects) > 1 else None
    for key in ("color", "shape", "motion", "size"):
        row[f"obj2_{key}"] = getattr(second, key) if second else ""
    return row


def generate_synthetic(out: str | Path, num: int, frames: int, size: int, seed: int = 42, workers: int = 2,
                       progress: bool = True, vocab: Vocabulary = FULL_VOCABULARY) -> Path:
    """Write `num` clips to out/videos/*.mp4 and out/manifest.csv; returns the manifest path.

    Atomic: everything is written to a sibling temp dir and renamed over `out`, so an interrupted run never leaves a
    manifest pointing at missing clips.
    """
    from opensora_core.data.manifest import write_manifest

    if size % 2 or size < 16:
        raise ValueError(f"size must be even and >= 16 (H.264 yuv420p), got {size}")
    if num < 1 or frames < 1:
        raise ValueError(f"num and frames must be positive, got num={num} frames={frames}")
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "videos").mkdir(parents=True)
    jobs = [(seed, i, frames, size, str(tmp / "videos"), vocab) for i in range(num)]
    t0 = time.perf_counter()
    rows: list[dict] = []
    bar = _progress(num, progress)
    if workers > 1:
        with mp.get_context("spawn" if _torch_loaded() else "fork").Pool(workers) as pool:
            for row in pool.imap(_make_one, jobs, chunksize=max(1, min(32, num // (4 * workers)))):
                rows.append(row)
                bar.update(1)
    else:
        for job in jobs:
            rows.append(_make_one(job))
            bar.update(1)
    bar.close()
    import pandas as pd

    write_manifest(pd.DataFrame(rows), tmp / "manifest.csv")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    dt = time.perf_counter() - t0
    log.info("synthetic: %d clips of %dx%dx%d in %.1fs (%.0f clips/s)", num, frames, size, size, dt, num / dt)
    return out / "manifest.csv"


def _torch_loaded() -> bool:
    return "torch" in sys.modules  # forking a process that holds torch's thread pools can hang: spawn then


def _progress(total: int, enabled: bool):
    return tqdm(total=total, desc="synthetic clips", unit="clip", disable=not enabled)


def spec_as_dict(spec: ClipSpec) -> dict:
    return asdict(spec)
