"""Shared CLI plumbing: config loading with exit code 2 on invalid parameters, `fail`, and the override argument."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer

from opensora_core.config import Config, ConfigError, load_config

# Reusable option/argument declarations so every command spells them the same way.
ParamsOption = typer.Option(None, "--params", help="params.yaml to read (default: the project's)")
PresetOption = typer.Option(None, "--preset", help="preset from params.yaml (default: its `preset`)")
OverridesArgument = typer.Argument(None, help="key=value overrides, e.g. train.lr=1e-4 stages.pretrain_256.max_steps=50")


def load_cli_config(params: Path | None, preset: str | None, overrides: list[str] | None) -> Config:
    """Load and validate the config; on invalid parameters print the reason and exit with status 2."""
    try:
        return load_config(params, preset, overrides or [])
    except ConfigError as e:
        fail(str(e))


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `error: message` in red on stderr and exit with `code` (2: bad input, nothing was written)."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code) from None
