"""Processes never outlive the process that started them.

Whoever starts a process on someone's behalf puts `OPENSORA_OWNER_PID=<its own pid>` into the child's
environment (`owned_env()`), and every process of ours calls `bind_to_owner()` first thing (the `opensora`
entry points do; other programs we start, torchrun and DVC, run under `python -m opensora_core.lifetime
<module> ...`, which binds and then runs the module). A bound process:

- finds the chain of processes between itself and the owner (a flow's `dvc repro` puts DVC and its shell in
  between) and exits at once if the owner is no longer among its ancestors (it died before we got here);
- asks the kernel for SIGTERM when its parent dies (`PR_SET_PDEATHSIG`), and watches every process of the
  chain through pidfds in a daemon thread: when one dies it sends itself SIGTERM, the graceful stop (a training
  job checkpoints its current step), and SIGKILL `OPENSORA_ORPHAN_GRACE_S` (10) seconds later.

Caveat of PR_SET_PDEATHSIG: it fires when the parent *thread* that started us exits, not the parent process.
Our callers start children from the thread that then waits for them (stream_command, the launcher), so the
thread outlives the child; the pidfd watch is per process and does not depend on it.

Prefect's temporary API server is started by Prefect, not by us: `reap_with_me(pid)` starts a small watcher
process that kills it when this process is gone (it sees end-of-file on a pipe only we hold).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import runpy
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

OWNER_ENV = "OPENSORA_OWNER_PID"
GRACE_ENV = "OPENSORA_ORPHAN_GRACE_S"
_PR_SET_PDEATHSIG = 1
_bound = False


def owned_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: ours) plus OPENSORA_OWNER_PID = this process: children that bind die with us."""
    return {**(os.environ if env is None else env), OWNER_ENV: str(os.getpid())}


def bound_command(module: str, *args: str) -> list[str]:
    """`python -m <module> args` run so that it binds to its owner first (for programs that are not ours)."""
    return [sys.executable, "-m", "opensora_core.lifetime", module, *args]


def _parent_of(pid: int) -> int:
    # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces and parentheses, so split after the last ")"
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def ancestors_until(owner: int) -> list[int] | None:
    """Our ancestors from the parent up to `owner` (inclusive), or None when `owner` is not one of them."""
    chain, pid = [], os.getppid()
    while pid > 1:
        chain.append(pid)
        if pid == owner:
            return chain
        try:
            pid = _parent_of(pid)
        except (OSError, ValueError, IndexError):
            return None
    return None


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """PR_SET_PDEATHSIG through libc (Linux); False where it is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def bind_to_owner() -> None:
    """Tie this process to OPENSORA_OWNER_PID and every process in between (no-op when the variable is unset)."""
    global _bound
    owner = os.environ.get(OWNER_ENV)
    if _bound or not owner or not owner.isdigit():
        return
    chain = ancestors_until(int(owner))
    if chain is None:  # the owner died before we started: we are an orphan already
        with contextlib.suppress(OSError):
            sys.stderr.write(f"[lifetime] owner process {owner} is gone; exiting\n")
        os._exit(1)
    _bound = True
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != chain[0]:  # the parent died between the walk and the prctl
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=_watch, args=(chain, float(os.environ.get(GRACE_ENV, "10"))),
                     name="opensora-lifetime", daemon=True).start()


def _open_pidfds(pids: list[int]) -> dict[int, int]:
    fds = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:  # already gone
            fds.clear()
            break
    return fds


def _watch(chain: list[int], grace_s: float) -> None:
    fds = _open_pidfds(chain)
    if fds:
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        gone = poller.poll()  # a pidfd becomes readable when its process exits
        why = f"process {fds[gone[0][0]]} (of {chain}) exited"
    else:
        why = f"a process of {chain} was already gone"
    with contextlib.suppress(OSError):  # our stderr may be a pipe to the process that just died
        sys.stderr.write(f"[lifetime] {why}: stopping (SIGTERM, SIGKILL in {grace_s:g} s)\n")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    os.kill(os.getpid(), signal.SIGKILL)


# ---- reaping a process someone else started ----------------------------------------------------------------

_reapers: dict[int, subprocess.Popen] = {}


def reap_with_me(pid: int, grace_s: float = 5.0) -> None:
    """Start a watcher that terminates `pid` (SIGTERM, then SIGKILL after `grace_s`) when this process exits,
    however it exits: the watcher waits for end-of-file on a pipe whose only writer is this process."""
    if pid in _reapers:
        return
    _reapers[pid] = subprocess.Popen([sys.executable, "-m", "opensora_core.lifetime", "--reap", str(pid), str(grace_s)],
                                     stdin=subprocess.PIPE, start_new_session=True)


def _reap(pid: int, grace_s: float) -> None:
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    poller = select.poll()
    poller.register(sys.stdin.fileno(), select.POLLIN | select.POLLHUP)
    poller.register(pidfd, select.POLLIN)
    while True:
        events = dict(poller.poll())
        if pidfd in events:  # it ended by itself
            return
        if not os.read(sys.stdin.fileno(), 1):  # end of file: the process that started us is gone
            break
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        if not select.select([pidfd], [], [], grace_s)[0]:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)


def _main(argv: list[str]) -> None:
    if argv[:1] == ["--reap"]:
        _reap(int(argv[1]), float(argv[2]))
        return

    bind_to_owner()
    sys.argv = argv  # the module sees its own name and arguments, as under `python -m`
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _main(sys.argv[1:])
