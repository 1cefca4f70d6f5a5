"""Waiting for something to happen (a server answering, a line in a log) instead of sleeping a guessed time."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable


def wait_until(condition: Callable[[], bool], timeout: float, *, what: str, interval: float = 0.2,
               process: subprocess.Popen | None = None, output: Callable[[], str] | None = None) -> float:
    """Return the seconds it took once `condition()` holds. Fail the test if `timeout` seconds pass first, or if
    `process` (the one expected to make it happen) exits first; the message names `what` and ends with `output()`
    (a log's tail, say)."""
    t0 = time.monotonic()
    while not condition():
        tail = f":\n{output()}" if output else ""
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: {process.args[0]} ended ({process.returncode}) first{tail}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not after {timeout} s{tail}")
        time.sleep(interval)
    return time.monotonic() - t0


def answers(url: str, any_status: bool = False) -> bool:
    """Whether `url` answers now: with a 2xx status, or with any HTTP status if `any_status`."""
    try:
        urllib.request.urlopen(url, timeout=5).close()
        return True
    except urllib.error.HTTPError:
        return any_status
    except OSError:
        return False


def wait_for_url(url: str, timeout: float, *, process: subprocess.Popen | None = None,
                 output: Callable[[], str] | None = None, any_status: bool = False, interval: float = 0.5) -> float:
    """Wait until the server at `url` answers (a 2xx status; any status if `any_status`): see `wait_until`."""
    return wait_until(lambda: answers(url, any_status), timeout, what=f"{url} answering", interval=interval,
                      process=process, output=output)
