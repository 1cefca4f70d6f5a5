"""Data stages on Dask vs one process: clips/s of ingest (probe, hash, scene split) and of latent-cache building.

    python benchmarks/dask_data.py [--clips 96] [--rounds 3] [--chunks-per-worker 4] [--no-track]

Synthetic H.264 clips (32 frames, 32 px) in a temp folder, the tiny VAE and text encoder; each round runs, in
alternating order, the single-process stage (`ingest(workers=1)`, `build_latent_cache`) and the data-prep flow's
step on local Dask clusters of 1 and of 2 worker processes (one thread each), two ways:
  cold   a fresh LocalCluster per flow run, as `data.dask: local:N` starts one: workers import torch/av and load
         the encoders inside the step
  warm   a long-lived LocalCluster reached by address (as `data.dask: tcp://...`), already importing the project
`step s` is the step's own time inside the flow (chunks submitted and gathered); `setup s` and `work s` are the
workers' summed seconds of imports + model loads and of probing/encoding (opensora_core/data/dask_chunks.py times them);
`start-up s` is the rest of the call: Prefect's temporary API server (and a cold cluster), paid once per flow run.
Every Dask output is checked byte for byte against the single-process one. Medians (min-max) of the rounds; the
table is printed and logged to MLflow (tags.bench = dask_data).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from opensora_core.bench.reporter import Report, median_spread, publish, wide_console


def _warm_cluster(workers: int):
    """A long-lived LocalCluster whose workers have imported the project's data and encoder code."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    with Client(cluster) as client:
        client.run(lambda: __import__("opensora_core.data.dask_chunks") and __import__("opensora_core.data.cache")
                   and __import__("opensora_core.data.ingest") and __import__("opensora_core.encoders"))
    return cluster


def _same_outputs(a, b, stage: str) -> bool:
    """The raw manifest, rejects and every cache file (index without its timing) of two runs, byte for byte."""
    import json

    ca, cb = a.cache_dir(stage), b.cache_dir(stage)
    ia, ib = (json.loads((c / "index.json").read_text()) for c in (ca, cb))
    for i in (ia, ib):
        i.pop("seconds"), i.pop("clips_per_second"), i.pop("manifest")  # timing, and the run's own path
    files = sorted(p.name for p in ca.glob("*.safetensors"))
    return (a.raw_manifest.read_bytes() == b.raw_manifest.read_bytes() and a.rejects.read_bytes() == b.rejects.read_bytes()
            and ia == ib and files == sorted(p.name for p in cb.glob("*.safetensors"))
            and all((ca / f).read_bytes() == (cb / f).read_bytes() for f in files))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunks-per-worker", type=int, default=None, help="default: data.dask_chunks_per_worker")
    ap.add_argument("--no-track", action="store_true")
    a = ap.parse_args()

    from flows.data_prep import run_data_prep
    from opensora_core.data.cache import SHARD_SIZE, build_latent_cache
    from opensora_core.data.caption import caption_manifest
    from opensora_core.data.ingest import ingest
    from opensora_core.data.synthetic import generate_synthetic
    from opensora_core.encoders.build import ensure_tiny_text_encoder
    from opensora_core.encoders.vae_train import tiny_autoencoder
    from opensora_core.pipeline import Params

    tmp = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    generate_synthetic(tmp / "syn", num=a.clips, frames=32, size=32, seed=0, workers=2, progress=False)
    src = tmp / "syn" / "videos"
    base = ("data.source=ingest", f"data.src={src}", "data.min_resolution=16", "train.sample_every=0")
    stage = "pretrain_256"
    cols: dict[tuple[str, str], dict[str, list[float]]] = {}

    def params(run: Path) -> Params:
        return Params(overrides=(*base, f"run_dir={run}"))

    def record(step: str, mode: str, seconds: float, wall: float | None = None, workers: dict | None = None) -> None:
        c = cols.setdefault((step, mode), {})
        c.setdefault("step s", []).append(seconds)
        if wall is not None:
            c.setdefault("start-up s", []).append(wall - seconds)
        for k, v in (workers or {}).items():  # the Dask step's chunks and the workers' setup / work seconds
            c.setdefault(k.replace("_", " "), []).append(v)

    enc = params(tmp / "enc").load()
    tiny_autoencoder(seed=0).save_pretrained(enc.paths.vae_dir)
    ensure_tiny_text_encoder(enc)
    warm = {n: _warm_cluster(n) for n in (1, 2)}
    modes = ["single", "cold-1", "cold-2", "warm-1", "warm-2"]
    for r in range(a.rounds):
        for mode in modes if r % 2 == 0 else modes[::-1]:  # interleaved: the machine's noise hits every mode
            run = tmp / f"r{r}-{mode}"
            p = params(run)
            cfg = p.load()
            shutil.copytree(enc.paths.encoders_dir, cfg.paths.encoders_dir)
            kind, _, n = mode.partition("-")
            on = {"address": warm[int(n)].scheduler_address} if kind == "warm" else {"workers": int(n or 0)}
            t0 = time.perf_counter()
            if mode == "single":
                ingest(str(src), cfg.paths.raw_dir, min_duration=cfg.data.min_duration, max_duration=cfg.data.max_duration,
                       min_resolution=16, workers=1, progress=False)
                record("ingest", mode, time.perf_counter() - t0)
            else:
                out = run_data_prep(p, **on, steps=("prepare",), chunks_per_worker=a.chunks_per_worker)
                record("ingest", mode, out["seconds"]["prepare"], time.perf_counter() - t0, out["workers"]["prepare"])
            caption_manifest(cfg.paths.raw_manifest, cfg.paths.manifest, _Captioner(), val_fraction=0.1, progress=False)
            t0 = time.perf_counter()
            if mode == "single":
                build_latent_cache(cfg, stage, progress=False)
                record("cache", mode, time.perf_counter() - t0)
            else:  # the single-process stage's shard and batch sizes, as run_stage_on_cluster passes them
                out = run_data_prep(p, **on, steps=("cache",), cache_stages=[stage], shard_size=SHARD_SIZE, batch_size=16,
                                    chunks_per_worker=a.chunks_per_worker)
                record("cache", mode, out["seconds"]["cache"], time.perf_counter() - t0, out["workers"][f"cache@{stage}"])
    for c in warm.values():
        c.close()
    identical = all(_same_outputs(params(tmp / f"r{r}-{mode}").load().paths, params(tmp / f"r{r}-single").load().paths, stage)
                    for r in range(a.rounds) for mode in modes[1:])
    rows = []
    for step in ("ingest", "cache"):
        for mode in modes:
            c = cols[(step, mode)]
            row = {"step": step, "mode": mode, "clips/s": median_spread([a.clips / x for x in c["step s"]])}
            row.update({k: median_spread(xs) for k, xs in c.items()})
            rows.append(row)
    report = Report("dask_data", f"Data stages, {a.clips} clips, {a.rounds} interleaved rounds (median, min-max); "
                                 f"outputs identical to one process: {identical}", rows, left=("step", "mode"),
                    run_name="bench-dask-data")
    publish(report, params(tmp / "enc").load(), wide_console(), track=not a.no_track)
    shutil.rmtree(tmp, ignore_errors=True)
    if not identical:
        raise SystemExit("a Dask run's outputs differ from the single-process ones")


class _Captioner:
    """A caption per clip from its file name: the benchmark times ingest and caching, not captioning."""

    name = "path"

    def caption(self, rows):
        return [f"clip {Path(r['path']).stem} from {float(r['start']):.2f}s" for r in rows]


if __name__ == "__main__":
    main()
