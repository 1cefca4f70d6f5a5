"""The `torch` engine: DistributedDataParallel over all ranks (a plain module with one process), torch AdamW.

An engine wraps the model for data parallelism and owns the optimizer; the training loop drives every engine
through the same few calls (`prepare`, `make_optimizer`, `boost`, `backward_step`, `save_state`, `load_state`).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from opensora_core import checkpoint as ckpt
from opensora_core.train.distributed import DistEnv, broadcast_from_rank0, step_finished


class TorchEngine:
    """DistributedDataParallel over all ranks (plain module with one process); torch AdamW."""

    name = "torch"

    def __init__(self, env: DistEnv, train_cfg=None):  # train_cfg: the engines share one constructor
        self.env = env

    def prepare(self, model: nn.Module) -> nn.Module:
        model.to(self.env.device)
        if not self.env.distributed:
            return model
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
        optimizer.load_state_dict(ckpt.load_optimizer_state(ckpt_dir))

    def prune(self, ckpt_root) -> None:
        pass


def adamw(params, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """torch AdamW with its fused kernel (CPU and CUDA): one kernel per step for all tensors instead of ~10 ops
    per tensor (docs/results.md). Deterministic, so resumed runs stay bit-identical; every engine that uses torch
    AdamW uses this one, so engines stay comparable."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, eps=1e-8, fused=True)
