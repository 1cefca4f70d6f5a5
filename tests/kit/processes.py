"""Commands the tests run as subprocesses (`opensora`, `dvc`, anything else), in an environment with telemetry off."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

# The machines the suite runs on have no route out: nothing may phone home (and DVC's analytics would leave a
# `dvc daemon analytics` process behind after each command). DO_NOT_TRACK is read by Prefect ("1"/"true"/"yes")
# and by MLflow (only "true"); the others are each tool's own switch.
TELEMETRY_OFF = {
    "DO_NOT_TRACK": "true",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def environment(extra: Mapping[str, str | None] | None = None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: os.environ now) with telemetry off and `extra` on top; a None value in `extra` unsets it."""
    env = {**(os.environ if base is None else base), **TELEMETRY_OFF}
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run(cmd: list[str], *, cwd: Path | str | None = None, env: Mapping[str, str] | None = None, check: bool = True,
        timeout: float = 900) -> subprocess.CompletedProcess:
    """`cmd` to its end, output captured as text. `env` is the whole environment (default: `environment()`; build
    one with it), telemetry always off. `check`: fail the test, with the output's tail, unless it exits 0."""
    env = environment() if env is None else {**env, **TELEMETRY_OFF}
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} -> {out.returncode}\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def opensora_command(*args: str) -> list[str]:
    """The command line of `opensora ARGS` from this checkout, on this interpreter (for Popen and jobs)."""
    return [sys.executable, "-m", "opensora_core.cli.main_module", *args]


def opensora(*args: str, cwd: Path | str | None = None, env: Mapping[str, str] | None = None, check: bool = True,
             timeout: float = 900) -> subprocess.CompletedProcess:
    """`opensora ARGS` (this checkout's CLI) as a subprocess: see `run`."""
    return run(opensora_command(*args), cwd=cwd, env=env, check=check, timeout=timeout)


def dvc(*args: str, cwd: Path | str, env: Mapping[str, str] | None = None, check: bool = True,
        timeout: float = 900) -> subprocess.CompletedProcess:
    """`dvc ARGS` in the repository `cwd`, on this interpreter's DVC: see `run`."""
    return run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, check=check, timeout=timeout)
