"""Shared CLI plumbing: config loading with exit code 2 on invalid parameters, and the override argument."""

from __future__ import annotations

import sys
from pathlib import Path

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
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)
