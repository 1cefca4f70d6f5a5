"""Data stages on Dask vs one process: clips/s of ingest (probe, hash, scene split) and of latent-cache building.

    python benchmarks/dask_data.py [--clips 48] [--rounds 3] [--no-track]

Synthetic H.264 clips (32 frames, 32 px) in a temp folder, the tiny VAE and text encoder; each round runs, in
alternating order, the single-process stage (`ingest(workers=1)`, `build_latent_cache`) and the data-prep flow's
step on a local Dask cluster of 1 and of 2 worker processes (one thread each). `step s` is the step's own time
inside the flow (cluster up, tasks mapped and gathered); `start-up s` is the rest of the call: Prefect's
temporary API server and the Dask cluster, paid once per flow run. Medians (min-max) of the rounds; the table is
printed and logged to MLflow (tags.bench = dask_data).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def _median(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-track", action="store_true")
    a = ap.parse_args()

    from rich.console import Console
    from rich.table import Table

    from flows.data_prep import run_data_prep
    from opensora_core.data.cache import build_latent_cache
    from opensora_core.data.caption import caption_manifest
    from opensora_core.data.ingest import ingest
    from opensora_core.data.synthetic import generate_synthetic
    from opensora_core.encoders.build import ensure_tiny_text_encoder
    from opensora_core.encoders.vae_train import tiny_autoencoder
    from opensora_core.stages import Params

    tmp = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    generate_synthetic(tmp / "syn", num=a.clips, frames=32, size=32, seed=0, workers=2, progress=False)
    src = tmp / "syn" / "videos"
    base = ("data.source=ingest", f"data.src={src}", "data.min_resolution=16", "train.sample_every=0")
    stage = "pretrain_256"
    times: dict[tuple[str, str], list[float]] = {}
    startup: dict[tuple[str, str], list[float]] = {}

    def params(run: Path) -> Params:
        return Params(overrides=(*base, f"run_dir={run}"))

    def record(step: str, mode: str, seconds: float, wall: float | None = None) -> None:
        times.setdefault((step, mode), []).append(seconds)
        if wall is not None:
            startup.setdefault((step, mode), []).append(wall - seconds)

    enc = params(tmp / "enc").load()
    tiny_autoencoder(seed=0).save_pretrained(enc.paths.vae_dir)
    ensure_tiny_text_encoder(enc)
    modes = ["single", "dask-1", "dask-2"]
    for r in range(a.rounds):
        for mode in modes if r % 2 == 0 else modes[::-1]:  # interleaved: the machine's noise hits every mode
            run = tmp / f"r{r}-{mode}"
            p = params(run)
            cfg = p.load()
            shutil.copytree(enc.paths.encoders_dir, cfg.paths.encoders_dir)
            if mode == "single":
                t0 = time.perf_counter()
                ingest(str(src), cfg.paths.raw_dir, min_duration=cfg.data.min_duration, max_duration=cfg.data.max_duration,
                       min_resolution=16, workers=1, progress=False)
                record("ingest", mode, time.perf_counter() - t0)
            else:
                t0 = time.perf_counter()
                out = run_data_prep(p, workers=int(mode[-1]), steps=("prepare",))
                record("ingest", mode, out["seconds"]["prepare"], time.perf_counter() - t0)
            caption_manifest(cfg.paths.raw_manifest, cfg.paths.manifest, _Captioner(), val_fraction=0.1, progress=False)
            if mode == "single":
                t0 = time.perf_counter()
                build_latent_cache(cfg, stage, progress=False)
                record("cache", mode, time.perf_counter() - t0)
            else:
                t0 = time.perf_counter()
                out = run_data_prep(p, workers=int(mode[-1]), steps=("cache",), cache_stages=[stage],
                                    shard_size=max(1, a.clips // 8), batch_size=16)
                record("cache", mode, out["seconds"]["cache"], time.perf_counter() - t0)
    rows = []
    for (step, mode), xs in times.items():
        rows.append({"step": step, "mode": mode, "clips/s": _median([a.clips / x for x in xs]), "step s": _median(xs),
                     "start-up s": _median(startup[(step, mode)]) if (step, mode) in startup else "-"})
    table = Table(title=f"Data stages, {a.clips} clips, {a.rounds} interleaved rounds (median, min-max)")
    for col in rows[0]:
        table.add_column(col, justify="left" if col in ("step", "mode") else "right")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console(width=120).print(table)
    if not a.no_track:
        from opensora_core import tracking

        cfg = params(tmp / "enc").load()
        with tracking.start_run(cfg, run_name="bench-dask-data", tags={"bench": "dask_data"}, log_config=False):
            tracking.log_table("bench_dask_data", rows)
    shutil.rmtree(tmp, ignore_errors=True)


class _Captioner:
    """A caption per clip from its file name: the benchmark times ingest and caching, not captioning."""

    name = "path"

    def caption(self, rows):
        return [f"clip {Path(r['path']).stem} from {float(r['start']):.2f}s" for r in rows]


if __name__ == "__main__":
    main()
