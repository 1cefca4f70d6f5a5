"""The `data-prep` flow: probing + scene splitting, captioning and latent caching on a Dask cluster via prefect-dask.

prefect-dask's `DaskTaskRunner` gives the flow its cluster: a `distributed.LocalCluster` on this machine by default,
or an existing cluster by address (`tcp://scheduler:8786`; a dask-kubernetes / dask-jobqueue cluster exposes one
too). The work itself is opensora_core.data.parallel's, on the runner's Dask client: a few large chunks per
worker as plain futures, the order-dependent assembly here (see that module).

Run: `python -m flows.data_prep [--address tcp://...] [--workers N] [key=value ...]`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from flows.prefect_env import configure_prefect_env

configure_prefect_env()  # project-local Prefect settings, before prefect is imported
from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect_dask import DaskTaskRunner

from opensora_core.config import Params
from opensora_core.data.parallel import STEPS, run_steps


@flow(name="data-prep", log_prints=True)
def data_prep(params: Params, steps: tuple[str, ...] = STEPS, cache_stages: list[str] | None = None,
              captioner: Any = None, caption_batch: int = 8, shard_size: int = 64, batch_size: int = 16,
              chunks_per_worker: int | None = None) -> dict:
    """prepare (probe + split) -> caption -> cache (per stage) on the task runner's cluster (see
    opensora_core.data.parallel.run_steps for the arguments and the summary it returns)."""
    logger = get_run_logger()
    runner = FlowRunContext.get().task_runner
    client = runner.client if isinstance(runner, DaskTaskRunner) else None  # starts (or connects to) the cluster
    return run_steps(client, params, steps, cache_stages, captioner, caption_batch, shard_size, batch_size,
                     chunks_per_worker, on_step=lambda step, got, s: logger.info("%s: %s in %.1fs", step, got, s))


def dask_task_runner(address: str | None = None, workers: int = 2, threads_per_worker: int = 1, processes: bool = True):
    """prefect-dask runner: an existing cluster at `address`, else a LocalCluster of `workers` workers."""
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": threads_per_worker,
                                          "processes": processes, "dashboard_address": None})


def run_data_prep(params: Params, address: str | None = None, workers: int = 2, threads_per_worker: int = 1,
                  processes: bool = True, **kwargs) -> dict:
    """Run the data-prep flow on a Dask cluster (see dask_task_runner); kwargs go to the flow."""
    runner = dask_task_runner(address, workers, threads_per_worker, processes)
    return data_prep.with_options(task_runner=runner)(params, **kwargs)


def main(argv: list[str] | None = None) -> None:
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
