"""Writing a checkpoint so that a kill at any moment leaves `latest` naming a complete one; pruning old ones."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from opensora_core.checkpoint.integrity import META, disk_full_cause, file_manifest, verify_checkpoint
from opensora_core.checkpoint.read import read_latest
from opensora_core.checkpoint.state import (
    LATEST,
    CheckpointWriteError,
    TrainState,
    barrier,
    dist_rank_world,
    rng_state,
    step_dir_name,
)
from opensora_core.io import atomic_write


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
    rank, world = dist_rank_world()
    ckpt_root = Path(ckpt_root)
    name = step_dir_name(state.step)
    final, tmp = ckpt_root / name, ckpt_root / f".tmp-{name}"
    if rank == 0:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier()
    with _naming_a_full_disk(ckpt_root, name, tmp):
        torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
        if write_shards is not None:  # DCP: every rank writes its shards into tmp/dcp/
            write_shards(tmp)
    barrier()
    if rank == 0:
        with _naming_a_full_disk(ckpt_root, name, tmp):
            if model_state is not None:
                save_file(_cpu_contiguous(model_state), str(tmp / "model.safetensors"))
            if ema_state is not None:
                save_file(_cpu_contiguous(ema_state), str(tmp / "ema.safetensors"))
            if optimizer_state is not None:
                torch.save(optimizer_state, tmp / "optimizer.pt")
            state.world_size = world
            state.files = file_manifest(tmp)  # every rank's files are in: they passed the barrier above
            (tmp / META).write_text(json.dumps(state.__dict__, indent=1, default=str))
        if final.exists():  # a re-run of the same step (e.g. after resuming at the very end)
            shutil.rmtree(final)
        tmp.replace(final)
        with _naming_a_full_disk(ckpt_root, name, None):
            atomic_write(ckpt_root / LATEST, name + "\n")
        prune(ckpt_root, keep_last)
    barrier()
    return final


@contextlib.contextmanager
def _naming_a_full_disk(ckpt_root: Path, name: str, tmp: Path | None):
    """Turn a write that failed for want of space into CheckpointWriteError, after removing the half-written
    temp dir (it holds the space the rerun needs). Other errors pass through unchanged."""
    try:
        yield
    except Exception as e:
        cause = disk_full_cause(e)
        if cause is None:
            raise
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        latest = read_latest(ckpt_root)
        raise CheckpointWriteError(
            f"disk full while writing checkpoint {name} in {ckpt_root} ({cause}); "
            f"`latest` still names {latest.name if latest else 'no checkpoint'}: free space and rerun to resume"
        ) from e


def prune(ckpt_root: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` complete checkpoints (and `latest`); delete older ones and leftovers of
    interrupted saves. "Complete" is checked by file sizes (cheap), so a damaged newer directory never counts
    toward `keep_last`: the newest complete checkpoint is never deleted. Directories newer than every complete
    one are left alone (they are the evidence, and a rerun of that step replaces them)."""
    latest = read_latest(ckpt_root)
    for leftover in ckpt_root.glob(".tmp-step_*"):
        shutil.rmtree(leftover, ignore_errors=True)
    steps = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    complete = [p for p in steps if not verify_checkpoint(p, quick=True)]
    if not complete:
        return
    keep = set(complete[-keep_last:]) | ({latest} if latest else set())
    for old in steps:
        if old not in keep and old.name < complete[-1].name:
            shutil.rmtree(old, ignore_errors=True)
