"""Process group set-up and the training engines behind one small interface.

An engine wraps the model for data parallelism and owns the optimizer; the training loop only calls
`prepare`, `unwrap`, `no_sync`-free `backward`/`step` through the objects it returns:

    engine = make_engine(cfg.train.engine, env)
    train_model = engine.prepare(model)           # DDP (torch) / Booster (colossalai)
    optimizer = engine.make_optimizer(model, lr)

`torch`: torch.distributed + DistributedDataParallel (gloo on CPU, nccl on GPU); one process works too.
`fsdp`: FSDP2 `fully_shard` per block and at the root, checkpoints through torch.distributed.checkpoint
(see opensora_core/train/fsdp.py).
`colossalai`: ColossalAI Booster with LowLevelZeroPlugin (ZeRO-2) and HybridAdam, as Open-Sora 1.0 trained;
imported lazily (see opensora_core/train/colossal.py for what runs on CPU and on GPU).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

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


class TorchEngine:
    """DistributedDataParallel over all ranks (plain module with one process); torch AdamW."""

    name = "torch"

    def __init__(self, env: DistEnv):
        self.env = env

    def prepare(self, model: nn.Module) -> nn.Module:
        model.to(self.env.device)
        if not self.env.distributed:
            return model
        import inspect

        from torch.nn.parallel import DistributedDataParallel as DDP

        # DDP broadcasts rank 0's parameters when it wraps the model, but with broadcast_buffers=False not its
        # buffers: take rank 0's once here (the null caption is random per rank), then no collective per step.
        # torch 2.13 calls the per-step sync forward_sync_buffers (broadcast_buffers is deprecated there and
        # warns); older torch only knows broadcast_buffers.
        broadcast_from_rank0(model.buffers())
        new = "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
        return DDP(model, device_ids=[self.env.local_rank] if self.env.device.type == "cuda" else None,
                   **{"forward_sync_buffers" if new else "broadcast_buffers": False})

    @staticmethod
    def unwrap(model: nn.Module) -> nn.Module:
        return model.module if hasattr(model, "module") else model

    def make_optimizer(self, model: nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
        return adamw([p for p in model.parameters() if p.requires_grad], lr, weight_decay)

    # the hooks below let the loop drive either engine (ColossalEngine: booster.boost/backward/CheckpointIO)
    owns_precision = False  # autocast + the loop's LossScaler handle fp16/bf16

    def boost(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        return model, optimizer

    def backward_step(self, loss, optimizer, model_ref: nn.Module, scaler, grad_clip: float, sp_size: int = 1):
        """(Scaled) backward, unscale + overflow check, clip, step. Returns (stepped, grad_norm)."""
        # sp ranks hold partial gradients that sum to the full one; DDP averages over all ranks
        (scaler.scale(loss) * sp_size if sp_size > 1 else scaler.scale(loss)).backward()
        params = [p for p in model_ref.parameters() if p.requires_grad]
        ok = scaler.unscale_and_check(params)
        grad_norm = float("nan")
        if ok:
            norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
            # sharded (FSDP2) gradients give a DTensor norm: every rank holds the same full value
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            optimizer.step()
        scaler.update(ok)
        step_finished()
        return ok, grad_norm

    def save_state(self, ckpt_root, step_name: str, model, optimizer, ema) -> dict:
        """Collective. What `checkpoint.save_checkpoint` writes for this engine (its keyword arguments): the
        weights, EMA and the optimizer state for `optimizer.pt` (rank 0's are the ones written)."""
        return {"model_state": self.unwrap(model).state_dict(), "ema_state": ema.state_dict(),
                "optimizer_state": optimizer.state_dict() if self.env.is_main else None}

    def load_state(self, ckpt_dir, model, optimizer, ema=None) -> None:
        """The optimizer state (the loop loaded weights and EMA from the safetensors files already)."""
        from opensora_core.train import checkpoint as ckpt

        optimizer.load_state_dict(ckpt.load_optimizer_state(ckpt_dir))

    def prune(self, ckpt_root) -> None:
        pass


def adamw(params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """torch AdamW with its fused kernel (CPU and CUDA): one kernel per step for all tensors instead of ~10 ops
    per tensor (tiny preset, 1 thread, 9 interleaved rounds: 96.9 -> 90.0 CPU ms a step). Deterministic, so
    resumed runs stay bit-identical; every engine that uses torch AdamW uses this one, so engines stay comparable."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, eps=1e-8, fused=True)


def make_engine(name: str, env: DistEnv, train_cfg=None):
    """`train_cfg` (cfg.train) gives the colossalai engine its dtype, grad_clip and initial loss scale."""
    if name == "torch":
        return TorchEngine(env)
    if name == "fsdp":
        from opensora_core.train.fsdp import FsdpEngine

        return FsdpEngine(env, train_cfg)
    if name == "colossalai":
        from opensora_core.train.colossal import ColossalEngine

        return ColossalEngine(env, train_cfg)
    raise ValueError(f"unknown engine {name!r} (torch | fsdp | colossalai)")
