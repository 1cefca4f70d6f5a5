"""The `opensora` command. Each area registers its commands from its own module (opensora_core/cli/<area>.py)."""

from __future__ import annotations

import importlib
import logging

import typer

app = typer.Typer(
    name="opensora",
    help="opensora-flow: Open-Sora 1.0 training as a reproducible pipeline (data, training, evaluation).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Order = order in `opensora --help`.
_AREAS = ("config_cmd", "data", "encoders", "train", "eval", "pipeline", "bench")
for _area in _AREAS:
    try:
        _module = importlib.import_module(f"opensora_core.cli.{_area}")
    except ModuleNotFoundError as _e:  # an area not built yet; anything else missing is a real error
        if _e.name != f"opensora_core.cli.{_area}":
            raise
        continue
    _module.register(app)


def main() -> None:
    from opensora_core.lifetime import bind_to_owner

    bind_to_owner()  # a process started on behalf of another dies with it (opensora_core/lifetime.py)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    app()
