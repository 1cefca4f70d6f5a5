"""How a flow run ends when its process is stopped or dies.

- `bind_temporary_api()` / `prepare_temporary_api()` (before a flow runs in this process): in ephemeral mode Prefect starts a temporary
  API server as a subprocess and stops it only from `atexit`, which a SIGKILL (or a SIGTERM that ends the
  process by signal) never runs. We start that server ourselves, the same way Prefect would (the flow then
  finds it running), and give it a reaper (opensora_core/lifetime.py) that stops it when this process is gone.
- `claim_flow_run()` (first thing in a flow): records `host:pid` of this process on the flow run
  (`infrastructure_pid`, unless a worker already set it), binds this process to its owner (a flow run that
  `opensora pipeline serve` started dies with it), and marks Crashed every Running flow run of this host
  whose process is gone: a flow run killed with SIGKILL cannot report its own end, so the next run does.
  (Prefect's own route, runner heartbeats plus a zombie-detection automation, needs a served deployment
  and the server's event services; a flow called from `opensora pipeline run` has neither.)

prefect (and psutil) are imported inside the functions: the `opensora` CLI imports this module, and Prefect's
settings must be configured (flows/prefect_env.py) before prefect loads.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

from opensora_core.lifetime import bind_to_owner, reap_with_me

log = logging.getLogger(__name__)


def bind_temporary_api() -> None:
    """Start Prefect's temporary API server now (unless PREFECT_API_URL names one) and tie it to this process."""
    prepare_temporary_api()()


def prepare_temporary_api() -> Callable[[], None]:
    """Import what starting Prefect's temporary API server needs, and return the function that starts it and ties
    it to this process (a no-op when PREFECT_API_URL names a server). A caller that imports in another thread
    meanwhile (the CLI prepares MLflow while the server starts) calls this first: both need SQLAlchemy's ORM, and
    a module imported by two threads at once can be seen half-initialised by one of them (ImportError)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE

    if PREFECT_API_URL.value() or not PREFECT_SERVER_ALLOW_EPHEMERAL_MODE.value():
        return lambda: None
    from prefect.server.api import server as prefect_server

    def start() -> None:
        server = prefect_server.SubprocessASGIServer()  # the instance Prefect's client uses in ephemeral mode
        # Prefect announces it with a three-line pointer to its docs on every run; one line of ours says the same
        quiet = logging.Filter()
        quiet.filter = lambda record: not str(record.msg).startswith("Starting temporary server")
        prefect_server.subprocess_server_logger.addFilter(quiet)
        try:
            server.start()
        finally:
            prefect_server.subprocess_server_logger.removeFilter(quiet)
        log.info("Prefect: temporary API server on %s (set PREFECT_API_URL to use a running server)", server.address)
        if server.server_process is not None:
            reap_with_me(server.server_process.pid)

    return start


def infrastructure_id(pid: int | None = None) -> str:
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def _process_gone(infra: str, started_at) -> bool:
    """True when `host:pid` names a process of this host that no longer exists, or a pid reused since the run
    started (the process now holding it is younger than the run)."""
    import psutil

    host, _, pid = (infra or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        created = psutil.Process(int(pid)).create_time()
    except psutil.NoSuchProcess:
        return True
    return started_at is not None and created > started_at.timestamp() + 1


def mark_dead_runs_crashed(client, exclude=None) -> list[str]:
    """Set Crashed on every Running flow run whose recorded process (this host) is gone; returns their names."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    running = client.read_flow_runs(flow_run_filter=FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))))
    marked = []
    for run in running:
        if str(run.id) == str(exclude) or not _process_gone(run.infrastructure_pid, run.start_time):
            continue
        client.set_flow_run_state(run.id, Crashed(message=f"its process ({run.infrastructure_pid}) is gone; "
                                                          "found by a later flow run"), force=True)
        marked.append(run.name)
    return marked


def claim_flow_run(logger=log) -> None:
    """Record this process on the current flow run; mark dead runs Crashed (see the module docstring)."""
    from prefect import get_client
    from prefect.runtime import flow_run

    bind_to_owner()
    run_id = flow_run.get_id()
    if not run_id:
        return
    try:
        with get_client(sync_client=True) as client:
            if not client.read_flow_run(run_id).infrastructure_pid:
                client.update_flow_run(run_id, infrastructure_pid=infrastructure_id())
            for name in mark_dead_runs_crashed(client, exclude=run_id):
                logger.warning("flow run %s was still Running but its process is gone: marked Crashed", name)
    except Exception as e:  # bookkeeping must never fail the pipeline
        logger.warning("could not update flow-run records: %s", e)
