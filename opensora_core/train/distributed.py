"""The training job's process group: joining it, a 1-rank group when an engine needs one, rank-0 broadcasts, the
step watchdog, and leaving it."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from opensora_core.net import free_port
from opensora_core.train.watchdog import StepWatchdog

_watchdog: StepWatchdog | None = None  # set by init_distributed for multi-rank jobs

@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None, timeout_s: float = 600.0) -> DistEnv:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, ...), if any.

    Backend: nccl when CUDA is available, else gloo. Single process (no WORLD_SIZE): no process group.
    `timeout_s` bounds every collective (gloo's op timeout, NCCL's watchdog) and, with several ranks, every
    training step (watchdog.py: DDP's gloo all-reduce has no timeout of its own): a rank that dies or hangs
    makes the others fail after it instead of waiting forever (`train.collective_timeout_s`).
    """
    global _watchdog
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        if use_cuda:  # the watchdog aborts a timed-out NCCL collective (and the process) instead of hanging
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s),
                                device_id=dev if use_cuda else None)
    if world > 1:
        _watchdog = StepWatchdog(timeout_s, rank)
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def ensure_process_group(device: torch.device) -> None:
    """A 1-rank group on a free local port when no group exists (engines that need torch.distributed even
    with one process: ColossalAI's Booster, FSDP2's device mesh). Not `colossalai.launch_from_torch`: it
    re-initializes the group unconditionally and reseeds every RNG, which would break exact resume."""
    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def broadcast_from_rank0(tensors) -> None:
    """Collective (a no-op with one rank): every rank takes rank 0's values of `tensors`, in place.

    The loop seeds each rank differently (seed + dp rank) before building the model, so random
    initialisations differ per rank: the weights, and buffers drawn at construction such as the null caption
    `y_embedding`. A checkpoint holds rank 0's; a resumed rank 1 would use those, an uninterrupted one its own.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=0)


def step_finished() -> None:
    """A training step finished on this rank (resets the step watchdog of a multi-rank job)."""
    if _watchdog is not None:
        _watchdog.beat()


def destroy_distributed() -> None:
    global _watchdog
    if _watchdog is not None:
        _watchdog.stop()
        _watchdog = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
