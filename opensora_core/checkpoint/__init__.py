"""Checkpoints that survive a kill at any moment, and exact resume.

Layout of `cfg.paths.ckpt_dir(stage)`:

    step_0000100/  model.safetensors  ema.safetensors  optimizer.pt  rng_rank{r}.pt ...  meta.json
    latest         the directory name of the newest *complete* checkpoint

A checkpoint of `train.engine=fsdp` holds a `dcp/` folder (torch.distributed.checkpoint: weights, EMA and
optimizer, sharded by rank) instead of the safetensors files and `optimizer.pt`; see sharded.py.

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

from opensora_core.checkpoint import sharded
from opensora_core.checkpoint.integrity import META, verify_checkpoint
from opensora_core.checkpoint.read import (
    WEIGHT_FILES,
    load_ema_state,
    load_ema_weights,
    load_meta,
    load_model_state,
    load_optimizer_state,
    load_rng_state,
    load_weights,
    newest_complete_checkpoint,
    read_latest,
    resolve_checkpoint,
    resume_point,
)
from opensora_core.checkpoint.sharded import EngineMismatchError
from opensora_core.checkpoint.state import (
    LATEST,
    CheckpointError,
    CheckpointWriteError,
    TrainState,
    rng_state,
    set_rng_state,
    step_dir_name,
)
from opensora_core.checkpoint.write import prune, save_checkpoint

__all__ = [
    "LATEST", "META", "WEIGHT_FILES", "CheckpointError", "CheckpointWriteError", "EngineMismatchError", "TrainState",
    "load_ema_state", "load_ema_weights", "load_meta", "load_model_state", "load_optimizer_state", "load_rng_state",
    "load_weights", "newest_complete_checkpoint", "prune", "read_latest", "resolve_checkpoint", "resume_point",
    "rng_state", "save_checkpoint", "set_rng_state", "sharded", "step_dir_name", "verify_checkpoint",
]
