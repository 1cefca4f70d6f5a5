"""Stopping a training job on SIGTERM/SIGINT: before the step loop at once, inside it after checkpointing the step
(pre-emption loses nothing), with every rank stopping at the same step."""

from __future__ import annotations

import math
import signal

import torch

from opensora_core.train.precision import all_ranks_any


class Terminated(RuntimeError):
    """SIGTERM/SIGINT arrived: the job stops (after checkpointing its current step, when it was training)."""


class StopRequest:
    """Signal handler: before the step loop, stop at once; in it, finish the step, checkpoint it, then stop
    (pre-emption loses nothing). Every rank stops at the same step: they agree in the all-reduce that also
    agrees on the loss being finite (one collective per step besides DDP's), see `agree`."""

    def __init__(self):
        self.signum: int | None = None
        self.in_loop = False

    def __call__(self, signum, _frame):
        if not self.in_loop:
            raise Terminated(f"received {signal.Signals(signum).name}")
        self.signum = signum

    def settle(self, any_rank: bool) -> bool:
        """Take the ranks' verdict: some rank was asked to stop."""
        if any_rank and self.signum is None:
            self.signum = signal.SIGTERM
        return any_rank


def agree(loss: torch.Tensor, stop: StopRequest, device) -> tuple[bool, bool]:
    """(some rank's loss is NaN/inf, some rank was asked to stop), in one all-reduce."""
    bad, stopping = all_ranks_any((not math.isfinite(float(loss.detach())), stop.signum is not None), device)
    return bad, stop.settle(stopping)
