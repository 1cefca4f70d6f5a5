"""Scene detection: hard cuts found as content changes between consecutive downscaled frames.

Each frame is decoded with PyAV and scaled by swscale to a 64x36 grey thumbnail (cheap even for 4K: the decoder
does the work, the comparison touches 2304 pixels). A cut is declared where the mean absolute difference of
consecutive thumbnails exceeds `threshold` (0-255 scale) *and* is `ratio` times the median of the recent
differences, so fast but continuous motion (high but steady differences) is not mistaken for a cut.

Heavy or optional imports (av) happen inside the functions that need them, so importing this module (the CLI, the
stage processes, the Dask workers do) does not load them.
"""

from __future__ import annotations

from collections import deque

import numpy as np

THUMB = (64, 36)


def frame_differences(path_or_file, max_seconds: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-frame timestamps [N] (s), mean |delta| to the previous thumbnail [N] (0 for the first), and the end time
    (last timestamp + one frame)."""
    import av

    times, diffs = [], []
    prev = None
    with av.open(path_or_file) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        for frame in container.decode(stream):
            t = float(frame.time) if frame.time is not None else len(times) / rate
            if max_seconds is not None and t > max_seconds:
                break
            thumb = frame.reformat(width=THUMB[0], height=THUMB[1], format="gray").to_ndarray()[:, : THUMB[0]].astype(np.int16)
            diffs.append(0.0 if prev is None else float(np.abs(thumb - prev).mean()))
            times.append(t)
            prev = thumb
    if not times:
        raise ValueError("no decodable video frames")
    return np.asarray(times), np.asarray(diffs), times[-1] + 1.0 / rate


def find_cuts(diffs: np.ndarray, threshold: float = 30.0, ratio: float = 3.0, window: int = 15, min_gap: int = 8) -> list[int]:
    """Frame indices where a new shot starts (never 0); cuts closer than `min_gap` frames to the previous one are
    dropped (flashes, fades)."""
    cuts: list[int] = []
    recent: deque[float] = deque(maxlen=window)
    for i, d in enumerate(diffs):
        if i > 0 and d > threshold and d > ratio * (np.median(recent) if recent else 0.0) and (not cuts or i - cuts[-1] >= min_gap):
            cuts.append(i)
        elif i > 0:
            recent.append(d)  # a cut's own difference must not raise the baseline of the next shot
    return cuts


def detect_scenes(path_or_file, threshold: float = 30.0, ratio: float = 3.0) -> list[tuple[float, float]]:
    """Shots of a video as [start, end) second ranges covering it."""
    times, diffs, end = frame_differences(path_or_file)
    bounds = [float(times[0])] + [float(times[i]) for i in find_cuts(diffs, threshold, ratio)] + [end]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
