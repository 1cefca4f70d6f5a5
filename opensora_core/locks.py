"""One writer per stage: an exclusive lock on a stage's outputs, held while the stage runs.

    with StageLock(cfg.root / ".stages" / "train@pretrain_256.lock", on_line=print) as lock:
        ...  # write the outputs; lock.fd can be inherited by child processes so that they hold it too

The lock is `flock(2)` on a file in the run directory's records. The kernel drops it when the last process
holding it exits, however it exits, so a lock whose holder died is simply taken (and the takeover is said).
The file names the holder (pid, host, since when, command) for the message a second run prints.

A second run waits by default (`OPENSORA_LOCK_TIMEOUT` unset): two front doors that start the same stage
(a Prefect run and a `dvc repro`) then compose, the second one finding the stage up to date when it gets the
lock. `OPENSORA_LOCK_TIMEOUT=<seconds>` bounds the wait (0: fail at once) with `StageLocked`.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

TIMEOUT_ENV = "OPENSORA_LOCK_TIMEOUT"


class StageLocked(RuntimeError):
    """Another process holds the stage's lock and the wait was bounded."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(holder: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    text = f"pid {holder.get('pid')} on {holder.get('host')} since {since} ({holder.get('command', '?')})"
    if holder.get("host") == socket.gethostname() and holder.get("pid") and not _alive(int(holder["pid"])):
        text += " [that process is gone; processes it started still hold the lock]"
    return text


class StageLock:
    """Exclusive, process-wide lock on `path`; `timeout` None waits forever, 0 fails at once."""

    def __init__(self, path: Path, on_line: Callable[[str], None] = print, timeout: float | None = None,
                 poll_s: float = 0.5):
        self.path = Path(path)
        self.on_line = on_line
        env = os.environ.get(TIMEOUT_ENV)
        self.timeout = timeout if timeout is not None else (float(env) if env else None)
        self.poll_s = poll_s
        self.fd: int | None = None

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            return {}

    def acquire(self) -> StageLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        start, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                held_by = describe(self.holder())
                if self.timeout is not None and time.monotonic() - start >= self.timeout:
                    os.close(fd)
                    raise StageLocked(f"{self.path.name} is held by {held_by}; wait for it, or unset {TIMEOUT_ENV} to wait") from None
                if not told:
                    self.on_line(f"[lock] waiting for {self.path} held by {held_by}")
                    told = True
                # polling rather than a blocking flock: a blocked flock cannot be interrupted by SIGTERM cleanly
                time.sleep(self.poll_s)
        previous = self.holder()
        if previous.get("pid") and previous.get("host") == socket.gethostname() and not previous.get("released") \
                and previous.get("pid") != os.getpid() and not _alive(int(previous["pid"])):
            self.on_line(f"[lock] took over {self.path.name} from {describe(previous)}, which died holding it")
        if told:
            self.on_line(f"[lock] got {self.path.name} after {time.monotonic() - start:.1f} s")
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "command": " ".join(sys.argv)[:300]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        """Close our descriptor. No LOCK_UN: children that inherited it (a training job) keep the lock until
        they exit too."""
        if self.fd is None:
            return
        os.pwrite(self.fd, json.dumps({**self.holder(), "released": time.time()}).encode(), 0)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> StageLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
