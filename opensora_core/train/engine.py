"""Process group set-up and the training engines behind one small interface.

An engine wraps the model for data parallelism and owns the optimizer; the training loop only calls
`prepare`, `unwrap`, `no_sync`-free `backward`/`step` through the objects it returns:

    engine = make_engine(cfg.train.engine, env)
    train_model = engine.prepare(model)           # DDP (torch) / Booster (colossalai)
    optimizer = engine.make_optimizer(model, lr)

`torch`: torch.distributed + DistributedDataParallel (gloo on CPU, nccl on GPU); one process works too.
`colossalai`: ColossalAI Booster with LowLevelZeroPlugin (ZeRO-2) and HybridAdam, as Open-Sora 1.0 trained;
imported lazily, GPU only (see opensora_core/train/colossal.py).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


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


def init_distributed(device: str | None = None) -> DistEnv:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, ...), if any.

    Backend: nccl when CUDA is available, else gloo. Single process (no WORLD_SIZE): no process group.
    """
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
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=10),
                                device_id=dev if use_cuda else None)
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class TorchEngine:
    """DistributedDataParallel over all ranks (plain module with one process); torch AdamW."""

    name = "torch"

    def __init__(self, env: DistEnv):
        self.env = env

    def prepare(self, model: nn.Module) -> nn.Module:
        model.to(self.env.device)
        if not self.env.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        # broadcast_buffers=False: the buffers (position embeddings, null caption) are identical on every
        # rank by construction; broadcasting them each step costs a collective for nothing.
        return DDP(model, device_ids=[self.env.local_rank] if self.env.device.type == "cuda" else None,
                   broadcast_buffers=False)

    @staticmethod
    def unwrap(model: nn.Module) -> nn.Module:
        return model.module if hasattr(model, "module") else model

    def make_optimizer(self, model: nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        # foreach=False: the same update kernel on every machine, so resumed runs are bit-identical
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, eps=1e-8, foreach=False)


def make_engine(name: str, env: DistEnv):
    if name == "torch":
        return TorchEngine(env)
    if name == "colossalai":
        from opensora_core.train.colossal import ColossalEngine

        return ColossalEngine(env)
    raise ValueError(f"unknown engine {name!r} (torch | colossalai)")
