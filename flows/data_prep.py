"""The `data-prep` flow: probing + scene splitting, captioning and latent caching on a Dask cluster via prefect-dask.

prefect-dask's `DaskTaskRunner` gives the flow a Dask cluster: a `distributed.LocalCluster` on this machine by
default, or an existing cluster by address (`tcp://scheduler:8786`; a dask-kubernetes / dask-jobqueue cluster
exposes one too). The two heavy steps are one Prefect task each that cuts its items into a few chunks per worker
(flows/dask_chunks.py) and submits them as plain Dask futures through `prefect_dask.get_dask_client()`; a Prefect
task run per small unit cost ~1.8 s of orchestration here, a future costs milliseconds:

    probe-split    files, chunked       opensora_core.data.ingest.process_file (probe, hash, scene cuts)
    caption        one task per batch   the configured Captioner (opensora_core.data.caption)
    encode-shard   encoding batches,    opensora_core.data.cache.encode_shard (VAE + text encoder); a shard
                   chunked              split between chunks is joined from its pieces, batch for batch

Only the small, order-dependent assembly runs in the flow itself, with the same code as the single-process
stages: per-file records go to `ingest_progress.jsonl` and `ingest()` builds manifest.csv/rejects.csv from it;
captions go to the caption checkpoint and `caption_data()` writes the captioned manifest; shards are written
into the cache's temp dir and indexed like `build_latent_cache()`. So the outputs equal the single-process ones,
and an interrupted run redoes only what is missing (files not in the progress file, clips not in the
checkpoint; a cache is rebuilt only when its fingerprint changed).

Workers need the project importable and the data reachable at the same paths (shared filesystem or s3://).
Run: `python -m flows.data_prep [--address tcp://...] [--workers N] [key=value ...]`.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from flows.dask_chunks import LOAD_LOCK
from flows.prefect_env import configure_prefect_env

configure_prefect_env()  # project-local Prefect settings, before prefect is imported
from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NONE as NO_CACHE

from opensora_core.stages import Params

SCENE_THRESHOLD = 30.0  # ingest()'s default: the records in the progress file must not depend on who made them


# ------------------------------------------------------------------------------------------------ tasks


@task(name="dask-chunks", cache_policy=NO_CACHE)
def run_chunks(fn: Callable[..., dict], n_items: int, chunk_args: Callable[[range], tuple],
               on_result: Callable[[dict], None], chunks_per_worker: int) -> dict:
    """fn(*chunk_args(r)) for the chunks r of n_items (flows.dask_chunks.chunk_ranges) as plain Dask futures on the
    flow's cluster; each result goes to on_result in submission order. Returns the seconds the cluster took to
    start (the first step of a flow run starts it), the chunk count and the workers' summed seconds of setup
    (imports, model loads) and of work. Without a Dask runner the chunks run here, one after another."""
    from contextlib import nullcontext

    from distributed import Client
    from prefect.context import FlowRunContext
    from prefect_dask import DaskTaskRunner, get_dask_client

    from flows.dask_chunks import chunk_ranges

    runner = FlowRunContext.get().task_runner
    on_dask = isinstance(runner, DaskTaskRunner)
    t0 = time.perf_counter()
    runner_client = runner.client if on_dask else None  # the runner starts (or connects to) its cluster on first use
    stats = {"cluster_s": time.perf_counter() - t0, "chunks": 0, "setup_s": 0.0, "work_s": 0.0}
    # get_dask_client() in a task run connects to the scheduler of the current client: the runner's
    with (Client.as_current(runner_client) if on_dask else nullcontext()), \
            (get_dask_client() if on_dask else nullcontext()) as client:
        slots = sum(client.nthreads().values()) if on_dask else 1
        ranges = chunk_ranges(n_items, slots, chunks_per_worker)
        if on_dask:
            futures = [client.submit(fn, *chunk_args(r), pure=False) for r in ranges]
            results = (f.result() for f in futures)
        else:
            results = (fn(*chunk_args(r)) for r in ranges)
        for res in results:  # in submission order: the same file contents on every run
            on_result(res)
            stats["chunks"] += 1
            stats["setup_s"] += res["seconds"]["setup"]
            stats["work_s"] += res["seconds"]["work"]
    return {k: round(v, 3) for k, v in stats.items()}


@task(name="caption", cache_policy=NO_CACHE)
def caption_task(rows: list[dict], captioner: Any) -> list[str]:
    """One batch of manifest rows -> one caption each. `captioner`: a Captioner object or (name, kwargs)."""
    cap = _load_captioner(captioner) if isinstance(captioner, tuple) else captioner
    texts = cap.caption(rows)
    if len(texts) != len(rows):
        raise RuntimeError(f"captioner {cap.name} returned {len(texts)} captions for {len(rows)} clips")
    return texts


# Task bodies reach the lock only through these module functions: Dask pickles a task's function by value
# (with the globals it names), and a lock cannot be pickled; module functions are pickled by reference.
def _load_captioner(spec: tuple[str, dict]):
    with LOAD_LOCK:
        return _captioner(spec[0], json.dumps(spec[1], sort_keys=True))


@lru_cache(maxsize=4)
def _captioner(name: str, kwargs_json: str):
    """One captioner per worker process (a VLM loads once, not once per batch)."""
    from opensora_core.data.caption import build_captioner

    return build_captioner(name, **json.loads(kwargs_json))


# ------------------------------------------------------------------------------------------------ steps


def _read_jsonl(path: Path, key: str) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                done[rec[key]] = rec
            except (json.JSONDecodeError, KeyError):
                continue  # a line a crash cut short: that item is redone
    return done


def prepare_step(cfg, chunks_per_worker: int | None = None, stats: dict | None = None) -> dict:
    """Raw manifest at cfg.paths.raw_manifest. Ingest: the files not yet in the progress file are probed in chunks
    on the cluster (run_chunks); `stats` (optional) receives the chunk count and the workers' seconds."""
    from flows.dask_chunks import probe_chunk
    from opensora_core.data.ingest import PROGRESS, list_videos
    from opensora_core.data.stages import prepare_data, scene_split, source_path

    n = 0
    if cfg.data.source == "ingest":
        out = cfg.paths.raw_dir
        out.mkdir(parents=True, exist_ok=True)
        progress_file = out / PROGRESS
        done = _read_jsonl(progress_file, "path")
        todo = [f for f in list_videos(source_path(cfg)) if f not in done]  # as prepare_data lists them
        split = scene_split(cfg)
        with progress_file.open("a") as f:
            def record(result: dict) -> None:
                nonlocal n
                for rec in result["records"]:
                    f.write(json.dumps(rec) + "\n")
                    n += 1
                f.flush()  # a crash keeps every finished chunk

            if todo:
                got = run_chunks.with_options(name="probe-split")(
                    probe_chunk, len(todo), lambda r: (todo[r.start:r.stop], SCENE_THRESHOLD, split), record,
                    chunks_per_worker or cfg.data.dask_chunks_per_worker)
                if stats is not None:
                    stats.update(got)
    prepare_data(cfg, progress=False)  # ingest(): every file is done, so it only assembles manifest + rejects
    return {"files_processed": n}


def caption_step(cfg, captioner: Any = None, batch_size: int = 8) -> dict:
    """Captioned manifest at cfg.paths.manifest; each batch of uncaptioned clips is a mapped task."""
    from opensora_core.data.caption import build_captioner, clip_key
    from opensora_core.data.manifest import read_manifest
    from opensora_core.data.stages import caption_data, caption_up_to_date

    if captioner is None and caption_up_to_date(cfg):
        return {"clips_captioned": 0}
    d = cfg.data
    spec = captioner if captioner is not None else (d.captioner, {"model": d.llava_model} if d.captioner == "llava" else {})
    out = cfg.paths.manifest
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt = out.with_name(out.name + ".captions.jsonl")  # caption_manifest's checkpoint: it resumes from it
    done = _read_jsonl(ckpt, "key")
    rows = [r for r in read_manifest(cfg.paths.raw_manifest).to_dict("records") if clip_key(r) not in done]
    batches = [rows[b:b + batch_size] for b in range(0, len(rows), batch_size)]
    futures = caption_task.map(batches, unmapped(spec))
    with ckpt.open("a") as f:
        for batch, fut in zip(batches, futures):
            for r, t in zip(batch, fut.result()):
                f.write(json.dumps({"key": clip_key(r), "text": t}) + "\n")
            f.flush()
    final = captioner if captioner is not None else build_captioner(spec[0], **spec[1]) if spec[0] != "llava" else _Done()
    caption_data(cfg, captioner=final, progress=False)  # every clip is in the checkpoint: assembles + split + stamp
    return {"clips_captioned": len(rows)}


class _Done:
    """Stands in for a captioner that must not be loaded again: every clip is already in the checkpoint."""

    name = "checkpoint"

    def caption(self, rows):
        raise RuntimeError(f"{len(rows)} clips missing from the caption checkpoint")


def cache_step(cfg, params: Params, stage: str, shard_size: int = 256, batch_size: int = 16,
               chunks_per_worker: int | None = None, stats: dict | None = None) -> dict:
    """Latent + text cache of `stage` at cfg.paths.cache_dir(stage), encoded in chunks on the cluster (run_chunks);
    same layout, fingerprint and shard contents as build_latent_cache(cfg, stage, shard_size=..., batch_size=...).

    The unit of a chunk is one encoding batch as build_latent_cache forms them (batch_size clips from each shard's
    start), so a shard split between chunks is joined from pieces that hold the very same batches."""
    import torch

    from flows.dask_chunks import encode_chunk
    from opensora_core.data.cache import INDEX, cache_fingerprint, default_encoder_key, publish_cache
    from opensora_core.data.dataset import VideoDataset
    from opensora_core.data.manifest import read_manifest, reject_records

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

    def chunk_args(r: range) -> tuple:
        pieces: list[tuple[str | None, list[int], str]] = []
        for split, name, idx in batches[r.start:r.stop]:
            part = str(tmp / f"{name}.{r.start:06d}.part")  # this chunk's piece of the shard
            if pieces and pieces[-1][2] == part:
                pieces[-1][1].extend(idx)
            else:
                pieces.append((split, list(idx), part))
        return params, stage, str(manifest), pieces, batch_size, threads

    threads = torch.get_num_threads()  # what build_latent_cache would encode with in this process
    parts: dict[str, list[dict]] = {}  # shard file -> its pieces, in order

    def collect(result: dict) -> None:
        for p in result["pieces"]:
            parts.setdefault(p["file"].rsplit(".", 2)[0], []).append(p)

    got = run_chunks.with_options(name="encode-shard")(encode_chunk, len(batches), chunk_args, collect,
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
    from flows.dask_chunks import merge_pieces

    entries = {split or "train": {"shards": [], "count": 0, "texts": [], "rows": []} for split in splits}
    for split, name in dict.fromkeys(shard_of_batch):
        pieces, entry = parts[name], entries[split or "train"]
        files = [tmp / p["file"] for p in pieces]
        if len(files) == 1:
            files[0].rename(tmp / name)
        else:
            merge_pieces(files, tmp / name)
        count = sum(p["count"] for p in pieces)
        entry["shards"].append({"file": name, "count": count})
        entry["texts"] += [t for p in pieces for t in p["texts"]]
        entry["rows"] += [i for p in pieces for i in p["rows"]]
        entry["count"] += count
    return entries


# ------------------------------------------------------------------------------------------------ flow


@flow(name="data-prep", log_prints=True)
def data_prep(params: Params, steps: tuple[str, ...] = ("prepare", "caption", "cache"), cache_stages: list[str] | None = None,
              captioner: Any = None, caption_batch: int = 8, shard_size: int = 64, batch_size: int = 16,
              chunks_per_worker: int | None = None) -> dict:
    """prepare (probe + split) -> caption -> cache (per stage), each step's items spread over the cluster.

    cache_stages: stages to cache (default: every stage of the config). captioner: a Captioner object that
    replaces the configured one (tests, custom models); it must be importable by the workers. chunks_per_worker:
    chunks per worker thread of the probe and encode steps (default data.dask_chunks_per_worker).
    Returns each step's summary, its seconds, and per chunked step the chunk count and the workers' seconds.
    """
    logger = get_run_logger()
    cfg = params.load()
    summary: dict[str, Any] = {}
    timings: dict[str, float] = {}
    workers: dict[str, dict] = {}
    for step in steps:
        t0 = time.perf_counter()
        if step == "prepare":
            summary["prepare"] = prepare_step(cfg, chunks_per_worker, workers.setdefault("prepare", {}))
        elif step == "caption":
            summary["caption"] = caption_step(cfg, captioner, caption_batch)
        elif step == "cache":
            summary["cache"] = {s: cache_step(cfg, params, s, shard_size, batch_size, chunks_per_worker,
                                              workers.setdefault(f"cache@{s}", {}))
                                for s in cache_stages or cfg.stage_names()}
        else:
            raise ValueError(f"unknown step {step!r} (prepare | caption | cache)")
        timings[step] = round(time.perf_counter() - t0, 3)
        logger.info("%s: %s in %.1fs", step, summary[step], timings[step])
    summary["seconds"] = timings
    summary["workers"] = {k: v for k, v in workers.items() if v}
    return summary


def dask_task_runner(address: str | None = None, workers: int = 2, threads_per_worker: int = 1, processes: bool = True):
    """prefect-dask runner: an existing cluster at `address`, else a LocalCluster of `workers` workers."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": threads_per_worker,
                                          "processes": processes, "dashboard_address": None})


def run_data_prep(params: Params, address: str | None = None, workers: int = 2, threads_per_worker: int = 1,
                  processes: bool = True, **kwargs) -> dict:
    """Run the data-prep flow on a Dask cluster (see dask_task_runner); kwargs go to the flow."""
    runner = dask_task_runner(address, workers, threads_per_worker, processes)
    return data_prep.with_options(task_runner=runner)(params, **kwargs)


def parse_dask(spec: str) -> tuple[str | None, int]:
    """`data.dask` -> (scheduler address or None, local workers): local = 2 workers, local:N, or an address."""
    if spec == "local" or spec.startswith("local:"):
        return None, int(spec.partition(":")[2] or 2)
    return spec, 0


def run_stage_on_dask(params: Params, stage_id: str) -> dict:
    """The parallel part of a pipeline stage on the cluster `data.dask` names (opensora_core.stages calls this for
    `prepare` of an ingest and `cache@<stage>`): the data-prep flow's step, with the single-process stage's shard
    and batch sizes, so the outputs are the stage's own byte for byte."""
    from opensora_core.data.cache import SHARD_SIZE

    cfg = params.load()
    address, workers = parse_dask(cfg.data.dask)
    kind, _, stage = stage_id.partition("@")
    if kind == "prepare":
        return run_data_prep(params, address, workers, steps=("prepare",))
    return run_data_prep(params, address, workers, steps=("cache",), cache_stages=[stage], shard_size=SHARD_SIZE, batch_size=16)


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m flows.data_prep", description=__doc__.split("\n\n")[0])
    ap.add_argument("overrides", nargs="*", help="config key=value overrides")
    ap.add_argument("--params", default=None)
    ap.add_argument("--preset", default=None)
    ap.add_argument("--address", default=None, help="scheduler address of an existing Dask cluster")
    ap.add_argument("--workers", type=int, default=2, help="workers of the local cluster")
    ap.add_argument("--threads", type=int, default=1, help="threads per local worker")
    ap.add_argument("--steps", default="prepare,caption,cache")
    ap.add_argument("--stages", default=None, help="comma-separated stages to cache (default: all)")
    a = ap.parse_args(argv)
    summary = run_data_prep(Params(a.params, a.preset, tuple(a.overrides)), a.address, a.workers, a.threads,
                            steps=tuple(a.steps.split(",")), cache_stages=a.stages.split(",") if a.stages else None)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
