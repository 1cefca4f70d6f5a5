"""Mixed precision: autocast per dtype, dynamic loss scaling for fp16, and the guard against non-finite losses.

Weights and optimizer state stay fp32 (autocast runs the matmuls in bf16/fp16), so a checkpoint written in one
precision resumes in another. fp16 gradients can overflow: `LossScaler` multiplies the loss by a scale before
backward (initial 2^16, as Open-Sora 1.0 / ColossalAI), skips the step when any gradient is inf/NaN and halves
the scale, and doubles it after `growth_interval` good steps in a row.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.distributed as dist

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """Raised by `NaNGuard` when the loss stayed NaN/inf for `patience` steps in a row."""


def autocast(dtype: str, device: torch.device):
    """Autocast context for `dtype` ("fp32" = no autocast) on `device`."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


def all_ranks_any(flags, device: torch.device) -> tuple[bool, ...]:
    """For each flag, True if it is true on any rank (so every rank takes the same branch and DDP stays in
    lock-step). One all-reduce for all of them: every collective is a point where each rank waits for the slowest."""
    flags = tuple(bool(f) for f in flags)
    if not (dist.is_available() and dist.is_initialized()):
        return flags
    t = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v > 0) for v in t.tolist())


def _all_ranks_any(flag: bool, device: torch.device) -> bool:
    return all_ranks_any((flag,), device)[0]


class LossScaler:
    """Dynamic loss scaling. With `enabled=False` (fp32/bf16) it is an identity that never skips.

    Use: `scaler.scale(loss).backward(); ok = scaler.unscale_and_check(params); if ok: optimizer.step();
    scaler.update(ok)`.
    """

    def __init__(self, enabled: bool, init_scale: float = 2.0**16, growth_interval: int = 1000,
                 backoff: float = 0.5, growth: float = 2.0, min_scale: float = 1.0):
        self.enabled = enabled
        self.scale_value = float(init_scale) if enabled else 1.0
        self.growth_interval = growth_interval
        self.backoff, self.growth, self.min_scale = backoff, growth, min_scale
        self.good_steps = 0
        self.skipped_steps = 0

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale_value if self.enabled else loss

    def unscale_and_check(self, params) -> bool:
        """Divide gradients by the scale in place; False if any gradient on any rank is inf/NaN."""
        if not self.enabled:
            return True
        inv = 1.0 / self.scale_value
        finite = True
        for p in params:
            if p.grad is None:
                continue
            p.grad.mul_(inv)
            # a sharded (FSDP2 DTensor) gradient: check this rank's shard; the ranks' verdicts combine below
            grad = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
            if finite and not torch.isfinite(grad).all():
                finite = False
        device = next((p.grad.device for p in params if p.grad is not None), torch.device("cpu"))
        return not _all_ranks_any(not finite, device)

    def update(self, step_ok: bool) -> None:
        if not self.enabled:
            return
        if step_ok:
            self.good_steps += 1
            if self.good_steps >= self.growth_interval:
                self.scale_value *= self.growth
                self.good_steps = 0
        else:
            self.skipped_steps += 1
            self.good_steps = 0
            self.scale_value = max(self.scale_value * self.backoff, self.min_scale)

    def state_dict(self) -> dict:
        return {"enabled": self.enabled, "scale": self.scale_value, "good_steps": self.good_steps,
                "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        # the scale only carries over between fp16 runs; a precision change starts from the initial scale
        if state.get("enabled") and self.enabled:
            self.scale_value = float(state["scale"])
            self.good_steps = int(state["good_steps"])
        self.skipped_steps = int(state.get("skipped_steps", 0))


class NaNGuard:
    """Counts consecutive non-finite losses; raises `NonFiniteLossError` once `patience` is reached."""

    def __init__(self, patience: int):
        self.patience = patience
        self.consecutive = 0
        self.total = 0

    def check(self, loss: torch.Tensor, step: int) -> bool:
        """True if the loss is finite on every rank; otherwise count it (and raise at `patience`)."""
        return self.observe(_all_ranks_any(not math.isfinite(float(loss.detach())), loss.device), step)

    def observe(self, bad: bool, step: int) -> bool:
        """`check` for a verdict the ranks already agreed on (`bad`: some rank's loss was NaN/inf)."""
        if not bad:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.total += 1
        if self.consecutive >= self.patience:
            raise NonFiniteLossError(
                f"loss was NaN/inf for {self.consecutive} consecutive steps (train.nan_patience={self.patience}), "
                f"last at step {step}: aborting. Lower the lr, use bf16 instead of fp16, or check the data.")
        return False

    def state_dict(self) -> dict:
        return {"consecutive": self.consecutive, "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        self.consecutive = int(state.get("consecutive", 0))
        self.total = int(state.get("total", 0))
