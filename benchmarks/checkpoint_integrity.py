"""What checksums cost: save and verify times of a checkpoint of the tiny preset's real model (STDiT-tiny at the
32 px stage: model + EMA + AdamW state), medians (min-max) of 7 saves.

    python benchmarks/checkpoint_integrity.py
"""

import shutil
import tempfile
import time
from pathlib import Path

import torch

from opensora_core import checkpoint as ckpt
from opensora_core.bench.reporter import Report, median_spread, show, wide_console
from opensora_core.checkpoint.integrity import verify_checkpoint
from opensora_core.config import load_config
from opensora_core.models.stage import build_stage_model

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
    shutil.rmtree(root)
    row = {"checkpoint MiB": round(size, 1), "save ms (hashing included)": median_spread(saves, 1e3, 0),
           "full verify ms": median_spread(full, 1e3, 1), "sizes-only verify ms": median_spread(quick, 1e3, 2)}
    show(Report("checkpoint_integrity", "Checkpoint save and verify, 7 saves (median, min-max)", [row]), wide_console())
