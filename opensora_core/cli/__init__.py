"""The `opensora` command. Each area registers its commands from its own module (opensora_core/cli/<area>.py)."""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

import typer

from opensora_core.project import PROJECT_ENV

app = typer.Typer(
    name="opensora",
    help="opensora-flow: Open-Sora 1.0 training as a reproducible pipeline (data, training, evaluation).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Order = order in `opensora --help`.
_AREAS = ("project_cmd", "config_cmd", "data", "encoders", "train", "eval", "pipeline", "bench")
for _area in _AREAS:
    try:
        _module = importlib.import_module(f"opensora_core.cli.{_area}")
    except ModuleNotFoundError as _e:  # an area not built yet; anything else missing is a real error
        if _e.name != f"opensora_core.cli.{_area}":
            raise
        continue
    _module.register(app)


@app.callback()
def _project_option(
    project: Path = typer.Option(None, "--project", help="the project folder (default: the nearest folder from here "
                                 "upward holding params.yaml)", envvar=PROJECT_ENV, show_envvar=True),
) -> None:
    if project is not None:  # in the environment, so every subprocess (DVC, torchrun ranks, Prefect) agrees
        os.environ[PROJECT_ENV] = str(project.expanduser().resolve())


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    app()
