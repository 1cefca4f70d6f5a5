"""Prompt adherence read back from pixels, temporal consistency, and a Fréchet distance in an offline feature space.

Adherence (synthetic dataset): the primary object is the set of saturated, bright pixels (every synthetic
background is unsaturated or dark, every object colour saturated). From that mask per frame we read
  - colour: circular mean hue of the mask, nearest hue among `synthetic.COLORS`;
  - position over time: the mask centroid per frame (fractions of the side, y grows downwards);
  - motion: the linear trend of the centroid (left/right/up/down, normalised by the dataset's 60% travel) and
    of the log mask area (zoom_in/zoom_out, normalised by the dataset's 3x radius change); a still object whose
    silhouette changes is `rotate`, a still unchanging one `static` (never a correct answer);
  - shape: fill ratio of the mask in its bounding box (triangle ~0.5, circle ~0.79, square 1.0).
Every clip gets a prediction (noise too), so noise scores near chance instead of being silently dropped.
Only single-object prompts are scored: with two objects the "primary" one is ambiguous from pixels alone.

Chance levels are reported two ways: `majority` is the best any prompt-blind model can score in expectation
(the frequency of the most common ground-truth value; the conservative bar), `indep` is the accuracy expected if
these very predictions were shuffled across prompts (sum over values of p_pred * p_true).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from opensora_core.data.synthetic import COLORS, MOTIONS, SHAPES

# Pixel thresholds for the object mask (HSV saturation and value in [0, 1]). The darkest synthetic object
# channel max is 200/255 and its saturation >= 0.8; the most saturated background ("night", 12,14,32) has
# value 0.13, the brightest ("day", 170,185,200) saturation 0.15.
SAT_MIN = 0.4
VAL_MIN = 0.3
MIN_AREA = 0.002          # fraction of the frame below which a frame has no object
TRAVEL = 0.6              # synthetic translation from an edge: 0.2 -> 0.8 of the side (0.35 from the centre)
ZOOM_LOG = math.log(3.0)  # synthetic zoom: radius 0.12 -> 0.36
STILL = 0.1               # normalised motion score under which the object is considered still
ROTATE_CHANGE = 0.08      # 1 - IoU of centred silhouettes above which a still object is rotating


def _hue_deg(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in degrees of rgb `[..., 3]` in [0, 1]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    d = np.where(mx - mn > 1e-6, mx - mn, 1.0)
    h = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))
    return h * 60.0


COLOR_HUES: dict[str, float] = {k: float(_hue_deg(np.asarray(v, np.float32) / 255.0)) for k, v in COLORS.items()}


def to_frames(video: Any) -> np.ndarray:
    """Normalise a video to float32 `[T, H, W, 3]` in [0, 1].

    Accepts uint8 `[T, H, W, 3]` (decoded files) or float `[3, T, H, W]` in [-1, 1] (model output, numpy or torch).
    """
    if hasattr(video, "detach"):
        video = video.detach().float().cpu().numpy()
    v = np.asarray(video)
    if v.dtype == np.uint8:
        if v.ndim != 4 or v.shape[-1] != 3:
            raise ValueError(f"uint8 video must be [T, H, W, 3], got {v.shape}")
        return v.astype(np.float32) / 255.0
    if v.ndim != 4 or v.shape[0] != 3:
        raise ValueError(f"float video must be [3, T, H, W] in [-1, 1], got {v.shape}")
    return np.clip((v.transpose(1, 2, 3, 0).astype(np.float32) + 1.0) / 2.0, 0.0, 1.0)


def object_mask(frames: np.ndarray) -> np.ndarray:
    """Saturated bright pixels: bool `[T, H, W]` from frames `[T, H, W, 3]` in [0, 1]."""
    mx, mn = frames.max(-1), frames.min(-1)
    sat = (mx - mn) / np.maximum(mx, 1e-6)
    return (sat > SAT_MIN) & (mx > VAL_MIN)


def _trend(values: np.ndarray, times: np.ndarray) -> float:
    """Least-squares change of `values` from the first to the last valid time (0 with < 2 points)."""
    if len(values) < 2 or np.ptp(times) == 0:
        return 0.0
    slope = np.polyfit(times, values, 1)[0]
    return float(slope * np.ptp(times))


def _centred_change(mask: np.ndarray, valid: np.ndarray, cy: np.ndarray, cx: np.ndarray) -> float:
    """Mean 1 - IoU between each valid frame's silhouette and the first one's, both shifted to their centroid."""
    idx = np.flatnonzero(valid)
    if len(idx) < 2:
        return 0.0
    H, W = mask.shape[1:]

    def centred(i: int) -> np.ndarray:
        return np.roll(mask[i], (int(round(H / 2 - cy[i] * H)), int(round(W / 2 - cx[i] * W))), axis=(0, 1))

    ref = centred(idx[0])
    changes = []
    for i in idx[1:]:
        cur = centred(i)
        union = np.logical_or(ref, cur).sum()
        changes.append(1.0 - np.logical_and(ref, cur).sum() / max(union, 1))
    return float(np.mean(changes))


def analyze_clip(video: Any) -> dict[str, Any]:
    """Read colour, shape, trajectory and motion of the primary (saturated) object of one clip.

    Args: video as accepted by `to_frames`.
    Returns: {"color", "shape", "motion", "centroids": [[x, y] or None per frame], "area": [T], "dx", "dy",
        "dzoom" (log radius change), "shape_change", "fill"}.
    """
    frames = to_frames(video)
    T, H, W, _ = frames.shape
    mask = object_mask(frames)
    area = mask.reshape(T, -1).mean(1)
    valid = area >= MIN_AREA
    ys, xs = (np.arange(H, dtype=np.float32) + 0.5) / H, (np.arange(W, dtype=np.float32) + 0.5) / W
    msum = np.maximum(mask.sum((1, 2)), 1)
    cy = (mask.sum(2) * ys).sum(1) / msum
    cx = (mask.sum(1) * xs).sum(1) / msum
    times = np.arange(T, dtype=np.float32) / max(T - 1, 1)

    # colour: saturation-weighted circular mean hue over all object pixels of the clip
    sel = mask if mask.any() else np.ones_like(mask)
    px = frames[sel]
    mx, mn = px.max(-1), px.min(-1)
    weight = (mx - mn) / np.maximum(mx, 1e-6)
    hue = np.deg2rad(_hue_deg(px))
    mean_hue = math.degrees(math.atan2((weight * np.sin(hue)).sum(), (weight * np.cos(hue)).sum())) % 360.0
    color = min(COLOR_HUES, key=lambda k: abs((COLOR_HUES[k] - mean_hue + 180.0) % 360.0 - 180.0))

    # motion: trends over valid frames, each normalised by the dataset's full-clip change
    v = np.flatnonzero(valid)
    dx = _trend(cx[v], times[v])
    dy = _trend(cy[v], times[v])
    dzoom = 0.5 * _trend(np.log(np.maximum(area[v], 1e-6)), times[v])  # log radius
    scores = {"right": dx / TRAVEL, "left": -dx / TRAVEL, "down": dy / TRAVEL, "up": -dy / TRAVEL,
              "zoom_in": dzoom / ZOOM_LOG, "zoom_out": -dzoom / ZOOM_LOG}
    best = max(scores, key=scores.get)
    change = _centred_change(mask, valid, cy, cx)
    if scores[best] >= STILL:
        motion = best
    else:
        motion = "rotate" if change > ROTATE_CHANGE else "static"

    # shape: fill ratio of the silhouette in its bounding box; the max over frames, because a rotating square
    # only fills its box at its axis-aligned frames
    fills = []
    for i in v:
        rows, cols = np.flatnonzero(mask[i].any(1)), np.flatnonzero(mask[i].any(0))
        box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
        fills.append(mask[i].sum() / box)
    fill = float(np.median(fills)) if motion != "rotate" and fills else float(max(fills, default=0.0))
    shape = "triangle" if fill < 0.66 else "circle" if fill < 0.9 else "square"

    return {
        "color": color, "shape": shape, "motion": motion, "hue": mean_hue,
        "centroids": [[float(cx[i]), float(cy[i])] if valid[i] else None for i in range(T)],
        "area": [float(a) for a in area], "dx": dx, "dy": dy, "dzoom": dzoom, "shape_change": change, "fill": fill,
    }


ATTRIBUTES: dict[str, Sequence[str]] = {"color": tuple(COLORS), "motion": MOTIONS, "shape": SHAPES}


def chance_levels(truth: Sequence[str], pred: Sequence[str]) -> dict[str, float]:
    """`majority`: best expected accuracy of a prompt-blind model; `indep`: accuracy of these predictions
    shuffled across prompts."""
    n = len(truth)
    if n == 0:
        return {"majority": float("nan"), "indep": float("nan")}
    ct, cp = Counter(truth), Counter(pred)
    return {"majority": max(ct.values()) / n, "indep": sum(ct[k] * cp.get(k, 0) for k in ct) / (n * n)}


def adherence(videos: Iterable[Any], truths: Iterable[dict[str, Any]]) -> tuple[dict[str, float], list[dict]]:
    """Prompt adherence of clips against their ground truth (manifest rows with color/shape/motion/num_objects).

    Returns (summary, rows): summary has `{attr}_acc`, `{attr}_chance` (majority), `{attr}_chance_indep` for
    attr in color/motion/shape, `direction_acc`, `axis_acc`, `sign_acc` (`direction_scores`) and
    `adherence_n`; rows are per-clip predictions next to the truth. Multi-object prompts are skipped.
    """
    rows = []
    for video, truth in zip(videos, truths, strict=True):
        if int(truth.get("num_objects", 1)) != 1:
            continue
        got = analyze_clip(video)
        row = {"text": truth.get("text", "")}
        for attr in ATTRIBUTES:
            row[f"true_{attr}"], row[f"pred_{attr}"] = str(truth[attr]), got[attr]
        row.update({k: got[k] for k in ("dx", "dy", "dzoom", "shape_change", "fill", "hue")})
        rows.append(row)
    summary: dict[str, float] = {"adherence_n": float(len(rows))}
    for attr in ATTRIBUTES:
        t, p = [r[f"true_{attr}"] for r in rows], [r[f"pred_{attr}"] for r in rows]
        summary[f"{attr}_acc"] = float(np.mean([a == b for a, b in zip(t, p)])) if rows else float("nan")
        ch = chance_levels(t, p)
        summary[f"{attr}_chance"], summary[f"{attr}_chance_indep"] = ch["majority"], ch["indep"]
    summary.update(direction_scores(rows))
    return summary, rows


AXIS = {"left": "horizontal", "right": "horizontal", "up": "vertical", "down": "vertical"}


def direction_scores(rows: Sequence[dict]) -> dict[str, float]:
    """Translation prompts (left/right/up/down) scored three ways, from `adherence`'s rows:

    `direction_acc` the right direction; `axis_acc` a translation along the right axis (horizontal/vertical,
    either sign); `sign_acc` the right sign among the samples on the right axis (chance 0.5). direction_acc =
    axis_acc x sign_acc, and the split tells "does not move where the caption says" (axis) from "moves along
    the right line, either way" (sign: the caption's direction word against the frame order).
    """
    directional = [r for r in rows if r["true_motion"] in AXIS]
    on_axis = [r for r in directional if AXIS.get(r["pred_motion"]) == AXIS[r["true_motion"]]]
    nan = float("nan")
    return {
        "direction_acc": float(np.mean([r["true_motion"] == r["pred_motion"] for r in directional])) if directional else nan,
        "axis_acc": len(on_axis) / len(directional) if directional else nan,
        "sign_acc": float(np.mean([r["true_motion"] == r["pred_motion"] for r in on_axis])) if on_axis else nan,
    }


def temporal_change(videos: Iterable[Any]) -> float:
    """Mean absolute frame-to-frame change in [0, 1] pixel units over clips (lower = smoother; a static clip is 0)."""
    vals = []
    for video in videos:
        f = to_frames(video)
        if len(f) > 1:
            vals.append(float(np.abs(np.diff(f, axis=0)).mean()))
    return float(np.mean(vals)) if vals else float("nan")


# --- Fréchet distance in a random-projection space --------------------------------------------------------
RP_FRAMES, RP_SIZE, RP_DIM, RP_SEED = 4, 16, 32, 0


def random_projection_features(videos: Iterable[Any]) -> np.ndarray:
    """Features `[N, RP_DIM]`: each clip resampled to 4 frames of 16x16 RGB (nearest frame, area-mean pixels),
    centred to [-1, 1] and projected with a fixed Gaussian matrix (seed 0). A cheap, offline, honest feature
    space: it sees colour layout and coarse motion, nothing semantic. Not I3D, so this is not FVD."""
    proj = np.random.default_rng(RP_SEED).standard_normal((RP_FRAMES * RP_SIZE * RP_SIZE * 3, RP_DIM)).astype(np.float32)
    proj /= math.sqrt(proj.shape[0])
    feats = []
    for video in videos:
        f = to_frames(video)
        T, H, W, _ = f.shape
        f = f[np.round(np.linspace(0, T - 1, RP_FRAMES)).astype(int)]
        f = _resize_area(f, RP_SIZE)
        feats.append((f.reshape(-1) * 2.0 - 1.0) @ proj)
    return np.stack(feats) if feats else np.zeros((0, RP_DIM), np.float32)


def _resize_area(frames: np.ndarray, size: int) -> np.ndarray:
    """Resize `[T, H, W, 3]` to `[T, size, size, 3]`: block mean when divisible, else nearest pixel."""
    T, H, W, C = frames.shape
    if H % size == 0 and W % size == 0:
        return frames.reshape(T, size, H // size, size, W // size, C).mean((2, 4))
    yi = (np.arange(size) * H // size).astype(int)
    xi = (np.arange(size) * W // size).astype(int)
    return frames[:, yi][:, :, xi]


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets `a [N, D]` and `b [M, D]`:
    |mu_a - mu_b|^2 + tr(Sa + Sb - 2 (Sa^1/2 Sb Sa^1/2)^1/2), via symmetric eigendecompositions (stable for
    the rank-deficient covariances of a few dozen samples)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ sb @ root_a)
    return float(mu @ mu + np.trace(sa) + np.trace(sb) - 2.0 * np.sqrt(np.clip(inner, 0, None)).sum())


def frechet_random_projection(generated: Iterable[Any], reference: Iterable[Any]) -> float:
    """Fréchet distance of generated vs reference clips in the random-projection feature space."""
    return frechet_distance(random_projection_features(generated), random_projection_features(reference))
