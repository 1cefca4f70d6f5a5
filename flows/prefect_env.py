"""Project-local Prefect settings for server-less (ephemeral) runs; see flows/__init__.py."""

from __future__ import annotations

import os
from pathlib import Path

from opensora_core.project import find_root


def configure_prefect_env(root: Path | None = None) -> dict[str, str]:
    """Set (unless already set) the Prefect settings for local, server-less runs of the project at `root` (default:
    the project around the working directory); returns what applies. Outside any project it sets nothing (a command
    that would write stops there with 'run opensora init', and must not leave a .prefect folder behind)."""
    root = root or find_root()
    if root is None:
        return {}
    home = root / ".prefect"
    defaults = {
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        # the temporary server starts slowly on 2 busy cores (database migrations); the default 20 s is too short
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        # no update/telemetry calls from an offline machine
        "DO_NOT_TRACK": "1",
    }
    home.mkdir(parents=True, exist_ok=True)
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    return {k: os.environ[k] for k in defaults}
