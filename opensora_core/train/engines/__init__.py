"""The training engines, looked up by name (`train.engine`); the loop drives each through the same calls.

`torch`: torch.distributed + DistributedDataParallel (gloo on CPU, nccl on GPU); one process works too (ddp.py).
`fsdp`: FSDP2 `fully_shard` per block and at the root, checkpoints through torch.distributed.checkpoint (fsdp.py).
`colossalai`: ColossalAI Booster with LowLevelZeroPlugin (ZeRO-2) and HybridAdam, as Open-Sora 1.0 trained
(colossal.py). ColossalAI is an optional extra that pins an old torch: its module is imported only when chosen.

    engine = make_engine(cfg.train.engine, env, cfg.train)
    train_model = engine.prepare(model)           # DDP (torch) / fully_shard (fsdp) / Booster (colossalai)
    optimizer = engine.make_optimizer(model, lr)
"""

from __future__ import annotations

import importlib

from opensora_core.train.distributed import DistEnv
from opensora_core.train.engines.ddp import TorchEngine, adamw

# name -> (module, class): modules load on first use, so an engine's optional dependency is only needed when chosen
ENGINES: dict[str, tuple[str, str]] = {
    "torch": ("opensora_core.train.engines.ddp", "TorchEngine"),
    "fsdp": ("opensora_core.train.engines.fsdp", "FsdpEngine"),
    "colossalai": ("opensora_core.train.engines.colossal", "ColossalEngine"),
}


def make_engine(name: str, env: DistEnv, train_cfg=None):
    """`train_cfg` (cfg.train) gives the fsdp and colossalai engines their dtype, grad_clip and loss scale."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r} ({' | '.join(ENGINES)})")
    module, cls_name = ENGINES[name]
    cls = getattr(importlib.import_module(module), cls_name)
    return cls(env, train_cfg)


__all__ = ["ENGINES", "TorchEngine", "adamw", "make_engine"]
