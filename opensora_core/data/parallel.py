"""The data stages on a Dask cluster: probing + scene splitting, captioning and latent caching, spread over the
workers of a `distributed.Client` that the caller passes in (None: the same steps run here, one after another).

Only the small, order-dependent assembly runs in the caller, with the same code as the single-process stages:
per-file records go to `ingest_progress.jsonl` and `ingest()` builds manifest.csv/rejects.csv from it; captions go
to the caption checkpoint and `caption_data()` writes the captioned manifest; shards are written into the cache's
temp dir and indexed like `build_latent_cache()`. So the outputs equal the single-process ones byte for byte, and
an interrupted run redoes only what is missing. Workers need the project importable and the data reachable at the
same paths (a shared filesystem or s3://). The Prefect flow (flows/data_prep.py) and the pipeline's stages
(`data.dask`) both call `run_steps`.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from distributed import Client, LocalCluster

from opensora_core.config import Config, Params
from opensora_core.data import dask_chunks
from opensora_core.data.cache import INDEX, SHARD_SIZE, cache_fingerprint, default_encoder_key, publish_cache
from opensora_core.data.caption import build_captioner, caption_checkpoint, clip_key, finished_captions
from opensora_core.data.dataset import VideoDataset
from opensora_core.data.ingest import PROGRESS, list_videos, resumable_records
from opensora_core.data.manifest import read_manifest, reject_records
from opensora_core.data.stages import caption_data, caption_up_to_date, prepare_data, scene_split, source_path

SCENE_THRESHOLD = 30.0  # ingest()'s default: the records in the progress file must not depend on who made them
STEPS = ("prepare", "caption", "cache")


def map_chunks(client: Client | None, fn: Callable[..., dict], n_items: int, chunk_args: Callable[[range], tuple],
               on_result: Callable[[dict], None], chunks_per_worker: int) -> dict:
    """fn(*chunk_args(r)) for the chunks r of n_items (dask_chunks.chunk_ranges) as futures on `client`; each result
    goes to on_result in submission order (the same file contents on every run). Returns the chunk count and the
    workers' summed seconds of setup (imports, model loads) and of work. Without a client the chunks run here."""
    slots = sum(client.nthreads().values()) if client else 1
    ranges = dask_chunks.chunk_ranges(n_items, slots, chunks_per_worker)
    if client:
        futures = [client.submit(fn, *chunk_args(r), pure=False) for r in ranges]
        results = (f.result() for f in futures)
    else:
        results = (fn(*chunk_args(r)) for r in ranges)
    stats = {"chunks": 0, "setup_s": 0.0, "work_s": 0.0}
    for res in results:
        on_result(res)
        stats["chunks"] += 1
        stats["setup_s"] += res["seconds"]["setup"]
        stats["work_s"] += res["seconds"]["work"]
    return {k: round(v, 3) for k, v in stats.items()}


def prepare_on(client: Client | None, cfg: Config, chunks_per_worker: int | None = None, stats: dict | None = None) -> dict:
    """Raw manifest at cfg.paths.raw_manifest. Ingest: the files not yet in the progress file are probed in chunks
    on the cluster; `stats` (optional) receives the chunk count and the workers' seconds."""
    n = 0
    if cfg.data.source == "ingest":
        out = cfg.paths.raw_dir
        out.mkdir(parents=True, exist_ok=True)
        progress_file = out / PROGRESS
        split = scene_split(cfg)
        done = resumable_records(progress_file, split)  # what ingest() itself keeps of the progress file
        todo = [f for f in list_videos(source_path(cfg)) if f not in done]  # as prepare_data lists them
        with progress_file.open("a") as f:
            def record(result: dict) -> None:
                nonlocal n
                for rec in result["records"]:
                    f.write(json.dumps(rec) + "\n")
                    n += 1
                f.flush()  # a crash keeps every finished chunk

            if todo:
                got = map_chunks(client, dask_chunks.probe_chunk, len(todo),
                                 lambda r: (todo[r.start:r.stop], SCENE_THRESHOLD, split), record,
                                 chunks_per_worker or cfg.data.dask_chunks_per_worker)
                if stats is not None:
                    stats.update(got)
    prepare_data(cfg, progress=False)  # ingest(): every file is done, so it only assembles manifest + rejects
    return {"files_processed": n}


class _Done:
    """Stands in for a captioner that must not be loaded again: every clip is already in the checkpoint."""

    name = "checkpoint"

    def caption(self, rows):
        raise RuntimeError(f"{len(rows)} clips missing from the caption checkpoint")


def caption_on(client: Client | None, cfg: Config, captioner: Any = None, batch_size: int = 8) -> dict:
    """Captioned manifest at cfg.paths.manifest; each batch of uncaptioned clips is one future."""
    if captioner is None and caption_up_to_date(cfg):
        return {"clips_captioned": 0}
    d = cfg.data
    spec = captioner if captioner is not None else (d.captioner, {"model": d.llava_model} if d.captioner == "llava" else {})
    out = cfg.paths.manifest
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt = caption_checkpoint(out)  # caption_manifest's checkpoint: it resumes from it
    done = finished_captions(ckpt)
    rows = [r for r in read_manifest(cfg.paths.raw_manifest).to_dict("records") if clip_key(r) not in done]
    batches = [rows[b:b + batch_size] for b in range(0, len(rows), batch_size)]
    if client:
        results = [f.result() for f in [client.submit(dask_chunks.caption_chunk, b, spec, pure=False) for b in batches]]
    else:
        results = [dask_chunks.caption_chunk(b, spec) for b in batches]
    with ckpt.open("a") as f:
        for batch, texts in zip(batches, results):
            for r, t in zip(batch, texts):
                f.write(json.dumps({"key": clip_key(r), "text": t}) + "\n")
            f.flush()
    final = captioner if captioner is not None else build_captioner(spec[0], **spec[1]) if spec[0] != "llava" else _Done()
    caption_data(cfg, captioner=final, progress=False)  # every clip is in the checkpoint: assembles + split + stamp
    return {"clips_captioned": len(rows)}


def cache_on(client: Client | None, cfg: Config, params: Params, stage: str, shard_size: int = SHARD_SIZE,
             batch_size: int = 16, chunks_per_worker: int | None = None, stats: dict | None = None) -> dict:
    """Latent + text cache of `stage` at cfg.paths.cache_dir(stage), encoded in chunks on the cluster; same layout,
    fingerprint and shard contents as build_latent_cache(cfg, stage, shard_size=..., batch_size=...).

    The unit of a chunk is one encoding batch as build_latent_cache forms them (batch_size clips from each shard's
    start), so a shard split between chunks is joined from pieces that hold the very same batches."""
    st = cfg.stage(stage)
    manifest, out = cfg.paths.manifest, cfg.paths.cache_dir(stage)
    fingerprint = cache_fingerprint(manifest, st.num_frames, st.frame_interval, st.image_size, default_encoder_key(cfg))
    if (out / INDEX).exists():
        try:
            if json.loads((out / INDEX).read_text()).get("fingerprint") == fingerprint:
                return {"clips_encoded": 0}
        except json.JSONDecodeError:
            pass
    df = read_manifest(manifest, reject_bad_rows=True, require_text=True)  # as build_latent_cache reads it
    splits = ["train", "val"] if "split" in df.columns else [None]
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    batches: list[tuple[str | None, str, list[int]]] = []  # (split, shard file, clip indices), in cache order
    for split in splits:
        n = len(VideoDataset(df, st.num_frames, st.frame_interval, st.image_size, split=split))
        for k, s in enumerate(range(0, n, shard_size)):
            e = min(s + shard_size, n)
            batches += [(split, f"{split or 'train'}-{k:05d}.safetensors", list(range(b, min(b + batch_size, e))))
                        for b in range(s, e, batch_size)]
    threads = torch.get_num_threads()  # what build_latent_cache would encode with in this process

    def chunk_args(r: range) -> tuple:
        pieces: list[tuple[str | None, list[int], str]] = []
        for split, name, idx in batches[r.start:r.stop]:
            part = str(tmp / f"{name}.{r.start:06d}.part")  # this chunk's piece of the shard
            if pieces and pieces[-1][2] == part:
                pieces[-1][1].extend(idx)
            else:
                pieces.append((split, list(idx), part))
        return params, stage, str(manifest), pieces, batch_size, threads

    parts: dict[str, list[dict]] = {}  # shard file -> its pieces, in order

    def collect(result: dict) -> None:
        for p in result["pieces"]:
            parts.setdefault(p["file"].rsplit(".", 2)[0], []).append(p)

    got = map_chunks(client, dask_chunks.encode_chunk, len(batches), chunk_args, collect,
                     chunks_per_worker or cfg.data.dask_chunks_per_worker)
    if stats is not None:
        stats.update(got)
    index: dict[str, Any] = {"fingerprint": fingerprint, "stage": stage, "manifest": str(manifest),
                             "num_frames": st.num_frames, "frame_interval": st.frame_interval,
                             "image_size": st.image_size, "splits": {}, "rejected": reject_records(df.attrs["rejects"])}
    index["splits"] = _join_shards(tmp, splits, [(split, name) for split, name, _ in batches], parts)
    total = sum(e["count"] for e in index["splits"].values())
    publish_cache(tmp, out, index, total, t0)
    return {"clips_encoded": total}


def _join_shards(tmp: Path, splits: list, shard_of_batch: list[tuple[str | None, str]], parts: dict[str, list[dict]]) -> dict:
    """Each shard's pieces (one per chunk that encoded some of its batches) -> the shard file in tmp, and the
    index's splits: shard files and counts, texts and manifest rows, in build_latent_cache's order."""
    entries = {split or "train": {"shards": [], "count": 0, "texts": [], "rows": []} for split in splits}
    for split, name in dict.fromkeys(shard_of_batch):
        pieces, entry = parts[name], entries[split or "train"]
        files = [tmp / p["file"] for p in pieces]
        if len(files) == 1:
            files[0].rename(tmp / name)
        else:
            dask_chunks.merge_pieces(files, tmp / name)
        count = sum(p["count"] for p in pieces)
        entry["shards"].append({"file": name, "count": count})
        entry["texts"] += [t for p in pieces for t in p["texts"]]
        entry["rows"] += [i for p in pieces for i in p["rows"]]
        entry["count"] += count
    return entries


def run_steps(client: Client | None, params: Params, steps: tuple[str, ...] = STEPS, cache_stages: list[str] | None = None,
              captioner: Any = None, caption_batch: int = 8, shard_size: int = 64, batch_size: int = 16,
              chunks_per_worker: int | None = None, on_step: Callable[[str, dict, float], None] | None = None) -> dict:
    """prepare (probe + split) -> caption -> cache (per stage), each step's items spread over the cluster.

    cache_stages: stages to cache (default: every stage of the config). captioner: a Captioner object that
    replaces the configured one (tests, custom models); it must be importable by the workers. chunks_per_worker:
    chunks per worker thread of the probe and encode steps (default data.dask_chunks_per_worker).
    Returns each step's summary, its seconds, and per chunked step the chunk count and the workers' seconds.
    """
    cfg = params.load()
    summary: dict[str, Any] = {}
    timings: dict[str, float] = {}
    workers: dict[str, dict] = {}
    for step in steps:
        t0 = time.perf_counter()
        if step == "prepare":
            summary["prepare"] = prepare_on(client, cfg, chunks_per_worker, workers.setdefault("prepare", {}))
        elif step == "caption":
            summary["caption"] = caption_on(client, cfg, captioner, caption_batch)
        elif step == "cache":
            summary["cache"] = {s: cache_on(client, cfg, params, s, shard_size, batch_size, chunks_per_worker,
                                            workers.setdefault(f"cache@{s}", {}))
                                for s in cache_stages or cfg.stage_names()}
        else:
            raise ValueError(f"unknown step {step!r} (prepare | caption | cache)")
        timings[step] = round(time.perf_counter() - t0, 3)
        if on_step:
            on_step(step, summary[step], timings[step])
    summary["seconds"] = timings
    summary["workers"] = {k: v for k, v in workers.items() if v}
    return summary


def parse_dask(spec: str) -> tuple[str | None, int]:
    """`data.dask` -> (scheduler address or None, local workers): local = 2 workers, local:N, or an address."""
    if spec == "local" or spec.startswith("local:"):
        return None, int(spec.partition(":")[2] or 2)
    return spec, 0


@contextlib.contextmanager
def cluster_client(address: str | None = None, workers: int = 2, threads_per_worker: int = 1,
                   processes: bool = True) -> Iterator[Client]:
    """A client of the cluster at `address`, else of a LocalCluster of `workers` workers that lives as long."""
    if address:
        with Client(address) as client:
            yield client
        return
    with LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=processes,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


def run_stage_on_cluster(params: Params, stage_id: str) -> dict:
    """The parallel part of a pipeline stage (`prepare` of an ingest, `cache@<stage>`) on the cluster `data.dask`
    names, with the single-process stage's shard and batch sizes, so the outputs are the stage's own byte for byte."""
    address, workers = parse_dask(params.load().data.dask)
    kind, _, stage = stage_id.partition("@")
    with cluster_client(address, workers) as client:
        if kind == "prepare":
            return run_steps(client, params, steps=("prepare",))
        return run_steps(client, params, steps=("cache",), cache_stages=[stage], shard_size=SHARD_SIZE, batch_size=16)
