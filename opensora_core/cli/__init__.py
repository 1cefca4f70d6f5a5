"""The `opensora` command. Each area registers its commands from its own module (opensora_core/cli/<area>.py)."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from pathlib import Path

import typer

from opensora_core import remote
from opensora_core.lifetime import bind_to_owner
from opensora_core.project import PROJECT_ENV

app = typer.Typer(
    name="opensora",
    help="opensora-flow: Open-Sora 1.0 training as a reproducible pipeline (data, training, evaluation).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Order = order in `opensora --help`.
_AREAS = ("project_cmd", "config_cmd", "data", "encoders", "train", "eval", "pipeline", "demo", "bench", "doctor", "tracking_cmd")
for _area in _AREAS:
    try:
        _module = importlib.import_module(f"opensora_core.cli.{_area}")
    except ModuleNotFoundError as _e:  # an area not built yet; anything else missing is a real error
        if _e.name != f"opensora_core.cli.{_area}":
            raise
        continue
    _module.register(app)


@app.callback()
def _options(
    project: Path = typer.Option(None, "--project", help="the project folder (default: the nearest folder from here "
                                 "upward holding params.yaml)", envvar=PROJECT_ENV, show_envvar=True),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="tracebacks of remote failures too (same as OPENSORA_DEBUG=1)"),
) -> None:
    # both go into the environment, so every subprocess (DVC, torchrun ranks, Prefect) agrees
    if project is not None:
        os.environ[PROJECT_ENV] = str(project.expanduser().resolve())
    if verbose:
        os.environ[remote.DEBUG_ENV] = "1"


def main() -> None:
    bind_to_owner()  # a process started on behalf of another dies with it (opensora_core/lifetime.py)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in ("botocore.credentials", "aiobotocore.credentials"):  # "Found credentials in ...": noise
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        app()
    except remote.RemoteError as e:  # S3 down or credentials refused: one line naming operation and endpoint
        if remote.debug_enabled():
            traceback.print_exc()
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(remote.EXIT_CODE)
