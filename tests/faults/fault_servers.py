"""Servers the fault tests kill: moto's S3 server and a real `mlflow server`, each a process of its own on
127.0.0.1 (started in a new session so that a kill takes its workers too)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.kit import environment, free_port, wait_for_url

FAKE_AWS = {"AWS_ACCESS_KEY_ID": "AKIAFAULTTESTS000001", "AWS_SECRET_ACCESS_KEY": "s3cr3t-that-must-never-be-printed",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"}  # one attempt: a dead endpoint fails fast


class ServerProcess:
    """A server command on 127.0.0.1:`port`; `start()` returns once `ready_path` answers, `kill()` SIGKILLs it."""

    def __init__(self, command: list[str], port: int, ready_path: str, log: Path, env: dict | None = None,
                 start_timeout: float = 600):
        self.command, self.port, self.ready_path, self.log, self.env = command, port, ready_path, log, env
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> ServerProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                         env=environment(self.env))
        try:  # readiness is an event only the server's answer tells (an error status is an answer too)
            wait_for_url(self.url + self.ready_path, self.start_timeout, process=self.proc, any_status=True,
                         interval=0.2, output=lambda: f"see {self.log}")
        except AssertionError:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the session we started: the server and its workers
        self.proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # workers that outlived their parent
        self.proc = None


def moto_server(tmp_path: Path, port: int | None = None, check_credentials: bool = False) -> ServerProcess:
    env = {"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if check_credentials else {}  # 0: every request is authenticated
    port = port or free_port()
    return ServerProcess([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port, "/moto-api/",
                         tmp_path / f"moto-{port}.log", env)
