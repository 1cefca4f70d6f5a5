"""`opensora pipeline ...`: stages, the Prefect flows, serving, status (`opensora demo` is in demo.py).

    opensora pipeline run [--stage S ...] [--dtype bf16] [--lr 2e-5] [--processes 2] [key=value ...]
    opensora pipeline stage <id> [--force] [--lock-timeout S] [key=value ...]   one stage (what dvc.yaml runs)
    opensora pipeline status                      which stages are up to date
    opensora pipeline compare precision|lr --stage pretrain_256
    opensora pipeline server                      local Prefect server on 127.0.0.1 (SQLite under .prefect/)
    opensora pipeline serve                       serve the deployments (progressive-training/tiny, ...)
    opensora pipeline pool gpu | deploy --pool gpu | worker --pool gpu     the work-pool route (flows/pool.py)

The flows are imported inside the commands: importing flows configures Prefect's project-local state, and `opensora
--help` must neither write it nor pay for prefect.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
from pathlib import Path

import typer

from opensora_core import pipeline, project, tracking
from opensora_core.cli.common import OverridesArgument, ParamsOption, PresetOption, fail, load_cli_config
from opensora_core.locks import TIMEOUT_ENV
from opensora_core.pipeline import Params, run_stage

# the Prefect server the serving, deployment and worker commands talk to (one declaration, spelled the same)
ApiUrlOption = typer.Option("http://127.0.0.1:4200/api", "--api-url", envvar="PREFECT_API_URL")


def _exec_prefect(*args: str) -> None:
    """Replace this process with the venv's `prefect` command (signals then reach Prefect directly)."""
    exe = str(Path(sys.executable).parent / "prefect")
    os.execv(exe, [exe, *args])


pipeline_app = typer.Typer(help="Run the pipeline: stages, Prefect flows, deployments.", no_args_is_help=True)


def cli_params(params: Path | None, preset: str | None, overrides: list[str] | None):
    load_cli_config(params, preset, overrides)  # validate first: exit code 2 with the field named
    return Params(str(params) if params else None, preset, tuple(overrides or []))


LockTimeoutOption = typer.Option(
    None, "--lock-timeout", min=0, help="seconds to wait for a stage another run is writing, then fail (0: fail at "
    "once); default: wait (env OPENSORA_LOCK_TIMEOUT)")


def _set_lock_timeout(seconds: float | None) -> None:
    if seconds is not None:  # through the environment, so the stage subprocesses (DVC, Prefect tasks) see it too
        os.environ[TIMEOUT_ENV] = str(seconds)


def _quiet_prefect() -> None:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    for name in ("alembic", "httpx", "httpcore"):  # per-request lines of Prefect's API client drown the progress
        logging.getLogger(name).setLevel(logging.WARNING)


@pipeline_app.command("stage")
def stage_cmd(
    stage_id: str = typer.Argument(..., help="prepare | caption | encoders | cache@<stage> | train@<stage> | evaluate"),
    overrides: list[str] = OverridesArgument,
    force: bool = typer.Option(False, "--force", help="rerun even if up to date (an unfinished job still resumes)"),
    no_track: bool = typer.Option(False, "--no-track", help="do not log to MLflow"),
    lock_timeout: float = LockTimeoutOption,
    params: Path = ParamsOption,
    preset: str = PresetOption,
) -> None:
    """Run one stage (idempotent: skips when up to date). dvc.yaml's stages call this."""
    _set_lock_timeout(lock_timeout)
    p = cli_params(params, preset, overrides)
    try:
        result = run_stage(stage_id, p, force=force, track=not no_track)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    except RuntimeError as e:
        fail(str(e), 1)
    shown = dict(list(result.metrics.items())[:6])  # evaluate reports dozens; all of them are in MLflow / metrics.json
    typer.echo(json.dumps({"stage": result.stage, "ran": result.ran, "seconds": result.seconds, "metrics": shown}))


@pipeline_app.command("status")
def status_cmd(overrides: list[str] = OverridesArgument, params: Path = ParamsOption, preset: str = PresetOption) -> None:
    """Each stage: up to date or not (from the stage records; `dvc status` says the same for DVC runs)."""
    cfg = load_cli_config(params, preset, overrides)
    for sid in pipeline.stage_ids(cfg):
        rec = pipeline.read_record(cfg, sid) or {}
        state = "up to date" if pipeline.is_up_to_date(cfg, sid) else (rec.get("status") or "never run")
        if state == "done":
            state = "outdated"
        typer.echo(f"{sid:24s} {state:12s} {rec.get('seconds', '')}")


def _prepare_tracking(params) -> None:
    with contextlib.suppress(Exception):
        tracking.configure(params.load())


def run_flow(params, stage_list, force, train_retries, use_dvc, nodes: int = 1):
    """Run the progressive-training flow in this process (Prefect ephemeral mode unless PREFECT_API_URL is set)."""
    _quiet_prefect()
    from flows.progressive_training import progressive_training
    from flows.run_lifetime import prepare_temporary_api

    start_temporary_api = prepare_temporary_api()  # its imports first: the thread below imports the same modules
    # MLflow's import and a new project's database (slow on busy cores) overlap the temporary Prefect server's
    # start (mostly in its own process); an error here shows again, reported, when the flow opens its run
    tracking_ready = threading.Thread(target=_prepare_tracking, args=(params,), daemon=True)
    tracking_ready.start()
    start_temporary_api()  # the temporary Prefect server dies with this process, even by SIGKILL
    tracking_ready.join()
    return progressive_training(
        preset=params.preset, overrides=list(params.overrides), stages_to_run=stage_list or None, force=force,
        train_retries=train_retries, use_dvc=use_dvc, params_path=params.path, nodes=nodes,
    )


@pipeline_app.command("run")
def run_cmd(
    overrides: list[str] = OverridesArgument,
    stage: list[str] = typer.Option(None, "--stage", help="stage(s) to run (repeat); default: all"),
    dtype: str = typer.Option(None, "--dtype", help="fp32 | bf16 | fp16"),
    lr: float = typer.Option(None, "--lr"),
    processes: int = typer.Option(None, "--processes", help="ranks per training job"),
    nodes: int = typer.Option(1, "--nodes", help="nodes per training job"),
    force: bool = typer.Option(False, "--force", help="rerun stages that are up to date"),
    retries: int = typer.Option(1, "--retries", help="retries per training task (resume from checkpoint)"),
    dvc: bool = typer.Option(None, "--dvc/--no-dvc", help="record stages through dvc repro (default: when possible)"),
    lock_timeout: float = LockTimeoutOption,
    params: Path = ParamsOption,
    preset: str = PresetOption,
) -> None:
    """Run the progressive-training Prefect flow locally."""
    _set_lock_timeout(lock_timeout)
    extra = [f"train.dtype={dtype}"] * bool(dtype) + [f"train.lr={lr}"] * bool(lr) + [f"train.processes={processes}"] * bool(processes)
    p = cli_params(params, preset, list(overrides or []) + extra)
    rows = run_flow(p, stage, force, retries, dvc, nodes)
    print_rows(rows)


@pipeline_app.command("compare")
def compare_cmd(
    what: str = typer.Argument(..., help="precision (fp16 vs bf16) | lr (1e-4 vs 2e-5)"),
    overrides: list[str] = OverridesArgument,
    stage: str = typer.Option("pretrain_256", "--stage"),
    steps: int = typer.Option(None, "--steps", help="max_steps of each run (default: the stage's)"),
    params: Path = ParamsOption,
    preset: str = PresetOption,
) -> None:
    """Train one stage twice from the same seed (fp16 vs bf16, or lr 1e-4 vs 2e-5), grouped in MLflow."""
    _quiet_prefect()
    from flows.comparison import lr_comparison, precision_comparison
    from flows.run_lifetime import bind_temporary_api

    p = cli_params(params, preset, overrides)
    fn = {"precision": precision_comparison, "lr": lr_comparison}.get(what)
    if fn is None:
        fail("compare precision | lr")
    bind_temporary_api()
    rows = fn(stage=stage, steps=steps, preset=p.preset, overrides=list(p.overrides), params_path=p.path)
    print_rows(rows)


@pipeline_app.command("server")
def server_cmd(port: int = typer.Option(4200, "--port")) -> None:
    """Start a local Prefect server on 127.0.0.1 (state: SQLite under .prefect/). Then `make serve`."""
    from flows.prefect_env import configure_prefect_env

    configure_prefect_env()  # project-local PREFECT_HOME and SQLite database
    os.environ["PREFECT_SERVER_API_PORT"] = str(port)  # the UI's API URL is built from it, not from --port
    typer.echo(f"Prefect server on http://127.0.0.1:{port} (PREFECT_HOME={os.environ['PREFECT_HOME']})")
    _exec_prefect("server", "start", "--host", "127.0.0.1", "--port", str(port))


@pipeline_app.command("serve")
def serve_cmd(
    api_url: str = ApiUrlOption,
    name: str = typer.Option("tiny", "--name", help="deployment name: progressive-training/<name>"),
) -> None:
    """Serve the flows as deployments against a Prefect server; then `prefect deployment run progressive-training/tiny`."""
    os.environ["PREFECT_API_URL"] = api_url
    _quiet_prefect()
    from flows.serve import serve_all

    serve_all(name)


@pipeline_app.command("pool")
def pool_cmd(
    name: str = typer.Argument("gpu", help="work pool name"),
    api_url: str = ApiUrlOption,
) -> None:
    """Create a `process` work pool on the Prefect server (idempotent). Then `opensora pipeline deploy --pool NAME`."""
    os.environ["PREFECT_API_URL"] = api_url
    _quiet_prefect()
    from flows.pool import create_process_pool

    made = create_process_pool(name)
    typer.echo(f"work pool {name!r} {'created' if made else 'exists'} (type process) at {api_url}")


@pipeline_app.command("deploy")
def deploy_cmd(
    pool: str = typer.Option("gpu", "--pool", help="work pool (see `opensora pipeline pool`)"),
    name: str = typer.Option(None, "--name", help="deployment name (default: the project folder's name)"),
    api_url: str = ApiUrlOption,
) -> None:
    """Deploy progressive-training/<name> and the comparison flows to a work pool, from this project."""
    root = project.find_root()
    if root is None:
        fail(project.NOT_FOUND)
    os.environ["PREFECT_API_URL"] = api_url
    _quiet_prefect()
    from flows.pool import ENTRYPOINTS, deploy_to_pool

    name = name or root.name
    deploy_to_pool(pool, name, root)
    for flow_name in ENTRYPOINTS:
        typer.echo(f"deployed {flow_name}/{name} -> pool {pool!r} (working directory {root})")
    typer.echo(f"next: opensora pipeline worker --pool {pool}   then: prefect deployment run progressive-training/{name}")


@pipeline_app.command("worker")
def worker_cmd(
    pool: str = typer.Option("gpu", "--pool", help="work pool to pull flow runs from"),
    api_url: str = ApiUrlOption,
) -> None:
    """Start a Prefect worker for the pool on this machine (each flow run in a subprocess, in the project)."""
    os.environ["PREFECT_API_URL"] = api_url
    typer.echo(f"prefect worker for pool {pool!r} at {api_url}")
    _exec_prefect("worker", "start", "--pool", pool, "--type", "process")


def print_rows(rows) -> None:
    for r in rows or []:
        m = r.get("metrics") or {}
        loss = m.get("final_loss")
        typer.echo(f"  {r['stage']:24s} {'ran' if r.get('ran') else 'up to date':10s} {r.get('seconds', 0):7.1f} s"
                   + (f"  final loss {loss:.4f}" if loss is not None else ""))


def register(app: typer.Typer) -> None:
    app.add_typer(pipeline_app, name="pipeline")
