"""Training data from a manifest: PyAV decoding, frame-stride temporal sampling, resize + centre crop; and a
distributed sampler that resumes exactly where a killed job stopped.

Heavy or optional imports (PIL, av, fsspec, torch) happen inside the functions that need them, so importing this
module (the CLI, the stage processes, the Dask workers do) does not load them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from opensora_core.data.manifest import is_remote, read_manifest, validate_manifest
from opensora_core.remote import as_remote_error

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def open_binary(path: str):
    """A local path as is; an s3:// (or other fsspec) URL as a file object (credentials from the AWS environment)."""
    if is_remote(path):
        import fsspec

        return fsspec.open(path, "rb").open()
    return path


def decode_frames(path: str, start: float | None = None, end: float | None = None, max_frames: int | None = None,
                  select: Callable[[int], Sequence[int]] | None = None) -> np.ndarray:
    """Decode RGB frames uint8 [N, H, W, 3] of a file, or of its [start, end) seconds range (seek, then drop the
    frames before start), stopping after `max_frames` frames. `select(n)` -> the indices to keep of the n decoded
    frames: only those are converted to RGB (the conversion cost more than the decoding: a 16 px stage keeps 4 of
    a clip's 32 frames)."""
    import av

    decoded = []
    with av.open(open_binary(path)) as container:
        stream = container.streams.video[0]
        tb = float(stream.time_base) if stream.time_base else 1.0
        if start:
            container.seek(int(start / tb), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            t = frame.pts * tb if frame.pts is not None else None
            if start is not None and t is not None and t < start - 1e-3:
                continue  # decoded from the keyframe before start
            if end is not None and t is not None and t >= end - 1e-3:
                break
            decoded.append(frame)  # kept in the decoder's format until we know which frames are wanted
            if max_frames and len(decoded) >= max_frames:
                break
        if not decoded:
            raise ValueError(f"no frames decoded from {path}" + (f" in [{start}, {end})" if start is not None else ""))
        keep = range(len(decoded)) if select is None else select(len(decoded))
        return np.stack([decoded[i].to_ndarray(format="rgb24") for i in keep])


def temporal_indices(num_available: int, num_frames: int, frame_interval: int, start: int = 0) -> list[int]:
    """Frame indices start, start+interval, ... (num_frames of them); a clip too short repeats its last frame."""
    return [min(start + i * frame_interval, num_available - 1) for i in range(num_frames)]


def resize_center_crop(frames, image_size: int):
    """uint8 [T, H, W, 3] (numpy) -> float [3, T, S, S] in [-1, 1]: short side to S (area when shrinking, bilinear
    with antialias when growing), then a centre crop."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # [T, 3, H, W]
    H, W = x.shape[-2:]
    scale = image_size / min(H, W)
    size = (max(image_size, round(H * scale)), max(image_size, round(W * scale)))
    if scale < 1:
        x = F.interpolate(x, size=size, mode="area")
    elif size != (H, W):
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - image_size) // 2, (size[1] - image_size) // 2
    x = x[:, :, top:top + image_size, left:left + image_size]
    return (x / 127.5 - 1.0).clamp(-1, 1).permute(1, 0, 2, 3).contiguous()


class VideoDataset:
    """Clips of a manifest as tensors. item -> {"video": [3, T, S, S] in [-1, 1], "text": str, "index": int}.

    Args:
        manifest: a manifest path or a validated DataFrame (local clip paths absolute).
        num_frames, frame_interval: T frames taken every `frame_interval` source frames.
        image_size: output side S (short side resized, centre crop).
        split: keep only rows of this split (when the manifest has a split column); None keeps all.
        seed: None -> the temporal window starts at frame 0 (deterministic: caching, evaluation); an int -> a random
            start drawn from (seed, epoch, index), so a resumed run sees the same windows again.
        require_text: reject rows with an empty caption (training).
    Image rows (png/jpg) are repeated to T frames. A clip that fails to decode is skipped with a warning (counted
    in `num_errors`) and the next clip is returned instead, so a bad file never ends an epoch. A manifest read from
    a path drops its bad rows up front, each with a reason (`rejects`: row, path, reason; see
    manifest.screen_manifest); a DataFrame is validated strictly.
    """

    def __init__(self, manifest: str | Path | pd.DataFrame, num_frames: int, frame_interval: int, image_size: int,
                 split: str | None = "train", seed: int | None = None, require_text: bool = False):
        if isinstance(manifest, pd.DataFrame):
            df, self.rejects = validate_manifest(manifest), None
        else:
            df = read_manifest(manifest, reject_bad_rows=True, require_text=require_text)
            self.rejects = df.attrs.get("rejects")
        if split is not None and "split" in df.columns:
            df = df[df["split"] == split]
        self.df = df.reset_index(drop=False).rename(columns={"index": "row"})
        self.num_frames, self.frame_interval, self.image_size = num_frames, frame_interval, image_size
        self.seed, self.epoch, self.num_errors = seed, 0, 0

    def __len__(self) -> int:
        return len(self.df)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _window_start(self, num_available: int, index: int) -> int:
        span = (self.num_frames - 1) * self.frame_interval + 1
        if self.seed is None or num_available <= span:
            return 0
        return int(np.random.default_rng([self.seed, self.epoch, index]).integers(0, num_available - span + 1))

    def load(self, index: int) -> dict:
        """Decode one clip without error handling (raises on a bad file)."""
        row = self.df.iloc[index]
        if str(row["path"]).lower().endswith(IMAGE_SUFFIXES):
            from PIL import Image

            with Image.open(open_binary(row["path"])) as im:
                frames = np.repeat(np.asarray(im.convert("RGB"))[None], self.num_frames, axis=0)
        else:
            start = float(row["start"]) if "start" in row and pd.notna(row.get("start")) else None
            end = float(row["end"]) if "end" in row and pd.notna(row.get("end")) else None
            frames = decode_frames(row["path"], start, end, select=lambda n: temporal_indices(
                n, self.num_frames, self.frame_interval, self._window_start(n, index)))
        return {"video": resize_center_crop(frames, self.image_size), "text": str(row["text"]), "index": int(row["row"])}

    def __getitem__(self, index: int) -> dict:
        for attempt in range(min(len(self), 20)):
            i = (index + attempt) % len(self)
            try:
                return self.load(i)
            except Exception as e:  # noqa: BLE001 - any decoder failure: skip the clip, keep training
                path = str(self.df.iloc[i]["path"])
                remote = as_remote_error(e, f"reading {path}") if is_remote(path) else None
                if remote is not None:  # the store is down, not the clip: skipping would drop every clip
                    raise remote from e
                self.num_errors += 1
                log.warning("skipping unreadable clip %s (%s: %s); %d skipped so far", self.df.iloc[i]["path"],
                            type(e).__name__, e, self.num_errors)
        raise RuntimeError(f"20 consecutive clips failed to decode from index {index}; is the data readable?")


class ResumableDistributedSampler:
    """Shards a dataset over ranks and resumes mid-epoch, on the same or on another number of ranks.

    The rule, which is what "the same run" means for the data when the world size changes:
    - epoch e has one global order of the N indices: a permutation seeded by seed + e (0..N-1 without
      shuffle), the same whatever the number of ranks;
    - the position is the number of samples of that order consumed so far, all ranks together;
    - from position P, rank r of R takes order[P + r], order[P + r + R], ...: floor((N - P) / R) samples, the
      same count on every rank. A global batch (B per rank x R) is thus always the next B x R samples of the
      order, and each step's samples do not depend on how they are spread over the ranks;
    - a checkpoint stores P (`state_dict`); a job resumed on R' ranks continues at P with stride R'.
    So every sample is seen at most once per epoch, and the run's sample order is kept across a world-size
    change. No padding: the tail that does not fill a global batch (fewer than B x R samples, and the < R
    of floor) is skipped until the next epoch's new order. Unchanged world size: exactly the samples the
    uninterrupted run would have seen.

    With DataLoader workers prefetching ahead, the indices handed out run ahead of the samples trained on:
    pass the true count, `state_dict(consumed=batches_since_start * batch_size)` (this rank's samples since
    this sampler started the epoch or was resumed).
    """

    def __init__(self, dataset, num_replicas: int | None = None, rank: int | None = None, shuffle: bool = True, seed: int = 0):
        if num_replicas is None or rank is None:
            import torch.distributed as dist

            ready = dist.is_available() and dist.is_initialized()
            num_replicas = num_replicas if num_replicas is not None else (dist.get_world_size() if ready else 1)
            rank = rank if rank is not None else (dist.get_rank() if ready else 0)
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.n, self.num_replicas, self.rank, self.shuffle, self.seed = len(dataset), num_replicas, rank, shuffle, seed
        self.epoch = 0
        self.start = 0  # global position where this sampler started the epoch (0, or where a checkpoint left it)
        self.position = 0  # this rank's indices handed out since `start`

    @property
    def num_samples(self) -> int:
        """This rank's samples from `start` to the end of the epoch."""
        return max(0, self.n - self.start) // self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.start, self.position = epoch, 0, 0

    def global_order(self) -> list[int]:
        """The epoch's order of all N indices (independent of the number of ranks)."""
        import torch

        if not self.shuffle:
            return list(range(self.n))
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()

    def epoch_indices(self) -> list[int]:
        """This rank's indices for the rest of the epoch, from `start`."""
        first = self.start + self.rank
        return self.global_order()[first:first + self.num_samples * self.num_replicas:self.num_replicas]

    def __iter__(self):
        indices = self.epoch_indices()
        while self.position < len(indices):
            i = indices[self.position]
            self.position += 1
            yield i

    def __len__(self) -> int:
        return self.num_samples - self.position

    def state_dict(self, consumed: int | None = None) -> dict:
        """`position`: samples of the epoch's global order consumed, all ranks together (see the class doc)."""
        mine = self.position if consumed is None else int(consumed)
        return {"epoch": self.epoch, "position": self.start + mine * self.num_replicas, "order": "global",
                "seed": self.seed, "num_replicas": self.num_replicas}

    def load_state_dict(self, state: dict) -> None:
        saved_replicas = int(state.get("num_replicas", self.num_replicas))
        position = int(state["position"])
        if state.get("order") != "global":  # older checkpoints counted one rank's samples
            position *= saved_replicas
        if saved_replicas != self.num_replicas:
            log.info("resuming on %d data-parallel ranks instead of %d: the epoch's order continues at sample %d",
                     self.num_replicas, saved_replicas, position)
        self.epoch, self.start, self.position = int(state["epoch"]), position, 0
