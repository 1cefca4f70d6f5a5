"""Watching a training job learn: every `train.sample_every` steps, rank 0 samples `train.sample_prompts` fixed
held-out prompts with the EMA weights and logs what the evaluate stage would score, as step metrics.

Per pass (also at step 0 of a fresh job, the chart's first point, and at the stage's last step):
  - MLflow step metrics `watch/<metric>`: color_acc, motion_acc, direction_acc (= axis_acc x sign_acc),
    shape_acc, adherence_n (prompts with synthetic ground truth), temporal_change, and with real held-out clips
    (the manifest's val split) fd_randproj and heldout_loss, heldout_loss_b0..b3 (diffusion loss per timestep bucket, b0 least noisy);
    `watch/seconds`, the pass's wall time (its cost);
  - an animated gif of the K samples, `watch/step_XXXXXXX.gif`, as an MLflow artifact and beside the checkpoints;
  - a row of `watch_log.csv` / `.jsonl` beside the checkpoints (train_log.csv keeps its columns).
Sampling and scoring are the evaluate stage's own (`eval.sample.generate`, `eval.evaluation.score_videos`), with
`train.sample_steps` steps and `train.sample_cfg_scale` (default eval.cfg_scale); metric names match metrics.json's.

The other ranks: a pass runs on rank 0 between two optimizer steps and makes no collective call, so the other
ranks run on into the next step and wait for rank 0 in its gradient all-reduce. That wait is bounded by the
process group's timeout (10 minutes, train/distributed.py): a pass longer than a third of it logs a warning naming
the knobs to turn down.

RNG: the pass and the watcher's construction draw only from their own seeded generators and restore the global
torch / numpy / python states, so a watched job trains to the same weights as an unwatched one.

The `train.sample_*` keys still belong to the training stages' fingerprint (stages.STAGE_KEYS): dvc.yaml tracks
`presets.<preset>.train` as a whole, and leaving them out of one door only would make `dvc repro` and the Prefect
flow disagree about what is up to date. Turning watching on or off therefore reruns training.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from opensora_core.config import Config
from opensora_core.encoders import build_text_encoder, build_vae
from opensora_core.eval.evaluation import score_videos
from opensora_core.eval.prompts import heldout_rows
from opensora_core.eval.sample import generate, write_gif_grid
from opensora_core.models.stage import build_stage_model
from opensora_core.tracking import MetricsLog

log = logging.getLogger("opensora.train")

WATCH_COLUMNS = ("step", "seconds", "color_acc", "motion_acc", "direction_acc", "axis_acc", "sign_acc", "shape_acc",
                 "adherence_n", "temporal_change", "fd_randproj", "heldout_loss", "heldout_loss_b0", "heldout_loss_b1",
                 "heldout_loss_b2", "heldout_loss_b3")
PREFIX = "watch/"
COLLECTIVE_TIMEOUT_S = 600  # dist.init_process_group's timeout in train/distributed.py


@contextlib.contextmanager
def isolated_rng(device: torch.device):
    """Run a block without moving the global torch (CPU and `device`), numpy and python RNG streams."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


class EncodedPrompts:
    """A text encoder's output for fixed prompts, computed once; `encode(texts)` looks them up, so the encoder
    (T5-XXL for Open-Sora 1.0) need not stay in rank 0's memory during training."""

    def __init__(self, texts: list[str], enc: dict[str, torch.Tensor]):
        self.index = {t: i for i, t in enumerate(texts)}
        self.enc = {k: v.detach().cpu() for k, v in enc.items()}

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        idx = [self.index[t] for t in texts]
        return {k: v[idx] for k, v in self.enc.items()}


def watch_prompts(cfg: Config, n: int) -> list[dict]:
    """The K held-out prompts a watcher samples (eval.prompts.heldout_rows); a clear error when there are none."""
    try:
        rows = heldout_rows(cfg, n)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"train.sample_every={cfg.train.sample_every} samples held-out prompts, but none can be "
                         f"read: {e} (fix eval.prompts, or set train.sample_every=0)") from None
    if not rows:
        raise ValueError(f"train.sample_every={cfg.train.sample_every}: no held-out prompts (eval.prompts, the "
                         f"manifest's val split or the bundled list): set eval.prompts or train.sample_every=0")
    return rows


class TrainingWatcher:
    """Rank 0's sampler during training (see the module docstring). `maybe_run(step, ema)` after each step."""

    def __init__(self, cfg: Config, stage: str, out_dir: Path, mlflow=None, device: torch.device | str = "cpu",
                 resume_step: int = 0, vae=None, text_encoder=None):
        tc = cfg.train
        self.cfg, self.stage, self.mlflow = cfg, stage, mlflow
        self.device = torch.device(device)
        self.every, self.max_steps = tc.sample_every, cfg.stage(stage).max_steps
        self.steps = tc.sample_steps
        self.cfg_scale = cfg.eval.cfg_scale if tc.sample_cfg_scale is None else tc.sample_cfg_scale
        self.rows = watch_prompts(cfg, tc.sample_prompts)
        self.texts = [r["text"] for r in self.rows]
        with isolated_rng(self.device), torch.no_grad():  # building models draws random initial weights
            self.vae, text_encoder = self._encoders(vae, text_encoder)
            self.prompts = EncodedPrompts(self.texts, text_encoder.encode(self.texts))
            self.model = build_stage_model(self.cfg, stage).to(self.device).eval().requires_grad_(False)
        self.enc = self.prompts.enc
        self.gif_dir = Path(out_dir) / "watch"
        self.gif_dir.mkdir(parents=True, exist_ok=True)
        self.log = MetricsLog(out_dir, mlflow, resume_step, name="watch_log", columns=WATCH_COLUMNS, prefix=PREFIX)
        self.done = {resume_step} if resume_step else set()  # a resumed job logged its checkpoint's step already
        log.info("watching %s: %d prompts every %d steps (%d sampling steps, cfg %g)", stage, len(self.rows),
                 self.every, self.steps, self.cfg_scale)

    def _encoders(self, vae, text_encoder):
        try:
            vae = vae if vae is not None else build_vae(self.cfg, str(self.device))
            text_encoder = text_encoder if text_encoder is not None else build_text_encoder(self.cfg, str(self.device))
        except FileNotFoundError as e:
            raise FileNotFoundError(f"train.sample_every={self.every} decodes samples with the VAE and text "
                                    f"encoder: {e}") from None
        return vae, text_encoder

    @classmethod
    def for_stage(cls, cfg: Config, stage: str, out_dir: Path, mlflow, device, resume_step: int = 0):
        """The watcher of a stage, or None when `train.sample_every` is 0."""
        return cls(cfg, stage, out_dir, mlflow, device, resume_step) if cfg.train.sample_every else None

    def due(self, step: int) -> bool:
        return step not in self.done and (step % self.every == 0 or step == self.max_steps)

    def maybe_run(self, step: int, ema) -> dict[str, float] | None:
        return self.run(step, ema) if self.due(step) else None

    def run(self, step: int, ema) -> dict[str, float]:
        """Sample the prompts with `ema`'s weights (an `EMA` or a state dict), score, write and log; the row."""
        t0 = time.perf_counter()
        state = ema.state_dict()
        with isolated_rng(self.device):
            self.model.load_state_dict(state)
            ev = self.cfg.eval
            videos = generate(self.model, self.vae, self.prompts, self.texts, cfg_scale=self.cfg_scale,
                              steps=self.steps, seed=ev.seed, batch_size=ev.batch_size, progress=False)
            scores, _ = score_videos(self.cfg, self.model, self.stage, self.rows, videos, self.vae, self.enc)
        gif = write_gif_grid(videos, self.gif_dir / f"step_{step:07d}.gif")
        if self.mlflow is not None:
            self.mlflow.log_artifact(str(gif), artifact_path="watch")
        row = {"step": step, **{k: float(v) for k, v in scores.items() if k in WATCH_COLUMNS and math.isfinite(v)}}
        row["seconds"] = time.perf_counter() - t0
        self.log.log(row)
        self.done.add(step)
        log.info("watch step %d: %s (%.1f s)", step, " ".join(f"{k} {row[k]:.3f}" for k in
                 ("color_acc", "direction_acc", "heldout_loss") if k in row), row["seconds"])
        if row["seconds"] > COLLECTIVE_TIMEOUT_S / 3:
            log.warning("a watch pass took %.0f s while the other ranks wait in a collective that times out after %d s: "
                        "lower train.sample_prompts / train.sample_steps or raise train.sample_every",
                        row["seconds"], COLLECTIVE_TIMEOUT_S)
        return row


__all__ = ["TrainingWatcher", "WATCH_COLUMNS", "watch_prompts", "isolated_rng"]
