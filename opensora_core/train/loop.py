"""The training loop of one stage, top to bottom: `train_stage(cfg, stage)`.

Run it in one process or under torchrun (every rank runs the same function). Each iteration: draw t and the
noise, IDDPM hybrid loss under autocast, (scaled) backward, unscale + overflow check, clip to 1.0, AdamW step,
EMA update. Every `ckpt_every` steps and at the end: a complete checkpoint (see checkpoint.py). A checkpoint in
`cfg.paths.ckpt_dir(stage)` means resume: weights, optimizer, scaler, scheduler, sampler position and every
rank's RNG states are restored, so the resumed run continues bit for bit.
"""

from __future__ import annotations

import logging
import math
import signal
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from opensora_core import checkpoint as ckpt
from opensora_core.checkpoint import sharded
from opensora_core.config import Config
from opensora_core.diffusion.training import training_diffusion
from opensora_core.models.sequence_parallel import enable_sequence_parallel
from opensora_core.models.stage import build_stage_model, latent_size
from opensora_core.tracking import MetricsLog
from opensora_core.train.data import build_train_data
from opensora_core.train.distributed import destroy_distributed, init_distributed
from opensora_core.train.ema import EMA
from opensora_core.train.engines import make_engine
from opensora_core.train.init import init_weights
from opensora_core.train.metrics import COLUMNS, Throughput, memory_mb, peak_tflops
from opensora_core.train.precision import LossScaler, NaNGuard, NonFiniteLossError, autocast
from opensora_core.train.run_tracking import dataset_lineage, git_commit, log_dataset, tracking_run
from opensora_core.train.seeding import seed_everything
from opensora_core.train.stop import StopRequest, Terminated, agree

log = logging.getLogger("opensora.train")


# (cfg, stage, out_dir, mlflow run, device, resume step) -> an object with `maybe_run(step, ema)`, or None
WatcherFactory = Callable[..., Any]

def stage_lr(cfg: Config, stage: str) -> float:
    return cfg.stage(stage).lr or cfg.train.lr


def _warmup(warmup_steps: int):
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def _scheduler_state(scheduler) -> dict:
    return {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}


def train_stage(cfg: Config, stage: str, *, track: bool = True, dataset=None,
                watcher: WatcherFactory | None = None) -> dict[str, Any]:
    """Train `stage` of `cfg` to `max_steps` (resuming if a checkpoint exists); returns the final summary
    (also written to `cfg.paths.ckpt_dir(stage)/final.json` by rank 0).

    `dataset` replaces the configured data source (tests). `watcher` builds rank 0's sampler during training
    when `train.sample_every` > 0 (opensora_core.eval.watch.TrainingWatcher.for_stage: the caller hands it in,
    so training does not depend on evaluation). Raises NonFiniteLossError after `train.nan_patience`
    consecutive NaN/inf losses, Terminated on SIGTERM/SIGINT.
    """
    if cfg.train.sample_every and watcher is None:
        raise ValueError(f"train.sample_every={cfg.train.sample_every} needs a watcher: pass "
                         "watcher=opensora_core.eval.watch.TrainingWatcher.for_stage (the `opensora train` command does)")
    stop = StopRequest()
    old_handlers = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    env = init_distributed(timeout_s=cfg.train.collective_timeout_s)
    try:
        return _train(cfg, stage, env, track and env.is_main, dataset, stop, watcher)
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        destroy_distributed()


def _train(cfg: Config, stage: str, env, track: bool, dataset, stop: StopRequest,
           make_watcher: WatcherFactory | None) -> dict[str, Any]:
    st, tc = cfg.stage(stage), cfg.train
    out_dir = cfg.paths.ckpt_dir(stage)
    sp_size = st.sp_size
    if env.world_size % sp_size:
        raise ValueError(f"stages.{stage}.sp_size {sp_size} needs a multiple of {sp_size} processes, got {env.world_size}")
    dp_size, dp_rank = env.world_size // sp_size, env.rank // sp_size
    # the ranks of a sequence-parallel group must draw the same t, noise and caption dropout: seed by dp rank
    seed_everything(cfg.seed + dp_rank)
    torch.use_deterministic_algorithms(True, warn_only=True)

    resume_from = ckpt.resume_point(out_dir)  # verified; a damaged `latest` falls back with a warning
    meta = ckpt.load_meta(resume_from) if resume_from else None
    # a sharded (fsdp) checkpoint loads after sharding, in engine.load_state; the others load here
    resume_sharded = resume_from is not None and sharded.check_engine(resume_from, tc.engine)
    model = build_stage_model(cfg, stage)
    init_desc = f"resume:{resume_from.name}" if resume_from else init_weights(model, cfg, stage)
    if resume_from and not resume_sharded:
        model.load_state_dict(ckpt.load_model_state(resume_from))
    engine = make_engine(tc.engine, env, tc)
    train_model = engine.prepare(model)  # moves `model` to its device (and gives every rank rank 0's weights)
    ema = EMA(model, tc.ema_decay)  # after prepare: the shadow lives where the weights it averages live
    if resume_from and not resume_sharded:
        ema.load_state_dict(ckpt.load_ema_state(resume_from))
    if sp_size > 1:
        enable_sequence_parallel(engine.unwrap(train_model), sp_size)
    lr = stage_lr(cfg, stage)
    optimizer = engine.make_optimizer(engine.unwrap(train_model), lr, tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup(tc.warmup_steps))
    train_model, optimizer = engine.boost(train_model, optimizer)  # identity for torch; booster.boost
    # an engine that owns precision (ColossalAI LowLevelZero) scales fp16 losses itself
    scaler = LossScaler(tc.dtype == "fp16" and not engine.owns_precision, tc.initial_loss_scale)
    guard = NaNGuard(tc.nan_patience)

    diffusion = training_diffusion(cfg)
    data = build_train_data(cfg, stage, env.rank, dp_size, dp_rank, env.device, dataset)

    step, epoch, batches_in_epoch = 0, 0, 0
    if resume_from:
        step, epoch = meta.step, meta.epoch
        batches_in_epoch = 0  # counted from the resume point: the sampler adds where it resumed
        engine.load_state(resume_from, train_model, optimizer, ema)
        scheduler.load_state_dict({**meta.scheduler, "lr_lambdas": [None]})
        scaler.load_state_dict(meta.scaler)
        guard.load_state_dict(meta.nan_guard)
        data.sampler.load_state_dict(meta.sampler)
        rng = ckpt.load_rng_state(resume_from, env.rank)
        if rng is not None and meta.world_size == env.world_size:
            ckpt.set_rng_state(rng)
        else:
            log.warning("world size changed (%s -> %s): RNG streams restart from the seed", meta.world_size,
                        env.world_size)
            seed_everything(cfg.seed + dp_rank + step)
    else:
        data.sampler.set_epoch(0)

    model_ref = engine.unwrap(train_model)
    tokens_per_sample = model_ref.num_tokens(latent_size(cfg, stage)) if hasattr(model_ref, "num_tokens") else 0
    global_batch = st.batch_size * dp_size
    throughput = Throughput(model_ref, latent_size(cfg, stage), global_batch, env.world_size, peak_tflops(env.device, tc.dtype, tc.peak_tflops))
    tags = {"engine": tc.engine, "git_commit": git_commit(cfg.project_dir), "checkpoint_dir": str(out_dir), "init": init_desc,
            "world_size": env.world_size, "sp_size": sp_size}
    if env.is_main:
        log.info("stage %s: %s, %d params, %d ranks (sp %d), batch %d/rank, lr %g, %s, steps %d -> %d",
                 stage, init_desc, sum(p.numel() for p in model.parameters()), env.world_size, sp_size,
                 st.batch_size, lr, tc.dtype, step, st.max_steps)

    clips, dataset = dataset_lineage(cfg, stage, out_dir, env.is_main)

    def save(step_now: int, run_id: str | None) -> None:
        state = ckpt.TrainState(
            step=step_now, epoch=epoch, sampler=data.sampler.state_dict(consumed=batches_in_epoch * st.batch_size), scaler=scaler.state_dict(),
            scheduler=_scheduler_state(scheduler), nan_guard=guard.state_dict(), mlflow_run_id=run_id,
            config=cfg.model_dump(mode="json"), extra={"stage": stage, "init": init_desc, "dataset": dataset})
        # collective for every engine (ColossalAI gathers optimizer shards and writes its files first; FSDP
        # hands over a writer of its shards)
        files = engine.save_state(out_dir, ckpt.step_dir_name(step_now), train_model, optimizer, ema)
        path = ckpt.save_checkpoint(out_dir, state, keep_last=tc.keep_last, **files)
        engine.prune(out_dir)
        if env.is_main:
            log.info("saved checkpoint %s", path)

    with tracking_run(cfg, stage, track, meta.mlflow_run_id if meta else None, tags) as tracker:
        run_id = tracker.run_id if tracker else (meta.mlflow_run_id if meta else None)
        if tracker and dataset and not meta:  # the runs table's Dataset column: which clips trained this run
            log_dataset(clips, dataset)
        metrics = MetricsLog(out_dir, tracker, resume_step=step, columns=COLUMNS) if env.is_main else None
        # rank 0 samples between steps, no collective: the other ranks wait in the next step's all-reduce (watch.py)
        watcher = make_watcher(cfg, stage, out_dir, tracker, env.device, step) if env.is_main and make_watcher else None
        if watcher:  # at step 0 of a fresh job: the chart's first point
            watcher.maybe_run(step, ema)
        t_start, last_loss = time.perf_counter(), float("nan")
        train_model.train()
        stop.in_loop = True
        while step < st.max_steps:
            for batch in data.loader:
                t0 = time.perf_counter()
                batches_in_epoch += 1
                x, y, mask = data.batch_inputs(batch)
                t = diffusion.sample_timesteps(x.shape[0], env.device)
                with autocast(tc.dtype, env.device):
                    loss = diffusion.training_losses(train_model, x, t, model_kwargs={"y": y, "mask": mask})["loss"].mean()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                grad_norm = float("nan")
                loss_bad, stop_now = agree(loss, stop, env.device)
                if guard.observe(loss_bad, step):
                    ok, grad_norm = engine.backward_step(loss, optimizer, model_ref, scaler, tc.grad_clip, sp_size)
                    if ok:
                        ema.update(model_ref)
                    last_loss = float(loss.detach())
                with warnings.catch_warnings():  # a skipped step still advances the schedule, on purpose
                    warnings.simplefilter("ignore", UserWarning)
                    scheduler.step()
                dt = time.perf_counter() - t0
                if env.is_main and (step % tc.log_every == 0 or step == st.max_steps or step == 1):
                    row = {"step": step, "epoch": epoch, "loss": float(loss.detach()),
                           "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                           "loss_scale": scaler.scale_value, "skipped_steps": scaler.skipped_steps,
                           "samples_per_s": global_batch / dt, "tokens_per_s": global_batch * tokens_per_sample / dt,
                           "step_time": dt, "memory_mb": memory_mb(env.device), **throughput.metrics(dt)}
                    metrics.log(row)
                    log.info("step %d/%d loss %.4f lr %.2e grad %.3f scale %g skipped %d %.1f samples/s %.0f tokens/s "
                             "%.3g TFLOP/s MFU %s peak %.0f MiB", step, st.max_steps, row["loss"], row["lr"], grad_norm,
                             scaler.scale_value, scaler.skipped_steps, row["samples_per_s"], row["tokens_per_s"],
                             row["tflops"], f"{row['mfu']:.1%}" if "mfu" in row else "n/a", row["memory_mb"])
                stopping = step < st.max_steps and stop_now
                if step % tc.ckpt_every == 0 or step == st.max_steps or stopping:
                    save(step, run_id)
                if stopping:
                    raise Terminated(f"received {signal.Signals(stop.signum).name}; checkpointed step {step}")
                if watcher:
                    watcher.maybe_run(step, ema)
                if step >= st.max_steps:
                    break
            else:  # the epoch ran out: next epoch, new shuffle
                epoch, batches_in_epoch = epoch + 1, 0
                data.sampler.set_epoch(epoch)
        wall = time.perf_counter() - t_start
        summary = {"stage": stage, "final_loss": last_loss, "steps": step, "epoch": epoch,
                   "skipped_steps": scaler.skipped_steps, "nonfinite_losses": guard.total, "wall_time_s": wall,
                   "world_size": env.world_size, "checkpoint": str(ckpt.read_latest(out_dir)),
                   "mlflow_run_id": run_id}
        if env.is_main:
            if tracker:
                tracker.log_metrics({"final_loss": last_loss if math.isfinite(last_loss) else -1.0,
                                     "wall_time_s": wall}, step=step)
                pending = tracker.end()  # what a down tracking server could not take is kept in this file
                summary["mlflow_pending"] = str(pending) if pending else None
            metrics.write_final(summary)
    return summary


__all__ = ["train_stage", "Terminated", "NonFiniteLossError", "seed_everything"]
