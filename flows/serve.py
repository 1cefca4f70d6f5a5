"""Deployments: `opensora pipeline serve` (or `make serve`) serves the flows against a Prefect server, so

    prefect deployment run progressive-training/tiny
    prefect deployment run precision-comparison/tiny

start runs that this process executes (each flow run in a subprocess). For a cluster, use a work pool
instead (docs/orchestration.md): `progressive_training.deploy(name=..., work_pool_name=...)`.
"""

from __future__ import annotations

from flows.prefect_env import configure_prefect_env

configure_prefect_env()  # project-local Prefect settings, before prefect is imported
import asyncio
import os
import signal
import threading

from prefect.runner import Runner
from prefect.exceptions import TerminationSignal

from flows.comparison import lr_comparison, precision_comparison
from flows.progressive_training import progressive_training
from opensora_core.lifetime import OWNER_ENV


def deployments(name: str = "tiny"):
    return [
        progressive_training.to_deployment(name=name, tags=["opensora", name], description="the whole pipeline (params.yaml)"),
        precision_comparison.to_deployment(name=name, tags=["opensora", "comparison"]),
        lr_comparison.to_deployment(name=name, tags=["opensora", "comparison"]),
    ]


# Prefect's graceful stop on SIGTERM (pause the schedules, cancel in-flight runs) may wait on the API; an
# operator's SIGTERM must end the process within 10 s whatever it waits for
STOP_DEADLINE_S = 8.0


class _Runner(Runner):
    started_message = ""

    async def __aenter__(self):
        entered = await super().__aenter__()
        print(self.started_message, flush=True)  # after the SIGTERM handler is installed and the runner started
        return entered

    def handle_sigterm(self, *args, **kwargs) -> None:
        timer = threading.Timer(STOP_DEADLINE_S, os._exit, args=(128 + signal.SIGTERM,))
        timer.daemon = True
        timer.start()
        super().handle_sigterm(*args, **kwargs)


def serve_all(name: str = "tiny") -> None:
    """`prefect.serve(*deployments, limit=1)` with a deadline on SIGTERM; the flow runs it starts are owned by
    this process (they bind to it, opensora_core/lifetime.py), so they stop when it does."""
    os.environ[OWNER_ENV] = str(os.getpid())
    runner = _Runner(limit=1)
    for deployment in deployments(name):
        runner.add_deployment(deployment)
    runner.started_message = ("serving " + ", ".join(f"{d.flow_name}/{d.name}" for d in deployments(name))
                              + "; stop with Ctrl-C or SIGTERM")
    try:
        asyncio.run(runner.start())
    except (KeyboardInterrupt, TerminationSignal):
        pass


if __name__ == "__main__":
    serve_all()
