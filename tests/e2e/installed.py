"""The tool as a user has it: the `opensora` console script of the wheel the `installed` fixture (conftest.py)
built and installed."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from tests.kit import run


def opensora(*args: str, cwd: Path, env: Mapping[str, str], check: bool = True,
             timeout: float = 900) -> subprocess.CompletedProcess:
    """The installed `opensora ARGS` (it runs on the venv's python, importing the wheel's package); `env` is the
    `installed` fixture's (its PATH finds the script). See tests.kit.run."""
    return run([shutil.which("opensora", path=env["PATH"]), *args], cwd=cwd, env=env, check=check, timeout=timeout)
