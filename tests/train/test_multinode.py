"""Multi-node through the launcher: two launchers on 127.0.0.1 acting as two nodes (c10d rendezvous, one rank
each) train exactly as one node with two ranks; a node that never joins, or that stops responding mid-run,
makes the job fail within its timeout with the reason, never hang."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading

import pytest
import torch

from opensora_core import checkpoint as ckpt
from opensora_core.train.launcher import build_command, launch

from tests.kit import environment, free_port
from tests.kit.tiny_training import STAGE
from tests.train.scale_jobs import job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


class Node:
    """One launcher (torchrun agent + its rank) of a 2-node job, its output collected by a thread."""

    def __init__(self, args, node_rank: int, port: int, stepping: threading.Event | None = None,
                 rdzv_timeout_s: int = 120):
        cmd = build_command(args, nproc=1, nnodes=2, rdzv_endpoint=f"127.0.0.1:{port}", node_rank=node_rank,
                            rdzv_timeout_s=rdzv_timeout_s)
        # one intra-op thread, as the one-node reference's ranks get: torchrun sets OMP_NUM_THREADS=1 only for
        # --nproc-per-node > 1, and 2 threads round differently (measured: the weights differ after 20 steps)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=environment({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}),
                                     start_new_session=True)
        self.lines: list[str] = []
        self.stepping = stepping or threading.Event()  # set once rank 0 (on either node) logs step 3
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "step 3/" in line:
                self.stepping.set()

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return rc

    def signal_all(self, signum: int) -> None:
        """The launcher, torchrun's agent and its rank: a whole node (torchrun starts ranks in their own
        sessions, so the launcher's process group alone would leave them running)."""
        import psutil

        procs = [psutil.Process(self.proc.pid)]
        procs += procs[0].children(recursive=True)
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signum)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def test_two_launchers_as_two_nodes_train_like_one_node_with_two_ranks(ddp_2rank_run, tmp_path):
    cfg, args = job(tmp_path / "run", "torch", 2)
    port = free_port()
    nodes = [Node(args, rank, port) for rank in (0, 1)]
    for node in nodes:
        assert node.wait(timeout=300) == 0, node.output[-3000:]
    a = ckpt.read_latest(ddp_2rank_run.paths.ckpt_dir(STAGE))
    b = ckpt.read_latest(cfg.paths.ckpt_dir(STAGE))
    assert a.name == b.name
    assert ckpt.load_meta(b).world_size == 2
    for load in (ckpt.load_model_state, ckpt.load_ema_state):
        wa, wb = load(a), load(b)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _lone_node(tmp_path, monkeypatch, node_rank: int) -> tuple[int, str, int]:
    """Launch one node of a 2-node job with a 5 s rendezvous timeout; (exit status, output, port)."""
    monkeypatch.setenv("OPENSORA_RDZV_TIMEOUT_S", "5")
    _, args = job(tmp_path / "run", "torch", 2)
    port, lines = free_port(), []
    rc = launch(args, nproc=1, nnodes=2, rdzv_endpoint=f"127.0.0.1:{port}", node_rank=node_rank,
                line_callback=lines.append)
    return rc, "\n".join(lines), port


def test_a_node_that_never_joins_fails_the_rendezvous_naming_endpoint_and_nodes(tmp_path, monkeypatch):
    rc, out, port = _lone_node(tmp_path, monkeypatch, node_rank=0)
    assert rc != 0
    assert f"rendezvous at 127.0.0.1:{port} timed out after 5 s: 1 of 2 nodes joined" in out, out[-3000:]


def test_without_node_0_the_other_nodes_fail_naming_the_unreachable_endpoint(tmp_path, monkeypatch):
    rc, out, port = _lone_node(tmp_path, monkeypatch, node_rank=1)
    assert rc != 0
    assert f"cannot reach the rendezvous store at 127.0.0.1:{port} within 5 s (expected 2 nodes, saw none)" in out, \
        out[-3000:]


def test_a_node_that_stops_responding_fails_the_other_within_the_collective_timeout(tmp_path):
    _, args = job(tmp_path / "run", "torch", 2, **{f"stages.{STAGE}.max_steps": 5000, "train.ckpt_every": 5000,
                                                   "train.collective_timeout_s": 20})
    port, stepping = free_port(), threading.Event()  # rank 0 logs the steps; c10d picks the node that holds it
    nodes = [Node(args, rank, port, stepping) for rank in (0, 1)]
    try:
        assert stepping.wait(timeout=240), nodes[0].output[-2000:] + nodes[1].output[-2000:]
        nodes[1].signal_all(signal.SIGSTOP)  # frozen, its sockets open: only a timeout can tell
        rc = nodes[0].wait(timeout=120)
        assert rc != 0
        # gloo's own timeout ("Timed out waiting 20000ms for recv") where the rank waits in a plain collective,
        # the step watchdog's ("collective timed out: no training step finished") inside DDP's all-reduce
        assert "timed out" in nodes[0].output.lower(), nodes[0].output[-3000:]
    finally:
        for n in nodes:
            if n.proc.poll() is None:
                n.signal_all(signal.SIGKILL)
                n.proc.wait()
