"""The step watchdog: a rank that stops finishing steps (e.g. stuck in DDP's gloo all-reduce, which has no
timeout of its own) ends its process with the reason instead of hanging the job."""

from __future__ import annotations

import subprocess
import sys

from opensora_core.train.watchdog import EXIT_STALLED


def test_a_rank_without_a_finished_step_exits_with_the_reason():
    stuck = ("import threading; from opensora_core.train.watchdog import StepWatchdog; "
             "StepWatchdog(0.5, rank=3).beat(); threading.Event().wait()")  # blocks forever after one step
    proc = subprocess.run([sys.executable, "-c", stuck], capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_STALLED
    assert "rank 3: collective timed out: no training step finished" in proc.stderr


def test_a_rank_that_keeps_stepping_is_left_alone():
    steps = ("import time; from opensora_core.train.watchdog import StepWatchdog; w = StepWatchdog(10.0, rank=0)\n"
             "for _ in range(5):\n    w.beat(); time.sleep(0.2)\nw.stop(); print('done')")
    proc = subprocess.run([sys.executable, "-c", steps], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr
