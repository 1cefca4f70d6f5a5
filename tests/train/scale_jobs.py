"""Training jobs under torchrun for the scale-out tests (FSDP, resharding, multi-node): one tiny stage of
STEPS steps on a 32-sample latent cache, checkpoints every EVERY steps (all kept)."""

from __future__ import annotations

import json

from opensora_core.train.launcher import launch, train_args

from tests.kit.tiny_training import STAGE, RandomLatents, tiny_config, tiny_overrides, write_latent_cache

N_SAMPLES, BATCH = 32, 2  # 2 ranks: a global batch of 4, 8 steps per epoch
STEPS, EVERY = 20, 5


def settings(engine: str, nproc: int, **extra) -> dict:
    return {"train.engine": engine, "train.processes": nproc, f"stages.{STAGE}.max_steps": STEPS,
            f"stages.{STAGE}.batch_size": BATCH, "train.ckpt_every": EVERY, "train.keep_last": 4, **extra}


def job(run_dir, engine: str, nproc: int, **extra):
    """(config, `opensora` arguments) of the job; writes the latent cache if the run dir has none."""
    values = settings(engine, nproc, **extra)
    cfg = tiny_config(run_dir, **values)
    if not cfg.paths.cache_dir(STAGE).exists():
        write_latent_cache(cfg.paths.cache_dir(STAGE), RandomLatents(N_SAMPLES))
    return cfg, train_args(STAGE, overrides=tiny_overrides(run_dir, **values), track=False)


def train(run_dir, engine: str, nproc: int, **extra):
    """Run the job on one node to the end; returns its config."""
    cfg, args = job(run_dir, engine, nproc, **extra)
    lines: list[str] = []
    rc = launch(args, nproc=nproc, line_callback=lines.append)
    assert rc == 0, "\n".join(lines[-30:])
    return cfg


def losses(cfg) -> dict[int, float]:
    rows = [json.loads(line) for line in (cfg.paths.ckpt_dir(STAGE) / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}
