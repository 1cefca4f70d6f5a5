"""The evaluate stage: every trained stage's EMA model and the untrained step-0 model, on the same held-out
prompts, seeds and noise; one flat metrics.json for `dvc metrics show` and the same numbers in MLflow.

Metric names (`<model>.<metric>`, model in step0 | <stage> | final, plus `reference.*` from the real held-out
clips, which shows what a perfect generator scores):
  color_acc, motion_acc, direction_acc (= axis_acc x sign_acc: metrics.direction_scores), shape_acc, their
  chance levels *_chance (best prompt-blind score) and *_chance_indep (these predictions shuffled across
  prompts); adherence_n (samples scored: prompts x eval.seeds, one seed for step0);
  temporal_change (mean |frame_t+1 - frame_t|, [0,1] pixels); fd_randproj (Fréchet distance to the held-out
  clips in a fixed 32-d random projection of 4x16x16 frames: not FVD); heldout_loss and heldout_loss_b0..b3
  (diffusion loss in four timestep buckets, fixed noise and t).

Heavy or optional imports (mlflow) happen inside the functions that need them, so importing this module (the CLI,
the stage processes, the Dask workers do) does not load them.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import torch

from opensora_core.config import Config
from opensora_core.diffusion import IDDPM
from opensora_core.encoders import build_text_encoder, build_vae
from opensora_core.eval import metrics as M
from opensora_core.eval.heldout import heldout_loss
from opensora_core.eval.prompts import heldout_rows, read_clip
from opensora_core.eval.sample import generate, write_samples
from opensora_core.io import atomic_write
from opensora_core.models.stage import build_stage_model
from opensora_core.tracking import log_table, start_run

log = logging.getLogger(__name__)


def trained_stages(cfg: Config) -> list[str]:
    """Stages (pipeline order) that have a complete checkpoint."""
    from opensora_core.checkpoint import read_latest

    return [s for s in cfg.stage_names() if read_latest(cfg.paths.ckpt_dir(s)) is not None]


def step0_model(cfg: Config, stage: str):
    """The untrained model, initialised exactly as training starts it (seed cfg.seed, rank 0), at `stage`'s size."""
    torch.manual_seed(cfg.seed)
    return build_stage_model(cfg, stage).eval()


def stage_model(cfg: Config, stage: str):
    from opensora_core.checkpoint import load_ema_weights

    model = build_stage_model(cfg, stage)
    model.load_state_dict(load_ema_weights(cfg.paths.ckpt_dir(stage)))
    return model.eval()


def _real_clips(cfg: Config, rows: list[dict], stage: str) -> torch.Tensor | None:
    """Held-out clips `[N, 3, T, S, S]` at the stage's frames/stride/size, or None when prompts have no clips."""
    st = cfg.stage(stage)
    paths = [r for r in rows if r.get("path")]
    if not paths:
        return None
    return torch.stack([read_clip(r["path"], st.num_frames, st.frame_interval, st.image_size, r.get("start")) for r in paths])


def sample_seeds(cfg: Config, model, vae, text_encoder, texts: list[str], seeds: int | None = None,
                 progress: bool = True) -> torch.Tensor:
    """Videos `[k * N, 3, T, H, W]` of the N `texts` sampled with the evaluate stage's sampler, seed by seed:
    eval.seed, eval.seed + 1, ... (k = `seeds`, default eval.seeds)."""
    return torch.cat([generate(model, vae, text_encoder, texts, cfg_scale=cfg.eval.cfg_scale,
                               steps=cfg.eval.sampling_steps, seed=cfg.eval.seed + k, batch_size=cfg.eval.batch_size,
                               progress=progress) for k in range(seeds or cfg.eval.seeds)])


def score_model(cfg: Config, model, stage: str, rows: list[dict], vae, text_encoder, enc: dict, out_dir: Path,
                progress: bool = True, seeds: int | None = None) -> tuple[dict[str, float], list[dict]]:
    """Sample every row with `seeds` seeds (default eval.seeds), write the first seed's files and compute every
    metric of one model at `stage`'s size."""
    texts = [r["text"] for r in rows]
    videos = sample_seeds(cfg, model, vae, text_encoder, texts, seeds, progress)
    write_samples(videos[: len(rows)], texts, out_dir)
    return score_videos(cfg, model, stage, rows, videos, vae, enc)


def score_videos(cfg: Config, model, stage: str, rows: list[dict], videos: torch.Tensor, vae,
                 enc: dict) -> tuple[dict[str, float], list[dict]]:
    """Every metric of `videos` `[k * N, 3, T, H, W]` (k samples of each of the N `rows`, seed by seed, from
    `model`): temporal change;
    adherence when the rows carry ground truth; with real held-out clips, the Fréchet distance and `model`'s
    held-out loss per timestep bucket. `enc` is the text encoder's output for the rows. Returns (metrics, per-clip rows)."""
    out: dict[str, float] = {"temporal_change": M.temporal_change(videos)}
    table: list[dict] = []
    copies = len(videos) // len(rows)
    if all("color" in r and "motion" in r for r in rows):
        summary, table = M.adherence(videos, rows * copies)
        out.update(summary)
    real = _real_clips(cfg, rows, stage)
    if real is not None:
        out["fd_randproj"] = M.frechet_random_projection(videos, real)
        keep = [i for i, r in enumerate(rows) if r.get("path")]
        latents = vae.encode(real).float()
        out.update(heldout_loss(model, IDDPM(timestep_respacing=""), latents, enc["y"][keep].float(),
                                enc["mask"][keep], seed=cfg.eval.seed))
    return out, table


def _reference(cfg: Config, rows: list[dict], stage: str) -> dict[str, float]:
    """What a perfect generator scores: the metrics of the real held-out clips themselves."""
    real = _real_clips(cfg, rows, stage)
    if real is None:
        return {}
    out = {"temporal_change": M.temporal_change(real)}
    if all("color" in r for r in rows):
        out.update(M.adherence(real, [r for r in rows if r.get("path")])[0])
    return out


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def evaluate(cfg: Config, stages: list[str] | None = None, include_step0: bool = True, track: bool = True,
             progress: bool = True, vae=None, text_encoder=None) -> dict[str, float]:
    """Evaluate the trained stages (default: every stage with a checkpoint) and the step-0 model.

    Writes `cfg.paths.metrics` (flat `<model>.<metric>` floats), samples under `cfg.paths.eval_dir/samples/<model>/`,
    per-prompt predictions in `eval_dir/adherence.json`; logs all of it to an MLflow run `evaluate`
    (tag stage=evaluate). Returns the metrics dict. `vae` / `text_encoder` default to `build_vae(cfg)` /
    `build_text_encoder(cfg)`.
    """
    done = trained_stages(cfg)
    stages = [s for s in (stages or done)]
    missing = [s for s in stages if s not in done]
    if missing or not stages:
        raise FileNotFoundError(f"no checkpoint for {', '.join(missing) or 'any stage'} under "
                                f"{cfg.paths.root / 'checkpoints'}: train first (opensora train --stage ...)")
    final = stages[-1]
    rows = heldout_rows(cfg)
    if vae is None or text_encoder is None:
        vae = vae if vae is not None else build_vae(cfg)
        text_encoder = text_encoder if text_encoder is not None else build_text_encoder(cfg)
    enc = text_encoder.encode([r["text"] for r in rows])
    eval_dir = cfg.paths.eval_dir
    samples_root = eval_dir / "samples"
    shutil.rmtree(samples_root, ignore_errors=True)

    metrics: dict[str, float] = {}
    tables: dict[str, list[dict]] = {}
    plan = ([("step0", final)] if include_step0 else []) + [(s, s) for s in stages]
    for name, stage in plan:
        log.info("evaluate: %s at %s size", name, stage)
        model = step0_model(cfg, stage) if name == "step0" else stage_model(cfg, stage)
        # the untrained model scores chance: one seed is enough to show it
        scores, tables[name] = score_model(cfg, model, stage, rows, vae, text_encoder, enc, samples_root / name, progress,
                                           seeds=1 if name == "step0" else None)
        metrics.update({f"{name}.{k}": float(v) for k, v in scores.items()})
        if name == final:
            metrics.update({f"final.{k}": float(v) for k, v in scores.items()})
    metrics.update({f"reference.{k}": float(v) for k, v in _reference(cfg, rows, final).items()})
    _write_json_atomic(cfg.paths.metrics, metrics)
    _write_json_atomic(eval_dir / "adherence.json", tables)
    if track:
        _log_to_mlflow(cfg, metrics, tables, eval_dir)
    return metrics


def _log_to_mlflow(cfg: Config, metrics: dict[str, float], tables: dict[str, list[dict]], eval_dir: Path) -> None:
    with start_run(cfg, "evaluate", stage="evaluate") as run:
        import mlflow

        mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
        for name, rows in tables.items():
            log_table(f"adherence_{name}", rows)
        mlflow.log_artifact(str(cfg.paths.metrics))
        if (eval_dir / "samples").is_dir():
            mlflow.log_artifacts(str(eval_dir / "samples"), artifact_path="samples")
        log.info("evaluate: logged %d metrics to MLflow run %s", len(metrics), run.info.run_id)
