"""Launch a multi-process training job with torchrun and stream every rank's output.

    from opensora_core.train.launcher import launch, train_args
    rc = launch(train_args("pretrain_256", preset="tiny", overrides=["train.dtype=bf16"]), nproc=2,
                line_callback=logger.info)

The job is `python -m torch.distributed.run --standalone --nproc-per-node N --tee 3 -m
opensora_core.cli.main_module <args>`, multi-node `python -m opensora_core.train.rendezvous --nnodes M
--rdzv-backend opensora-c10d --rdzv-endpoint HOST:PORT ...` (torchrun whose rendezvous fails after
OPENSORA_RDZV_TIMEOUT_S naming the nodes it saw); torchrun's `[defaultK]:` line prefixes are rewritten to the
global `[rank R]`. SIGTERM/SIGINT received by the caller are forwarded to torchrun (which stops its workers);
after `grace_s` seconds the whole process group is killed. The caller's environment is passed through
(OPENSORA_PARENT_RUN_ID joins the pipeline's MLflow run), plus `env`.

Lifetime: torchrun runs under `opensora_core.lifetime` and the ranks bind themselves (`opensora` entry point),
both owned by the caller: if the caller dies, torchrun and every rank stop (SIGTERM, SIGKILL 10 s later),
even though torchrun starts each rank in a session of its own. torchrun tears the job down when one rank
dies (`--max-restarts` 0). `hold_fd` (the stage lock) becomes every process's stdin, so the lock stays held
until the job's last process has exited.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from opensora_core.lifetime import owned_env

_PREFIX = re.compile(r"^\[default(\d+)\]:")


def train_args(stage: str, params: str | Path | None = None, preset: str | None = None,
               overrides: Sequence[str] = (), track: bool = True) -> list[str]:
    """`opensora` arguments of one training stage: ["train", "--stage", stage, ...]."""
    args = ["train", "--stage", stage]
    if params:
        args += ["--params", str(params)]
    if preset:
        args += ["--preset", preset]
    if not track:
        args.append("--no-track")
    return args + list(overrides)


RDZV_TIMEOUT_ENV = "OPENSORA_RDZV_TIMEOUT_S"
DEFAULT_RDZV_TIMEOUT_S = 300


def rdzv_timeout_from_env() -> int:
    """Seconds a multi-node rendezvous waits for every node (OPENSORA_RDZV_TIMEOUT_S, default 300)."""
    raw = os.environ.get(RDZV_TIMEOUT_ENV, str(DEFAULT_RDZV_TIMEOUT_S))
    try:
        value = int(float(raw))
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"{RDZV_TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return value


def build_command(args: Sequence[str], nproc: int = 1, nnodes: int = 1, rdzv_endpoint: str | None = None,
                  node_rank: int | None = None, python: str | None = None,
                  rdzv_timeout_s: int | None = None) -> list[str]:
    """The torchrun command line running `opensora <args>` on `nproc` processes per node.

    Multi-node (`nnodes > 1` or an endpoint): c10d rendezvous at `rdzv_endpoint` through
    opensora_core.train.rendezvous (torchrun plus a timeout message naming the nodes seen), waiting at most
    `rdzv_timeout_s` (default OPENSORA_RDZV_TIMEOUT_S, 300) for all `nnodes` nodes; node 0 hosts the
    rendezvous store when `node_rank` is given.
    """
    lifetime = [python or sys.executable, "-m", "opensora_core.lifetime"]  # torchrun dies with its owner
    if nnodes == 1 and not rdzv_endpoint:
        cmd = [*lifetime, "torch.distributed.run", "--standalone"]
    else:
        if not rdzv_endpoint:
            raise ValueError("a multi-node job needs rdzv_endpoint HOST:PORT (the same on every node)")
        from opensora_core.train.rendezvous import BACKEND

        timeout = int(rdzv_timeout_s) if rdzv_timeout_s else rdzv_timeout_from_env()
        conf = [f"join_timeout={timeout}", f"read_timeout={timeout}"]
        if node_rank is not None:  # node 0 hosts the store (also when every node runs on one machine)
            conf.append(f"is_host={'1' if node_rank == 0 else '0'}")
        cmd = [*lifetime, "opensora_core.train.rendezvous", "--nnodes", str(nnodes),
               "--rdzv-backend", BACKEND, "--rdzv-endpoint", rdzv_endpoint, "--rdzv-conf", ",".join(conf)]
        if node_rank is not None:
            cmd += ["--node-rank", str(node_rank)]
    cmd += ["--nproc-per-node", str(nproc), "--tee", "3", "-m", "opensora_core.cli.main_module", *args]
    return cmd


def _relabel(line: str, rank_offset: int) -> str:
    m = _PREFIX.match(line)
    if not m:
        return line
    return f"[rank {rank_offset + int(m.group(1))}] " + line[m.end():]


def launch(args: Sequence[str], nproc: int = 1, nnodes: int = 1, rdzv_endpoint: str | None = None,
           node_rank: int | None = None, env: dict[str, str] | None = None,
           line_callback: Callable[[str], None] | None = None, cwd: str | Path | None = None,
           grace_s: float = 30.0, python: str | None = None, hold_fd: int | None = None) -> int:
    """Run the job, call `line_callback(line)` (default: print) for each output line, return its exit status.

    A negative status means the job died from that signal (e.g. -9 for SIGKILL).
    """
    cmd = build_command(args, nproc, nnodes, rdzv_endpoint, node_rank, python)
    callback = line_callback or (lambda line: print(line, flush=True))
    full_env = owned_env({**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen(cmd, stdin=hold_fd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env=full_env, cwd=cwd, start_new_session=True)
    offset = (node_rank or 0) * nproc
    timers: list[threading.Timer] = []

    def forward(signum, _frame):
        callback(f"[launcher] forwarding {signal.Signals(signum).name} to the job")
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)
        timer = threading.Timer(grace_s, _kill_group, args=(proc,))
        timer.daemon = True  # must not keep this process alive after the job is gone
        timer.start()
        timers.append(timer)

    in_main = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)} if in_main else {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            callback(_relabel(line.rstrip("\n"), offset))
        return proc.wait()
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for timer in timers:
            timer.cancel()


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
