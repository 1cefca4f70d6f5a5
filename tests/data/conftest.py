"""Fixtures for data tests: tiny videos built on the fly, and the real clips in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _counter_video(path: Path, num_frames: int = 32, size: int = 32, fps: int = 8) -> Path:
    """Flat grey frames whose level encodes the frame index: level(i) = 10 + 7 i."""
    from opensora_core.data.synthetic import write_mp4

    levels = 10 + 7 * np.arange(num_frames)
    frames = np.broadcast_to(levels[:, None, None, None], (num_frames, size, size, 3)).astype(np.uint8)
    write_mp4(np.ascontiguousarray(frames), path, fps=fps)
    return path


def _frame_index_of(video_tensor) -> list[int]:
    """Inverse of counter_video for a [3, T, H, W] tensor in [-1, 1]."""
    levels = (video_tensor.mean(dim=(0, 2, 3)) + 1) * 127.5
    return [int(round((float(v) - 10) / 7)) for v in levels]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "bigbuckbunny.mp4").exists():
        pytest.skip(f"real clips not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def make_counter_video():
    """counter_video(path, num_frames=32, size=32, fps=8) -> path; frame i has grey level 10 + 7 i."""
    return _counter_video


@pytest.fixture(scope="session")
def frame_index_of():
    """[3, T, H, W] tensor of a counter video -> the source frame index of each of the T frames."""
    return _frame_index_of
