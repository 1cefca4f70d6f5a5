"""What a checkpoint holds besides tensors, its names, its errors, and the per-rank RNG states."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

LATEST = "latest"


class CheckpointError(RuntimeError):
    """No checkpoint that can be trusted where one is needed; the message says which and what is wrong."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, file-size limit); the previous one stays `latest`."""


def step_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def dist_rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


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
    files: dict = field(default_factory=dict)  # relative path -> {"size", "sha256"}: see integrity.py



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
