"""A rank that no longer finishes training steps ends its process, so a job with a frozen peer fails instead
of hanging.

Why, besides the process group's timeout (`train.collective_timeout_s`): gloo times out plain collectives
(all_reduce, barrier: "Timed out waiting 5000ms for recv operation"), but DDP's gradient all-reduce waited
forever for a peer that stopped (measured with torch 2.13 + gloo: a SIGSTOPped rank, the other rank's
backward never returned). The watchdog bounds every step with the same timeout: after `timeout_s` seconds
without a finished step it logs why and exits; torchrun then stops the node's other ranks and fails.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

log = logging.getLogger("opensora.train")

EXIT_STALLED = 4


class StepWatchdog:
    """`beat()` after every step; the first beat starts the watch (set-up and the first step are not timed)."""

    def __init__(self, timeout_s: float, rank: int):
        self.timeout_s, self.rank = float(timeout_s), rank
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        self._last = time.monotonic()
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="step-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(min(self.timeout_s / 4, 5.0)):
            idle = time.monotonic() - self._last
            if idle > self.timeout_s:
                message = (f"rank {self.rank}: collective timed out: no training step finished for {idle:.0f} s "
                           f"(train.collective_timeout_s={self.timeout_s:g}); a rank stopped responding. Exiting "
                           "so that the job fails instead of hanging; rerun to resume from the last checkpoint.")
                log.error(message)
                print(message, file=sys.stderr, flush=True)
                os._exit(EXIT_STALLED)
