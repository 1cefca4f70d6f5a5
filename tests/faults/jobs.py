"""Helpers of the process-fault tests: a tiny two-rank training stage on a latent cache in tmp, processes by pid
tree and by command line, the reference weights of an uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import psutil
import torch

from opensora_core import checkpoint as ckpt

from tests.kit import environment, wait_until
from tests.kit.tiny_training import STAGE, RandomLatents, tiny_config, tiny_overrides, write_latent_cache

STAGE_ID = f"train@{STAGE}"
STEPS = 120  # long enough that every kill lands mid-run on a busy machine, ~10 s of training on 2 cores


def job_overrides(run_dir: Path) -> list[str]:
    """Two ranks, checkpoints every 10 steps, on a random latent cache written into `run_dir`."""
    extra = {"train.processes": 2, f"stages.{STAGE}.max_steps": STEPS, "train.ckpt_every": 10, "train.log_every": 1}
    cfg = tiny_config(run_dir, **extra)
    if not cfg.paths.cache_dir(STAGE).exists():
        write_latent_cache(cfg.paths.cache_dir(STAGE), RandomLatents(16))
    return tiny_overrides(run_dir, **extra)


class Job:
    """An `opensora` command in the background with its output in a file (read while it runs)."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str] | None = None):
        self.log = log
        self.cmd = cmd
        self._out = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT, env=environment(env))

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout: float = 600) -> None:
        """Block until `needle` is in the output (or fail with the output's tail if the job ends first)."""
        wait_until(lambda: needle in self.text(), timeout, what=f"{needle!r} in the output", process=self.proc,
                   output=lambda: self.text()[-3000:])

    def wait(self, timeout: float = 900) -> int:
        rc = self.proc.wait(timeout)
        self._out.close()
        return rc

    def tree(self) -> list[psutil.Process]:
        """This job's process and every descendant (ranks included: torchrun starts them in sessions of their own)."""
        me = psutil.Process(self.proc.pid)
        return [me, *me.children(recursive=True)]


def running_with(text: str) -> list[str]:
    """Command lines in the process table that contain `text` (a run's unique tmp path)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            line = " ".join(p.info["cmdline"] or [])
        except psutil.Error:
            continue
        if text in line and p.info["status"] != psutil.STATUS_ZOMBIE and p.pid != os.getpid():
            found.append(f"{p.pid}: {line[:160]}")
    return found


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_all_gone(procs: list[psutil.Process], marker: str, timeout: float = 120) -> float:
    """Wait until none of `procs` runs and no command line holds `marker`; returns the seconds it took."""
    t0 = time.monotonic()
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    alive = [p for p in alive if _running(p)]
    assert not alive, f"still running after {timeout} s: {[(p.pid, p.cmdline()[:4]) for p in alive]}"
    wait_until(lambda: not running_with(marker), max(0.0, timeout - (time.monotonic() - t0)),
               what=f"no process running with {marker!r}", output=lambda: "\n".join(running_with(marker)))
    return time.monotonic() - t0


def final_weights(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    cfg = tiny_config(run_dir)
    latest = ckpt.read_latest(cfg.paths.ckpt_dir(STAGE))
    assert latest is not None and latest.name == ckpt.step_dir_name(STEPS), latest
    return {"model": ckpt.load_model_state(latest), "ema": ckpt.load_ema_state(latest)}


def assert_bit_identical(a: dict, b: dict) -> None:
    for kind in ("model", "ema"):  # (a reference's `losses` entry is compared by assert_resumed_bit_identical)
        assert a[kind].keys() == b[kind].keys()
        different = [k for k in a[kind] if not torch.equal(a[kind][k], b[kind][k])]
        assert not different, f"{kind}: {different[:5]}"


def losses(run_dir: Path) -> dict[int, float]:
    import pandas as pd

    log = pd.read_csv(tiny_config(run_dir).paths.ckpt_dir(STAGE) / "train_log.csv")
    return dict(zip(log["step"].astype(int), log["loss"].astype(float)))


def assert_resumed_bit_identical(run_dir: Path, reference: dict, resumed_at: int) -> None:
    """The last rerun resumed at `resumed_at` and ended as the uninterrupted run did: every step's loss equal
    (the log reads as one run) and the final weights and EMA bit-identical. Any lost or wrong state (data
    position, optimizer, RNG, or a rank holding other values than rank 0's checkpoint) shows here."""
    ours, ref = losses(run_dir), reference["losses"]
    assert max(ours) == STEPS, max(ours)
    different = [(step, ours.get(step), ref[step]) for step in ref if ours.get(step) != ref[step]]
    assert not different, f"resumed at step {resumed_at}; losses differ at (step, ours, reference): {different[:3]}"
    assert_bit_identical(final_weights(run_dir), reference)
    print(f"resumed at step {resumed_at}: {len(ours)} losses equal, final weights and EMA bit-identical")


def latest_step(run_dir: Path) -> int | None:
    latest = ckpt.read_latest(tiny_config(run_dir).paths.ckpt_dir(STAGE))
    return ckpt.load_meta(latest).step if latest else None
