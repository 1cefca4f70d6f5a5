"""`opensora tracking ...`: what a training job could not send to MLflow while the server was down."""

from __future__ import annotations

from pathlib import Path

import typer

from opensora_core.cli.common import fail
from opensora_core.tracking import send_pending


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="MLflow helpers.", no_args_is_help=True)

    @group.command("send")
    def send_cmd(
        pending: Path = typer.Argument(..., help="mlflow_pending.json named at the end of a training job"),
        uri: str = typer.Option(None, "--uri", help="tracking URI (default: the one the job used)"),
    ) -> None:
        """Send the metrics, tags and final status a job kept while the tracking server was down."""
        if not pending.is_file():
            fail(f"no such file: {pending}")
        try:
            n = send_pending(pending, uri)
        except Exception as e:  # noqa: BLE001 - the server is still down (or refuses): say so, keep the file
            fail(f"MLflow did not take {pending} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); the file is kept", 4)
        typer.echo(f"sent {n} metric values from {pending}")

    app.add_typer(group, name="tracking")
