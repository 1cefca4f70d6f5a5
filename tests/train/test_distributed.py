"""Two gloo processes under torchrun (through the launcher): a job SIGKILLed mid-epoch resumes to identical weights."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import psutil
import pytest
import torch

from opensora_core import checkpoint as ckpt
from opensora_core.train.launcher import build_command, launch, train_args

from tests.kit.tiny_training import STAGE, RandomLatents, tiny_config, tiny_overrides, write_latent_cache

pytestmark = pytest.mark.slow

# 16 samples / (2 ranks x 2) = 4 steps an epoch: the checkpoints of steps 6, 18, 30, 42 are mid-epoch; 42 steps
# (~1 s) after the first one, so the kill lands mid-run
STEPS, EVERY = 48, 6


def _job(run_dir):
    overrides = tiny_overrides(run_dir, **{"train.processes": 2, f"stages.{STAGE}.max_steps": STEPS,
                                           "train.ckpt_every": EVERY, "train.keep_last": 2, "train.log_every": 4})
    cfg = tiny_config(run_dir, **{"train.processes": 2})
    write_latent_cache(cfg.paths.cache_dir(STAGE), RandomLatents(16))
    return cfg, train_args(STAGE, overrides=overrides, track=False)


def _kill_after_first_checkpoint(args) -> int:
    """SIGKILL every process of the job (torchrun starts the ranks in sessions of their own, so not by process
    group) once the first checkpoint is saved; returns the job's exit status."""
    proc = subprocess.Popen(build_command(args, nproc=2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:
        if "saved checkpoint" in line and ckpt.step_dir_name(EVERY) in line:
            ranks = psutil.Process(proc.pid).children(recursive=True)
            for p in [proc, *ranks]:  # torchrun (in `proc`) and both ranks, no chance to clean up
                with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                    p.kill()
            psutil.wait_procs(ranks, timeout=60)  # (the job itself is reaped by proc.wait)
            break
    return proc.wait()


def test_killed_job_resumes_to_identical_weights(tmp_path):
    full_cfg, full_args = _job(tmp_path / "full")
    lines: list[str] = []
    assert launch(full_args, nproc=2, line_callback=lines.append) == 0
    assert any(line.startswith("[rank 1] ") for line in lines), lines[-5:]

    cfg, args = _job(tmp_path / "killed")
    assert _kill_after_first_checkpoint(args) == -signal.SIGKILL
    interrupted_at = ckpt.load_meta(ckpt.read_latest(cfg.paths.ckpt_dir(STAGE))).step
    assert EVERY <= interrupted_at < STEPS
    resumed: list[str] = []
    assert launch(args, nproc=2, line_callback=resumed.append) == 0
    assert any(f"resume:{ckpt.step_dir_name(interrupted_at)}" in line for line in resumed), resumed[-5:]

    a = ckpt.read_latest(full_cfg.paths.ckpt_dir(STAGE))
    b = ckpt.read_latest(cfg.paths.ckpt_dir(STAGE))
    assert a.name == b.name == f"step_{STEPS:07d}"
    for load in (ckpt.load_model_state, ckpt.load_ema_state):
        wa, wb = load(a), load(b)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert sorted(p.name for p in b.glob("rng_rank*.pt")) == ["rng_rank0.pt", "rng_rank1.pt"]
