"""What checksums cost: save and verify times of a checkpoint of the tiny preset's real model (STDiT-tiny at the
32 px stage: model + EMA + AdamW state, ~23 MiB), medians of 7 saves.

    python benchmarks/checkpoint_integrity.py
"""

import statistics
import tempfile
import time
from pathlib import Path

import torch

from opensora_core.config import load_config
from opensora_core import checkpoint as ckpt
from opensora_core.models.stage import build_stage_model
from opensora_core.checkpoint.integrity import verify_checkpoint

if __name__ == "__main__":
    model = build_stage_model(load_config(), "finetune_512")
    optimizer = torch.optim.AdamW(model.parameters())
    for p in model.parameters():  # one step, so the optimizer state has its real size
        p.grad = torch.zeros_like(p)
    optimizer.step()
    weights, root = model.state_dict(), Path(tempfile.mkdtemp())
    saves, full, quick = [], [], []
    for step in range(1, 8):
        t = time.perf_counter()
        d = ckpt.save_checkpoint(root, ckpt.TrainState(step=step, epoch=0), weights, weights, optimizer.state_dict())
        saves.append(time.perf_counter() - t)
        t = time.perf_counter()
        assert verify_checkpoint(d) == []
        full.append(time.perf_counter() - t)
        t = time.perf_counter()
        assert verify_checkpoint(d, quick=True) == []
        quick.append(time.perf_counter() - t)
    size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 2**20
    print(f"checkpoint {size:.1f} MiB: save {statistics.median(saves) * 1e3:.0f} ms (hashing included), "
          f"full verify {statistics.median(full) * 1e3:.1f} ms, sizes-only verify {statistics.median(quick) * 1e3:.2f} ms")
