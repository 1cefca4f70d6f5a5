"""Fixtures of the evaluation tests: real synthetic clips (rendered by the data package, through H.264 and back)."""

from __future__ import annotations

import numpy as np
import pytest


def decode_mp4(path) -> np.ndarray:
    """uint8 [T, H, W, 3] frames of a video file."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="session")
def heldout_clips(tmp_path_factory):
    """48 synthetic clips (32 frames, 64x64) written as mp4 by the real generator: (frames list, manifest rows)."""
    from opensora_core.data.manifest import read_manifest
    from opensora_core.data.synthetic import generate_synthetic

    manifest = generate_synthetic(tmp_path_factory.mktemp("syn") / "data", num=48, frames=32, size=64, seed=11,
                                  workers=1, progress=False)
    df = read_manifest(manifest)
    return [decode_mp4(p) for p in df["path"]], df.to_dict("records")
