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

meta.json also records the size and SHA-256 of every file of the step directory (integrity.py). Whatever loads a
checkpoint (resume, the next stage's init, `opensora sample`) goes through `resolve_checkpoint`, which verifies
it; a stage directory whose `latest` is damaged falls back to its newest complete checkpoint with a warning
naming what was wrong, and with none complete it raises CheckpointError, deleting nothing. A disk that fills
up mid-save raises CheckpointWriteError ("disk full while writing checkpoint ...") and leaves `latest` alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
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
from opensora_core.train.integrity import META, disk_full_cause, file_manifest, verify_checkpoint

log = logging.getLogger(__name__)
LATEST = "latest"


class CheckpointError(RuntimeError):
    """No checkpoint that can be trusted where one is needed; the message says which and what is wrong."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, file-size limit); the previous one stays `latest`."""


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
    files: dict = field(default_factory=dict)  # relative path -> {"size", "sha256"}: see integrity.py


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
    with _naming_a_full_disk(ckpt_root, name, tmp):
        torch.save(rng_state(), tmp / f"rng_rank{rank}.pt")
        if write_shards is not None:  # DCP: every rank writes its shards into tmp/dcp/
            write_shards(tmp)
    _barrier()
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
        os.replace(tmp, final)
        with _naming_a_full_disk(ckpt_root, name, None):
            _atomic_write_text(ckpt_root / LATEST, name + "\n")
        prune(ckpt_root, keep_last)
    _barrier()
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


# ---- loading ----------------------------------------------------------------------------------------------


def read_latest(ckpt_root: Path) -> Path | None:
    """The checkpoint directory `latest` names (unverified: see `resolve_checkpoint`), or None."""
    name = _latest_name(Path(ckpt_root) / LATEST)
    d = Path(ckpt_root) / name if name else None
    return d if d is not None and (d / META).is_file() else None


WEIGHT_FILES = ("model.safetensors", "ema.safetensors", "dcp/")  # dcp/: FSDP shards (model, EMA, optimizer)


def resolve_checkpoint(path: Path, what: str = "checkpoint", only: tuple[str, ...] | None = WEIGHT_FILES) -> Path:
    """The verified step directory to load from `path`: a step directory (must verify) or a stage directory
    (its `latest`, else the newest complete checkpoint, with a warning naming what was wrong with each newer
    one). `only`: the files that must verify (default: the weights, what init and sampling load; None: all).
    Raises CheckpointError (deleting nothing) when there is none; FileNotFoundError when `path` holds no
    checkpoint at all."""
    path = Path(path)
    if (path / META).is_file() or path.name.startswith("step_"):
        problems = verify_checkpoint(path, only=only)
        if problems:
            raise CheckpointError(f"{what} {path} is damaged: {'; '.join(problems)}")
        return path
    found = newest_complete_checkpoint(path, only=only)
    if found is None:
        raise FileNotFoundError(f"{path}: no checkpoint (no {META}, no `latest`, no step_* directories)")
    return found


def newest_complete_checkpoint(ckpt_root: Path, only: tuple[str, ...] | None = None) -> Path | None:
    """`latest` if it verifies, else the newest step directory that does (warning with what was wrong with
    the ones passed over). None when the directory holds no checkpoint at all; CheckpointError when it holds
    some but none verifies (nothing is deleted: the files may still be recoverable by hand). `only`: verify
    just these files (see verify_checkpoint); a resume verifies everything."""
    ckpt_root = Path(ckpt_root)
    steps = sorted((p for p in ckpt_root.glob("step_*") if p.is_dir()), reverse=True)
    latest_file = ckpt_root / LATEST
    if not steps and not latest_file.exists():
        return None
    named = _latest_name(latest_file)
    candidates = ([ckpt_root / named] if named else []) + [p for p in steps if p.name != named]
    rejected: list[str] = []
    if latest_file.exists() and not named:
        rejected.append("`latest` unreadable")
    for d in candidates:
        problems = verify_checkpoint(d, only=only)
        if not problems:
            if rejected:
                log.warning("checkpoint %s: %s; using %s instead", ckpt_root, "; ".join(rejected), d.name)
            return d
        rejected.append(f"{d.name}: {', '.join(problems)}" + (" (named by `latest`)" if d.name == named else ""))
    raise CheckpointError(f"no complete checkpoint in {ckpt_root}: {'; '.join(rejected) or 'no step directories'}. "
                          "Nothing was deleted; remove the stage directory to start the stage over")


def _latest_name(latest_file: Path) -> str | None:
    try:
        name = latest_file.read_text().strip() if latest_file.is_file() else ""
    except (OSError, UnicodeDecodeError):
        return None
    return name if name.startswith("step_") and "/" not in name else None


def resume_point(ckpt_root: Path) -> Path | None:
    """Collective: the checkpoint a (possibly distributed) training job resumes from, chosen and verified by
    rank 0 and broadcast, so every rank loads the same one (and a CheckpointError stops every rank)."""
    rank, _ = _dist()
    choice: list = [None, None]
    if rank == 0:
        try:
            found = newest_complete_checkpoint(ckpt_root)
            choice[0] = found.name if found else None
        except CheckpointError as e:
            choice[1] = str(e)
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(choice, src=0)
    if choice[1]:
        raise CheckpointError(choice[1])
    return Path(ckpt_root) / choice[0] if choice[0] else None


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
    (`cfg.paths.ckpt_dir(stage)`) or of one checkpoint directory, verified (`resolve_checkpoint`); for the next
    stage and for evaluation."""
    try:
        ckpt = resolve_checkpoint(stage_dir)
    except FileNotFoundError:
        raise FileNotFoundError(f"no complete checkpoint in {stage_dir} (no `latest`): train that stage first") from None
    return load_weights(ckpt, use_ema)


def load_weights(step_dir: Path, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """EMA (or raw) weights of a step directory already verified by `resolve_checkpoint` (safetensors or DCP)."""
    step_dir = Path(step_dir)
    if use_ema and ((step_dir / "ema.safetensors").is_file() or dcp_checkpoint.has_key(step_dir, "ema")):
        return load_ema_state(step_dir)
    return load_model_state(step_dir)
