"""Checkpoints that survive a kill at any moment, and exact resume.

Layout of `cfg.paths.ckpt_dir(stage)`:

    step_0000100/  model.safetensors  ema.safetensors  optimizer.pt  rng_rank{r}.pt ...  meta.json
    latest         the directory name of the newest *complete* checkpoint

A checkpoint of `train.engine=fsdp` holds a `dcp/` folder (torch.distributed.checkpoint: weights, EMA and
optimizer, sharded by rank) instead of the safetensors files and `optimizer.pt`; see dcp_checkpoint.py.

A checkpoint is written into `.tmp-step_XXXXXXX` and renamed when every file (all ranks' RNG states
included) is on disk; `latest` is then replaced atomically, so a crash leaves `latest` naming the previous
complete checkpoint. Nothing is unpickled freely: weights are safetensors, the optimizer state and RNG
states load with `torch.load(weights_only=True)`, the rest is JSON.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from opensora_core.train import dcp_checkpoint

LATEST = "latest"
META = "meta.json"


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---- RNG states (per rank) --------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """torch / numpy / python RNG states as plain tensors, ints and tuples (loadable with weights_only)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---- saving -----------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """What a checkpoint holds besides tensors (goes to meta.json)."""

    step: int
    epoch: int
    sampler: dict = field(default_factory=dict)
    scaler: dict = field(default_factory=dict)
    scheduler: dict = field(default_factory=dict)
    nan_guard: dict = field(default_factory=dict)
    mlflow_run_id: str | None = None
    world_size: int = 1
    config: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def _cpu_contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def save_checkpoint(ckpt_root: Path, state: TrainState, model_state: dict[str, torch.Tensor] | None,
                    ema_state: dict[str, torch.Tensor] | None, optimizer_state: dict | None,
                    keep_last: int = 2, write_shards: Callable[[Path], None] | None = None) -> Path:
    """Collective: every rank calls it (each writes its RNG state); rank 0 writes the rest.

    `model_state` / `ema_state` / `optimizer_state` are only needed on rank 0 (others may pass None; None on
    rank 0 skips that file). `write_shards(tmp_dir)`, if given, is called on every rank while the checkpoint
    is still in its temporary directory (a collective writer: DCP). Returns the final checkpoint directory.
    """
    rank, world = _dist()
    ckpt_root = Path(ckpt_root)
    name = step_dir_name(state.step)
    final, tmp = ckpt_root / name, ckpt_root / f".tmp-{name}"
    if rank == 0:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier()
    torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
    if write_shards is not None:
        write_shards(tmp)
    _barrier()
    if rank == 0:
        if model_state is not None:
            save_file(_cpu_contiguous(model_state), str(tmp / "model.safetensors"))
        if ema_state is not None:
            save_file(_cpu_contiguous(ema_state), str(tmp / "ema.safetensors"))
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / "optimizer.pt")
        state.world_size = world
        (tmp / META).write_text(json.dumps(state.__dict__, indent=1, default=str))
        if final.exists():  # a re-run of the same step (e.g. after resuming at the very end)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _atomic_write_text(ckpt_root / LATEST, name + "\n")
        prune(ckpt_root, keep_last)
    _barrier()
    return final


def prune(ckpt_root: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints, and leftovers of interrupted saves."""
    latest = read_latest(ckpt_root)
    for leftover in ckpt_root.glob(".tmp-step_*"):
        shutil.rmtree(leftover, ignore_errors=True)
    steps = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in steps[:-keep_last]:
        if latest is None or old != latest:
            shutil.rmtree(old, ignore_errors=True)


# ---- loading ----------------------------------------------------------------------------------------------


def read_latest(ckpt_root: Path) -> Path | None:
    """The newest complete checkpoint directory of a stage, or None."""
    f = Path(ckpt_root) / LATEST
    if not f.is_file():
        return None
    d = Path(ckpt_root) / f.read_text().strip()
    return d if (d / META).is_file() else None


def load_meta(ckpt_dir: Path) -> TrainState:
    data = json.loads((Path(ckpt_dir) / META).read_text())
    return TrainState(**data)


def load_model_state(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """Full weights (one process, no process group), whichever engine wrote the checkpoint."""
    if dcp_checkpoint.is_sharded(ckpt_dir):
        return dcp_checkpoint.load_full(ckpt_dir, "model")
    return load_file(str(Path(ckpt_dir) / "model.safetensors"))


def load_ema_state(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    if dcp_checkpoint.is_sharded(ckpt_dir):
        return dcp_checkpoint.load_full(ckpt_dir, "ema")
    return load_file(str(Path(ckpt_dir) / "ema.safetensors"))


def load_optimizer_state(ckpt_dir: Path) -> dict | None:
    f = Path(ckpt_dir) / "optimizer.pt"
    return torch.load(f, map_location="cpu", weights_only=True) if f.is_file() else None


def load_rng_state(ckpt_dir: Path, rank: int) -> dict | None:
    f = Path(ckpt_dir) / f"rng_rank{rank}.pt"
    return torch.load(f, map_location="cpu", weights_only=True) if f.is_file() else None


def load_ema_weights(stage_dir: Path, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """EMA (or raw, `use_ema=False`) weights of the newest complete checkpoint of a stage directory
    (`cfg.paths.ckpt_dir(stage)`) or of one checkpoint directory; for the next stage and for evaluation."""
    stage_dir = Path(stage_dir)
    ckpt = stage_dir if (stage_dir / META).is_file() else read_latest(stage_dir)
    if ckpt is None:
        raise FileNotFoundError(f"no complete checkpoint in {stage_dir} (no `latest`): train that stage first")
    if use_ema and ((ckpt / "ema.safetensors").is_file() or dcp_checkpoint.has_key(ckpt, "ema")):
        return load_ema_state(ckpt)
    return load_model_state(ckpt)
