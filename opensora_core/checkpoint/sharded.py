"""Sharded checkpoints (`train.engine=fsdp`) through torch.distributed.checkpoint (DCP).

The step directory of such a checkpoint (checkpoint.py writes it atomically, as every other) holds, instead
of `model.safetensors` / `ema.safetensors` / `optimizer.pt`, one DCP checkpoint in `dcp/`:

    dcp/.metadata          every tensor's global shape, dtype and the file + offsets of each shard (rank 0)
    dcp/__<rank>_0.distcp  the shards rank <rank> held: weights, AdamW moments, EMA (each rank writes its own)

with three top-level entries: `model` (the FSDP2 module's state dict: keys of the plain model, DTensor shards
plus replicated buffers), `optimizer` (`get_state_dict`'s FQN-keyed optimizer state) and `ema` (the EMA
shadow, sharded like the weights). Scaler, scheduler, sampler and step stay in meta.json, RNG states in
`rng_rank<r>.pt`, as for the other engines.

Resharding: DCP records global shapes and offsets, so a job on another number of ranks loads the same files
(each rank reads the pieces of its new shards); `load_sharded` is all it takes.

Reading without the training world: `load_full(step_dir, "ema")` allocates the full tensors from the metadata
and reads them in one process (`dcp.load(..., no_dist=True)`); `opensora sample`, evaluation and the next
stage's init get there through checkpoint.load_model_state / load_ema_state / load_ema_weights. Why not also
write consolidated safetensors from rank 0: that gathers the whole model and EMA onto one rank at every save
(the memory FSDP exists to avoid) and writes each checkpoint twice, while the readers are single processes
that need the full tensors anyway and read them from the DCP files at the same cost. A user who wants one
file: `torch.distributed.checkpoint.format_utils.dcp_to_torch_save(step/"dcp", "out.pt")`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

DCP_DIR = "dcp"
KEYS = ("model", "optimizer", "ema")


def is_sharded(step_dir: Path) -> bool:
    """True if the checkpoint directory holds a DCP checkpoint (written by train.engine=fsdp)."""
    return (Path(step_dir) / DCP_DIR / ".metadata").is_file()


def has_key(step_dir: Path, key: str) -> bool:
    if not is_sharded(step_dir):
        return False

    prefix = key + "."
    metadata = FileSystemReader(Path(step_dir) / DCP_DIR).read_metadata()
    return any(fqn.startswith(prefix) for fqn in metadata.state_dict_metadata)


def _training_state(model: nn.Module, optimizer: torch.optim.Optimizer, ema) -> dict:
    model_state, optimizer_state = get_state_dict(model, optimizer)  # sharded DTensors, FQN keys
    return {"model": model_state, "optimizer": optimizer_state, "ema": ema.shadow}


def save_sharded(step_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema) -> None:
    """Collective: every rank writes its shards of weights, optimizer state and EMA into `step_dir/dcp/`."""
    dcp.save(_training_state(model, optimizer, ema), checkpoint_id=Path(step_dir) / DCP_DIR)


def load_sharded(step_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema) -> None:
    """Collective: load weights, optimizer state and EMA into the sharded model (any world size)."""
    state = _training_state(model, optimizer, ema)
    dcp.load(state, checkpoint_id=Path(step_dir) / DCP_DIR)  # in place, EMA shadow included
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def load_full(step_dir: Path, key: str = "model") -> dict[str, torch.Tensor]:
    """The full (unsharded) tensors of `key`, read in this process alone, on the CPU: "model" and "ema" give
    state dicts of the plain model; "optimizer" gives `state.<param fqn>.<exp_avg|exp_avg_sq|step>` tensors."""
    path = Path(step_dir) / DCP_DIR
    reader = FileSystemReader(path)
    prefix = key + "."
    template = {fqn[len(prefix):]: torch.empty(meta.size, dtype=meta.properties.dtype)
                for fqn, meta in reader.read_metadata().state_dict_metadata.items()
                if fqn.startswith(prefix) and isinstance(meta, TensorStorageMetadata)}
    if not template:
        raise KeyError(f"{path} holds no {key!r} tensors")
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message=".*load in a single process")
        dcp.load({key: template}, storage_reader=reader, no_dist=True)
    return template


class EngineMismatchError(ValueError):
    """The stage's latest checkpoint was written by an engine whose format `train.engine` cannot resume."""


def check_engine(step_dir: Path, engine: str) -> bool:
    """Whether the checkpoint `step_dir` is sharded; EngineMismatchError if `train.engine=<engine>` cannot
    resume it."""
    sharded = is_sharded(step_dir)
    if sharded != (engine == "fsdp"):
        wrote = "fsdp" if sharded else "torch or colossalai"
        raise EngineMismatchError(
            f"train.engine={engine} cannot resume {step_dir}: it was written by train.engine={wrote}. Resume with "
            f"that engine (fsdp resumes on any number of ranks), or start another stage from its weights with "
            f"stages.<stage>.init_from={step_dir}")
    return sharded
