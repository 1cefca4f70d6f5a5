"""Running a command of the pipeline as a child process whose output lines stream to a callback."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from opensora_core.lifetime import owned_env

LineCallback = Callable[[str], None]


def stream_command(cmd: list[str], on_line: LineCallback, env: dict[str, str] | None = None, cwd: str | Path | None = None) -> int:
    """Run `cmd`, calling `on_line` for every output line (stdout and stderr; `\\r` progress updates count as
    lines, so progress bars show while they run); returns the exit status. The child is terminated if we are
    interrupted (a cancelled Prefect run must not leave an orphan job), and it is owned by this process
    (opensora_core/lifetime.py): if we die, our `opensora` children and their jobs stop too."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=owned_env({**os.environ, **(env or {})}),
                            cwd=cwd, start_new_session=False)
    buf = b""
    last_progress = 0.0
    try:
        while chunk := os.read(proc.stdout.fileno(), 65536):
            buf += chunk
            *parts, buf = re.split(rb"\r\n|\n|\r", buf)
            for raw in parts:
                line = raw.decode(errors="replace").rstrip()
                if not line:
                    continue
                # progress bars redraw many times a second: pass one redraw per 5 s
                if "%|" in line and time.monotonic() - last_progress < 5:
                    continue
                last_progress = time.monotonic() if "%|" in line else last_progress
                on_line(line)
        if buf.strip():
            on_line(buf.decode(errors="replace").rstrip())
        return proc.wait()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    finally:
        proc.stdout.close()
