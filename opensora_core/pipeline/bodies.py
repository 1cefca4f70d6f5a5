"""The stage bodies and the one public registry of stages (`STAGES`): what each kind of stage does.

A body takes a `StageContext` and returns its metrics. The layers' modules imported here load their heavy
dependencies (torch, diffusers, transformers) only when called, so a stage process (DVC runs one per stage) pays
only for its own stage's; the encoders, the Dask route and pandas are imported inside the bodies that use them.

MLflow: a body whose `tracks_itself` is false runs inside a child run that the runner opens; the training job's
rank 0 and the evaluate stage open their own run, joining the same parent (OPENSORA_PARENT_RUN_ID).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from opensora_core.config import Config, Params
from opensora_core.data.cache import build_latent_cache
from opensora_core.data.stages import caption_data, prepare_data
from opensora_core.eval import evaluate as evaluate_stages
from opensora_core.pipeline.process import LineCallback
from opensora_core.train.launcher import launch, train_args


@dataclass(frozen=True)
class StageContext:
    """What a body gets: the config, where it came from (for subprocesses), where to print, and for the
    per-training-stage kinds the training stage's name."""

    cfg: Config
    params: Params
    on_line: LineCallback
    stage: str | None = None
    track: bool = True
    lock_fd: int | None = None  # the stage lock, inherited by every process of a training job


@dataclass(frozen=True)
class Stage:
    """One kind of stage: its body and whether it opens its own MLflow run."""

    kind: str
    run: Callable[[StageContext], dict[str, float]]
    tracks_itself: bool = False


def _on_dask(ctx: StageContext, stage_id: str) -> None:
    """The stage's parallel work on the Dask cluster `data.dask` names (opensora_core.data.parallel)."""
    from opensora_core.data.parallel import run_stage_on_cluster

    run_stage_on_cluster(ctx.params, stage_id)


def prepare(ctx: StageContext) -> dict[str, float]:
    if ctx.cfg.data.dask and ctx.cfg.data.source == "ingest":
        _on_dask(ctx, "prepare")  # probe, hash and scene-split every file on the cluster; then assembles below
    prepare_data(ctx.cfg)
    return _manifest_metrics(ctx.cfg.paths.raw_manifest, "clips")


def caption(ctx: StageContext) -> dict[str, float]:
    caption_data(ctx.cfg)
    return _manifest_metrics(ctx.cfg.paths.manifest, "captioned_clips")


def encoders(ctx: StageContext) -> dict[str, float]:
    """Tiny preset (pretrained: null): train the tiny VAE on the prepared clips and build the tiny T5.
    Hub ids / local folders need nothing here: the out records which weights the later stages load."""
    cfg, p = ctx.cfg, ctx.cfg.paths
    metrics: dict[str, float] = {}
    if cfg.vae.pretrained is None:
        from opensora_core.encoders.build import train_configured_vae

        result = train_configured_vae(cfg)
        metrics.update({f"vae_{k}": float(val) for k, val in result.to_dict().items() if isinstance(val, (int, float))})
    else:
        p.vae_dir.mkdir(parents=True, exist_ok=True)
        (p.vae_dir / "PRETRAINED").write_text(f"{cfg.vae.pretrained}\n")
    if cfg.text_encoder.pretrained is None:
        from opensora_core.encoders import ensure_tiny_text_encoder

        if p.text_encoder_dir.exists():  # rebuilt from the config, never reused stale
            shutil.rmtree(p.text_encoder_dir)
        ensure_tiny_text_encoder(cfg)
    else:
        p.text_encoder_dir.mkdir(parents=True, exist_ok=True)
        (p.text_encoder_dir / "PRETRAINED").write_text(f"{cfg.text_encoder.pretrained}\n")
    return metrics


def cache(ctx: StageContext) -> dict[str, float]:
    cfg, stage = ctx.cfg, ctx.stage
    out = cfg.paths.cache_dir(stage)
    if not cfg.train.use_latent_cache:  # online encoding (opensora-1.0): the out is an explicit placeholder
        out.mkdir(parents=True, exist_ok=True)
        (out / "DISABLED").write_text("train.use_latent_cache is false: the training job encodes online\n")
        return {}

    if cfg.data.dask:
        _on_dask(ctx, f"cache@{stage}")  # one task per shard on the cluster; build_latent_cache then finds it done
    build_latent_cache(cfg, stage)
    return {"cache_mb": sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20}


def train(ctx: StageContext) -> dict[str, float]:
    """Launch `opensora train --stage S` on cfg.train.processes ranks (torchrun); multi-node jobs read
    OPENSORA_NNODES / OPENSORA_RDZV_ENDPOINT / OPENSORA_NODE_RANK (set by the cluster's worker).
    Every process of the job inherits the stage lock, so the lock outlives none of them."""
    params, stage = ctx.params, ctx.stage
    errors: list[str] = []  # the job's error lines, so the failure message says why

    def on_line(line: str) -> None:
        if "Error" in line:
            errors.append(line)
        ctx.on_line(line)

    rank = os.environ.get("OPENSORA_NODE_RANK")
    rc = launch(train_args(stage, params.path, params.preset, params.overrides, track=ctx.track),
                nproc=ctx.cfg.train.processes, hold_fd=ctx.lock_fd, nnodes=int(os.environ.get("OPENSORA_NNODES", "1")),
                rdzv_endpoint=os.environ.get("OPENSORA_RDZV_ENDPOINT") or None,
                node_rank=int(rank) if rank else None, line_callback=on_line)
    if rc != 0:
        why = f" ({errors[-1].split('] ')[-1].strip()})" if errors else ""
        raise RuntimeError(f"training job for {stage} exited with status {rc}{why}; rerun to resume from its last checkpoint")
    return final_metrics(ctx.cfg, stage)


def evaluate(ctx: StageContext) -> dict[str, float]:
    """Samples, prompt adherence and held-out loss of every trained stage; logs its own MLflow run."""
    result = evaluate_stages(ctx.cfg, track=ctx.track)
    if not isinstance(result, dict) and ctx.cfg.paths.metrics.exists():
        result = json.loads(ctx.cfg.paths.metrics.read_text())
    return _numbers(result or {})


STAGES: dict[str, Stage] = {
    "prepare": Stage("prepare", prepare),
    "caption": Stage("caption", caption),
    "encoders": Stage("encoders", encoders),
    "cache": Stage("cache", cache),
    "train": Stage("train", train, tracks_itself=True),
    "evaluate": Stage("evaluate", evaluate, tracks_itself=True),
}


def _numbers(d: dict) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _manifest_metrics(path: Path, name: str) -> dict[str, float]:
    import pandas as pd  # heavy: only the stages that read a manifest pay it

    return {name: float(len(pd.read_csv(path)))} if path.exists() else {}


def final_metrics(cfg: Config, stage: str) -> dict[str, float]:
    """final.json of a training stage (or the last row of train_log.csv): final loss, steps, seconds."""
    d = cfg.paths.ckpt_dir(stage)
    if (d / "final.json").exists():
        return _numbers(json.loads((d / "final.json").read_text()))
    if (d / "train_log.csv").exists():
        import pandas as pd

        df = pd.read_csv(d / "train_log.csv")
        if len(df) and "loss" in df:
            return {"final_loss": float(df["loss"].iloc[-1]), "steps": float(df["step"].iloc[-1]) if "step" in df else 0.0}
    return {}
