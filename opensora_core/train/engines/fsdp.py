"""FSDP2 engine (`train.engine=fsdp`): `fully_shard` per STDiT block and at the root, DCP checkpoints.

    engine = make_engine("fsdp", env, cfg.train)
    model = engine.prepare(model)    # rank 0's weights on every rank, then sharded: 1/world of each tensor per rank

Each block is one FSDP unit: its weights are all-gathered just before its forward (and again for its backward
when `train.fsdp_reshard_after_forward`, ZeRO-3; false keeps them gathered until the backward, like ZeRO-2),
gradients are reduce-scattered, and every rank keeps only its shard of the fp32 weights, gradients and AdamW
moments. The root unit holds the embedders and the final layer.

Mixed precision: for train.dtype bf16/fp16, MixedPrecisionPolicy(param_dtype=bf16|fp16, reduce_dtype=fp32):
weights are gathered and used in the compute dtype (half the bytes on the wire), gradients reduced in fp32,
master weights and optimizer state stay fp32 (so checkpoints move between precisions and engines' dtypes as
before). The loop keeps its autocast (softmax and norms in fp32) and, for fp16, its LossScaler, which
unscales and checks the gradient shards.

Activation checkpointing: `model.grad_checkpoint` / `stages.<s>.grad_checkpoint` (torch.utils.checkpoint
per block) composes: the recomputation runs inside the block's unit, which gathers the block again.
Sequence parallelism composes: the mesh is every rank; sp ranks of a group hold the same sample, gradients
are averaged over all ranks as with DDP, and the loop scales the loss by sp_size.
One process: a 1-rank process group, so a 1-rank job writes the same DCP checkpoints and reshards both ways.
Checkpoints: opensora_core/checkpoint/sharded.py (sharded save/load, resharding, loading without the training world).
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from opensora_core.checkpoint import sharded
from opensora_core.train.distributed import broadcast_from_rank0, ensure_process_group
from opensora_core.train.engines.ddp import TorchEngine
from opensora_core.train.precision import DTYPES

log = logging.getLogger("opensora.train")


class FsdpEngine(TorchEngine):
    """FSDP2 over all ranks; torch AdamW on the shards; backward/step as the torch engine."""

    name = "fsdp"

    def __init__(self, env, train_cfg=None):
        super().__init__(env)
        self.dtype = getattr(train_cfg, "dtype", "fp32")
        self.reshard_after_forward = bool(getattr(train_cfg, "fsdp_reshard_after_forward", True))
        ensure_process_group(env.device)

    def mixed_precision(self):
        if self.dtype == "fp32":
            return MixedPrecisionPolicy()
        return MixedPrecisionPolicy(param_dtype=DTYPES[self.dtype], reduce_dtype=torch.float32)

    def prepare(self, model: nn.Module) -> nn.Module:
        """Shard `model` in place (returned for symmetry with DDP). Every rank first takes rank 0's weights:
        the loop seeds ranks differently before building the model, and fully_shard, unlike DDP, keeps each
        rank's own values for its shard."""
        model.to(self.env.device)
        broadcast_from_rank0([*model.parameters(), *model.buffers()])
        kw = {"mp_policy": self.mixed_precision(), "reshard_after_forward": self.reshard_after_forward}
        blocks = list(getattr(model, "blocks", []))
        for block in blocks:
            fully_shard(block, **kw)
        fully_shard(model, **kw)
        if self.env.is_main:
            log.info("fsdp engine: %d block units + root over %d ranks, %s (reduce fp32), reshard_after_forward=%s",
                     len(blocks), dist.get_world_size(), self.dtype, self.reshard_after_forward)
        return model

    def save_state(self, ckpt_root, step_name: str, model, optimizer, ema) -> dict:
        """Nothing for rank 0 to write: every rank writes its shards into the checkpoint's `dcp/`."""
        return {"model_state": None, "ema_state": None, "optimizer_state": None,
                "write_shards": lambda tmp_dir: sharded.save_sharded(tmp_dir, model, optimizer, ema)}

    def load_state(self, ckpt_dir, model, optimizer, ema=None) -> None:
        """Weights, optimizer state and EMA from the checkpoint's `dcp/`, resharded to this world size."""
        sharded.load_sharded(ckpt_dir, model, optimizer, ema)
