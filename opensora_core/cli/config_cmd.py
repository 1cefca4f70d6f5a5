"""`opensora config show`: print the resolved configuration."""

from __future__ import annotations

import json
from pathlib import Path

import typer
import yaml

from opensora_core.cli.common import OverridesArgument, ParamsOption, PresetOption, load_cli_config


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Inspect the validated configuration (params.yaml + preset + overrides).", no_args_is_help=True)

    @group.command("show")
    def show(
        overrides: list[str] = OverridesArgument,
        params: Path = ParamsOption,
        preset: str = PresetOption,
        as_json: bool = typer.Option(False, "--json", help="print JSON instead of YAML"),
    ) -> None:
        """Print the resolved config of a preset after overrides; exit 2 naming the field if it is invalid."""
        cfg = load_cli_config(params, preset, overrides)
        data = cfg.model_dump(mode="json")
        typer.echo(json.dumps(data, indent=2) if as_json else yaml.safe_dump(data, sort_keys=False))

    app.add_typer(group, name="config")
