"""`opensora init [DIR]`: make a folder an opensora-flow project (see opensora_core.project)."""

from __future__ import annotations

from pathlib import Path

import typer

from opensora_core.cli.common import fail
from opensora_core.project import PRESETS, InitConflict, init_project


def register(app: typer.Typer) -> None:
    @app.command("init")
    def init(
        folder: Path = typer.Argument(Path("."), help="the project folder (created if missing; default: here)"),
        preset: str = typer.Option("tiny", "--preset", help="tiny (CPU, minutes) | opensora-1.0 (GPU clusters)"),
    ) -> None:
        """Write params.yaml (both presets), dvc.yaml, .gitignore, .dvcignore; git init and dvc init if needed."""
        if preset not in PRESETS:
            fail(f"--preset: unknown preset {preset!r} (have {', '.join(PRESETS)})")
        try:
            done = init_project(folder, preset)
        except InitConflict as e:
            fail(str(e))
        except RuntimeError as e:
            fail(str(e), 1)
        where = folder.resolve()
        if not done:
            typer.echo(f"{where} is already an opensora-flow project; nothing to do")
            return
        typer.echo(f"opensora-flow project in {where}: " + ", ".join(done))
        typer.echo("next:  opensora config show      # the resolved preset\n"
                   "       opensora pipeline run     # the whole pipeline (Prefect, DVC, MLflow)\n"
                   "       dvc exp run --queue -S train.lr=1e-4 && dvc queue start && dvc exp show   # a sweep")
