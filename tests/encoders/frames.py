"""Synthetic 64x64 frames for encoder tests: coloured shapes on solid or gradient backgrounds."""

from __future__ import annotations

import math

import torch

PALETTE = [(230, 40, 40), (40, 200, 60), (40, 80, 230), (240, 220, 40), (240, 140, 30), (150, 60, 200),
           (250, 250, 250), (20, 20, 20), (40, 210, 210), (230, 90, 180)]


def render_frames(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """`n` frames `[n, 3, size, size]` in [-1, 1]: one to three circles/squares/triangles per frame."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    colors = torch.tensor(PALETTE, dtype=torch.float32) / 127.5 - 1
    out = torch.empty(n, 3, size, size)
    for i in range(n):
        c0, c1 = colors[torch.randint(len(PALETTE), (2,), generator=g)]
        if torch.rand(1, generator=g) < 0.5:  # gradient background
            a = float(torch.rand(1, generator=g)) * 2 * math.pi
            ramp = ((xx * math.cos(a) + yy * math.sin(a)) / size).clamp(-1, 1) * 0.5 + 0.5
            img = c0[:, None, None] * (1 - ramp) + c1[:, None, None] * ramp
        else:
            img = c0[:, None, None].expand(3, size, size).clone()
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            color = colors[int(torch.randint(len(PALETTE), (1,), generator=g))]
            cx, cy = (torch.rand(2, generator=g) * size).tolist()
            r = float(torch.rand(1, generator=g)) * size / 6 + size / 12
            kind = int(torch.randint(3, (1,), generator=g))
            if kind == 0:
                m = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
            elif kind == 1:
                m = ((xx - cx).abs() <= r) & ((yy - cy).abs() <= r)
            else:
                m = (yy - cy <= r) & (yy - cy >= -r) & ((xx - cx).abs() <= (yy - cy + r) / 2)
            img = torch.where(m, color[:, None, None], img)
        out[i] = img
    return out


def write_videos(folder, num: int, frames: int = 4, size: int = 64, seed: int = 0) -> list:
    """Write `num` mp4 clips of rendered frames with PyAV (yuv420p, near-lossless); returns their paths."""
    from pathlib import Path

    import av
    import numpy as np

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(num):
        x = ((render_frames(frames, size, seed=seed * 1000 + i) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        path = folder / f"clip_{i:03d}.mp4"
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=8)
            stream.width = stream.height = size
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "10"}
            for frame in x.permute(0, 2, 3, 1).numpy():
                out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            out.mux(stream.encode())
        paths.append(path)
    return paths
