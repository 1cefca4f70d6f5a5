"""Finding, verifying and loading checkpoints: the one way every reader (resume, the next stage's init,
evaluation, `opensora sample`) gets weights, falling back from a damaged `latest` to the newest complete one."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from opensora_core.checkpoint import sharded
from opensora_core.checkpoint.integrity import META, verify_checkpoint
from opensora_core.checkpoint.state import LATEST, CheckpointError, TrainState, dist_rank_world

log = logging.getLogger(__name__)


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
    rank, _ = dist_rank_world()
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
    if sharded.is_sharded(ckpt_dir):
        return sharded.load_full(ckpt_dir, "model")
    return load_file(str(Path(ckpt_dir) / "model.safetensors"))


def load_ema_state(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    if sharded.is_sharded(ckpt_dir):
        return sharded.load_full(ckpt_dir, "ema")
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
    if use_ema and ((step_dir / "ema.safetensors").is_file() or sharded.has_key(step_dir, "ema")):
        return load_ema_state(step_dir)
    return load_model_state(step_dir)
