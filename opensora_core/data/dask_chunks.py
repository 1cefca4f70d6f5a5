"""The code a Dask worker runs for the data stages: a chunk of files to probe, of batches to encode, of clips to
caption; and the chunking rule.

Work goes to the workers as a few large chunks per worker, as plain Dask futures (opensora_core.data.parallel):
a Prefect task run per small unit costs far more than the work of a tiny clip (docs/results.md, Dask data prep).
Each worker gets a few chunks (more than one, so a slow worker does not hold up the rest, and an interrupted
ingest keeps what finished). Nothing here imports Prefect. Models load once per worker process. Heavy imports
(torch, the encoders, PyAV) happen inside the chunk functions: a worker pays them once, on its first chunk, and
the seconds are reported as the chunk's setup time.
"""

from __future__ import annotations

import json
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from opensora_core.data.cache import default_encoder_key, encode_shard

CHUNKS_PER_WORKER = 4  # data.dask_chunks_per_worker's default
# from_pretrained (meta-device init) is not thread-safe: one model load at a time per worker process, encoders and
# captioners alike
LOAD_LOCK = threading.Lock()


def chunk_ranges(n: int, slots: int, chunks_per_slot: int = CHUNKS_PER_WORKER) -> list[range]:
    """Items 0..n-1 as contiguous, near-equal ranges, `slots * chunks_per_slot` of them (at most n); together
    they hold every item exactly once, in order. slots: the cluster's worker threads."""
    k = min(n, max(1, slots) * max(1, chunks_per_slot))
    q, r = divmod(n, k) if k else (0, 0)
    bounds = [0]
    for i in range(k):
        bounds.append(bounds[-1] + q + (i < r))  # the first n % k chunks hold one item more
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def probe_chunk(paths: list[str], threshold: float, scene_split: bool) -> dict:
    """Source files -> {"records": their ingest records (probe, sha256, scenes) or rejects, "seconds": {...}}."""
    t0 = time.perf_counter()
    from opensora_core.data.ingest import process_file, s3_filesystem

    fs = s3_filesystem() if any(p.startswith("s3://") for p in paths) else None
    t1 = time.perf_counter()
    records = [process_file(p, fs, threshold, scene_split) for p in paths]
    return {"records": records, "seconds": {"setup": t1 - t0, "work": time.perf_counter() - t1}}


def encode_chunk(params, stage: str, manifest: str, pieces: list[tuple[str | None, list[int], str]],
                 batch_size: int, threads: int) -> dict:
    """Encode each piece (split, clip indices, out file) of one stage's cache and write it as a safetensors file
    with encode_shard's tensors -> {"pieces": [{"file", "count", "texts", "rows"}, ...], "seconds": {...}}.

    threads: torch's intra-op threads while encoding, those of the process the single-process stage would run in:
    a conv's float sums can depend on how many threads split them (a 2-clip batch differs in the last bit between
    1 and 2 threads here), and a Dask worker starts with OMP_NUM_THREADS=1."""
    t0 = time.perf_counter()
    import torch
    from safetensors.torch import save_file

    from opensora_core.data.dataset import VideoDataset

    st = params.load().stage(stage)
    vae, text_encoder = encoders(params)
    datasets: dict = {}
    t1 = time.perf_counter()
    out = []
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for split, indices, file in pieces:
            if split not in datasets:
                datasets[split] = VideoDataset(manifest, st.num_frames, st.frame_interval, st.image_size, split=split,
                                               require_text=True)
            tensors, texts = encode_shard(datasets[split], indices, vae, text_encoder, batch_size)
            save_file(tensors, file)
            out.append({"file": Path(file).name, "count": len(texts), "texts": texts, "rows": tensors["index"].tolist()})
    finally:
        torch.set_num_threads(before)
    return {"pieces": out, "seconds": {"setup": t1 - t0, "work": time.perf_counter() - t1}}


def encoders(params):
    """The config's VAE and text encoder, loaded once per worker process (shared by its threads: eval, no_grad)
    and again only when their weights change (a long-lived cluster outlives a retrained tiny VAE)."""
    with LOAD_LOCK:
        return _encoders(params, default_encoder_key(params.load()))


@lru_cache(maxsize=2)
def _encoders(params, encoder_key: str):
    import torch

    from opensora_core.encoders import build_text_encoder, build_vae

    cfg = params.load()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return build_vae(cfg, device).eval(), build_text_encoder(cfg, device).eval()


def merge_pieces(parts: list[Path], out: Path) -> None:
    """Consecutive pieces of one shard -> the shard file encode_shard would have written for all their clips."""
    import torch
    from safetensors.torch import load_file, save_file

    loaded = [load_file(str(p)) for p in parts]
    save_file({k: torch.cat([t[k] for t in loaded]).contiguous() for k in loaded[0]}, str(out))
    for p in parts:
        p.unlink()


def caption_chunk(rows: list[dict], captioner: Any) -> list[str]:
    """One batch of manifest rows -> one caption each. `captioner`: a Captioner object or (name, kwargs)."""
    cap = _load_captioner(captioner) if isinstance(captioner, tuple) else captioner
    texts = cap.caption(rows)
    if len(texts) != len(rows):
        raise RuntimeError(f"captioner {cap.name} returned {len(texts)} captions for {len(rows)} clips")
    return texts


def _load_captioner(spec: tuple[str, dict]):
    with LOAD_LOCK:
        return _captioner(spec[0], json.dumps(spec[1], sort_keys=True))


@lru_cache(maxsize=4)
def _captioner(name: str, kwargs_json: str):
    """One captioner per worker process (a VLM loads once, not once per batch)."""
    from opensora_core.data.caption import build_captioner

    return build_captioner(name, **json.loads(kwargs_json))
