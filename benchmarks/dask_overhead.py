"""Where a Dask task's overhead goes: a Prefect task run vs a plain Dask future vs a fresh worker's imports and
model load, next to the work of one tiny clip.

    python benchmarks/dask_overhead.py [--tasks 8] [--rounds 3]

One local Dask cluster of 1 worker process (one thread) under the data-prep flow's DaskTaskRunner, per round:
  prefect task    a no-op @task submitted N times (one after another): task-run creation, state API calls,
                  the task engine on the worker, Dask's round trip; the first on a fresh worker also starts
                  that worker's own temporary Prefect API server (a worker does not inherit the flow's)
  dask future     the same no-op as a plain future through prefect_dask.get_dask_client(): Dask's round trip
  worker import   a fresh worker's first import of the project's data/encoder code (torch, av, ...)
  model load      the tiny VAE + text encoder, once per worker process (opensora_core.data.dask_chunks keeps them)
Medians (min-max) of the rounds, in ms per call; then, in this process, the work per tiny clip (probe + hash +
scene split of a 32-frame 32 px file; VAE + text encoding of one 4-frame clip) for scale.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from opensora_core.bench.reporter import Report, median_spread, show, wide_console


def _noop(x: int) -> int:
    return x


def _import_project() -> float:
    t0 = time.perf_counter()
    import opensora_core.data.cache  # noqa: F401
    import opensora_core.data.dataset  # noqa: F401
    import opensora_core.data.ingest  # noqa: F401
    import opensora_core.encoders  # noqa: F401 - torch, transformers, diffusers

    return time.perf_counter() - t0


def _load_models(params) -> float:
    from opensora_core.data.dask_chunks import encoders

    t0 = time.perf_counter()
    encoders(params)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()

    from prefect import flow, task
    from prefect.cache_policies import NONE as NO_CACHE
    from prefect.context import FlowRunContext
    from prefect_dask import get_dask_client

    from flows.data_prep import dask_task_runner
    from opensora_core.encoders.build import ensure_tiny_text_encoder
    from opensora_core.encoders.vae_train import tiny_autoencoder
    from opensora_core.pipeline import Params

    tmp = Path(tempfile.mkdtemp(prefix="bench-dask-overhead-"))
    params = Params(overrides=(f"run_dir={tmp / 'run'}", "train.sample_every=0"))
    cfg = params.load()
    tiny_autoencoder(seed=0).save_pretrained(cfg.paths.vae_dir)
    ensure_tiny_text_encoder(cfg)
    noop_task = task(name="noop", cache_policy=NO_CACHE)(_noop)
    got: dict[str, list[float]] = {}
    failures: list[str] = []

    @flow(name="dask-overhead")
    def probe(n: int) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"worker import": [], "model load": [], "dask future": []}
        FlowRunContext.get().task_runner.client  # noqa: B018 - starts the runner's cluster (lazy)
        with get_dask_client() as client:
            out["worker import"].append(client.submit(_import_project, pure=False).result())
            out["model load"].append(client.submit(_load_models, params, pure=False).result())
            for i in range(n):
                t0 = time.perf_counter()
                client.submit(_noop, i, pure=False).result()
                out["dask future"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        try:  # a fresh worker's first task run: Prefect's task engine, and the worker's own temporary API server
            noop_task.submit(-1).result()
        except RuntimeError as e:  # that server can fail to come up (SQLite "database is locked" on a busy machine)
            failures.append(f"{time.perf_counter() - t0:.1f} s: {e}")
            return out
        out["prefect: first task on a worker"] = [time.perf_counter() - t0]
        for i in range(n):
            t0 = time.perf_counter()
            noop_task.submit(i).result()
            out.setdefault("prefect task", []).append(time.perf_counter() - t0)
        return out

    for _ in range(a.rounds):
        for k, xs in probe.with_options(task_runner=dask_task_runner(workers=1))(a.tasks).items():
            got.setdefault(k, []).append(statistics.median(xs))
    got.update(_work_per_clip(cfg, tmp))
    rows = [{"what": k, "ms": median_spread(xs, 1e3, 1)} for k, xs in got.items()]
    console = wide_console()
    show(Report("dask_overhead", f"Per call, 1 local worker, {a.rounds} rounds (median, min-max)", rows, left=("what",)),
         console)
    for f in failures:
        console.print(f"a round's first Prefect task run on a fresh worker failed after {f}")
    shutil.rmtree(tmp, ignore_errors=True)


def _work_per_clip(cfg, tmp: Path) -> dict[str, list[float]]:
    """Probe + hash + scene split of one file, and encoding of one clip, in this process (models loaded)."""
    import torch

    from opensora_core.data.ingest import process_file
    from opensora_core.encoders import build_text_encoder, build_vae

    from opensora_core.data.synthetic import generate_synthetic

    generate_synthetic(tmp / "syn", num=8, frames=32, size=32, seed=0, workers=1, progress=False)
    files = sorted((tmp / "syn" / "videos").glob("*.mp4"))
    probe = []
    for f in files:
        t0 = time.perf_counter()
        process_file(str(f))
        probe.append(time.perf_counter() - t0)
    vae, text = build_vae(cfg).eval(), build_text_encoder(cfg).eval()
    st = cfg.stage("pretrain_256")
    x = torch.zeros(16, 3, st.num_frames, st.image_size, st.image_size)
    encode = []
    for _ in range(3):
        t0 = time.perf_counter()
        with torch.no_grad():
            vae.encode(x)
            text.encode(["a red ball moves left"] * 16)
        encode.append((time.perf_counter() - t0) / 16)
    return {"work: probe one clip": probe, "work: encode one clip (batch 16)": encode}


if __name__ == "__main__":
    main()
