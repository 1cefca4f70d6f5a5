"""Rank 0's MLflow run of a training stage: the tags it starts with (git commit), the dataset it logs as input,
and the buffered run that outlives a tracking server going down.

mlflow is imported inside `log_dataset` and `tracking_run`, which run only when tracking is enabled: a job with
tracking off never pays for importing it."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from pathlib import Path

from opensora_core import tracking
from opensora_core.config import Config
from opensora_core.data import lineage
from opensora_core.train.stop import Terminated

log = logging.getLogger("opensora.train")


def git_commit(project_dir: Path) -> str:
    """The project's commit (the user's repository, not the installed tool's)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=project_dir, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dataset_lineage(cfg: Config, stage: str, out_dir: Path, is_main: bool):
    """(clip list, summary) of what trains this stage (opensora_core.data.lineage); rank 0 writes the list beside
    the checkpoints. (None, None) when the stage trains without a manifest (hand-made caches in tests)."""
    try:
        clips = lineage.training_clips(cfg, stage)
    except (FileNotFoundError, KeyError) as e:
        log.warning("no dataset lineage for %s: %s", stage, e)
        return None, None
    if is_main:
        lineage.write_clips(clips, out_dir)
    return clips, lineage.describe(cfg, stage, clips)


def log_dataset(clips, dataset: dict) -> None:
    """mlflow.log_input into the active run; a tracking server that fails here costs the Dataset column only."""
    import mlflow

    try:
        lineage.log_input(mlflow, clips, dataset)
    except Exception as e:  # noqa: BLE001 - tracking must not stop training (see tracking.BufferedRun)
        log.warning("could not log the dataset to MLflow: %s", e)


@contextlib.contextmanager
def tracking_run(cfg: Config, stage: str, enabled: bool, run_id: str | None, tags: dict):
    """Rank 0's MLflow run as a tracking.BufferedRun (None elsewhere or when disabled): a tracking server that
    goes down never stops training. Resumed jobs log into their previous run. A run that dies is ended FAILED
    (KILLED for SIGTERM) with a `failure_reason` tag."""
    if not enabled:
        yield None
        return

    previous = os.environ.pop(tracking.RUN_ENV, None)
    run_id = run_id or previous  # the checkpoint's run first, else one the caller asked to join
    if run_id:
        os.environ[tracking.RUN_ENV] = run_id
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(tracking.start_run(cfg, run_name=stage, stage=stage, tags=tags))
        finally:  # the variable only tells start_run which run to join: do not leak it to later calls
            os.environ.pop(tracking.RUN_ENV, None)
            if previous is not None:
                os.environ[tracking.RUN_ENV] = previous
        import mlflow

        tracker = tracking.BufferedRun(mlflow.active_run().info.run_id, cfg.paths.ckpt_dir(stage))
        try:
            yield tracker
        except BaseException as e:
            tracker.set_tag("failure_reason", f"{type(e).__name__}: {e}"[:4000])
            tracker.end(status="KILLED" if isinstance(e, (Terminated, KeyboardInterrupt)) else "FAILED")
            raise
