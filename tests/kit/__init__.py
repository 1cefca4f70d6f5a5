"""Helpers every test folder shares, imported as `from tests.kit import ...` (the repository root is on sys.path:
pyproject's [tool.pytest.ini_options] pythonpath). One definition each: a free port, the `opensora` and `dvc`
commands as subprocesses with telemetry off, waiting for a condition or a URL. The training tests' tiny config and
datasets are in `tests.kit.tiny_training` (it imports torch, so it is not imported here)."""

from pathlib import Path

from opensora_core.net import free_port
from tests.kit.processes import TELEMETRY_OFF, dvc, environment, opensora, opensora_command, run
from tests.kit.waiting import wait_for_url, wait_until

REPO = Path(__file__).resolve().parents[2]  # this checkout: the project the tests run against

__all__ = ["REPO", "TELEMETRY_OFF", "dvc", "environment", "free_port", "opensora", "opensora_command", "run", "wait_for_url",
           "wait_until"]
