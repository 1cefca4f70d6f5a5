"""Running one stage: skip it when up to date, hold its lock, clear stale outputs, run its body, record it.

Each stage is idempotent. Training never runs in the caller's process: its body goes through the launcher,
which starts `cfg.train.processes` ranks; a rerun of an unfinished job with the same fingerprint resumes from
its last checkpoint, a changed fingerprint starts over.

mlflow is imported only where a stage's MLflow run is looked up: the runner's own start-up stays light.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time

from opensora_core import tracking
from opensora_core.config import Config, Params
from opensora_core.locks import StageLock
from opensora_core.pipeline.bodies import STAGES, StageContext
from opensora_core.pipeline.graph import fingerprint, outputs, split_id, upstream
from opensora_core.pipeline.process import LineCallback
from opensora_core.pipeline.records import StageResult, is_up_to_date, lock_path, read_record, write_record

log = logging.getLogger(__name__)


def run_stage(stage_id: str, params: Params | None = None, *, force: bool = False, on_line: LineCallback | None = None,
              track: bool = True) -> StageResult:
    """Run one stage unless it is up to date (or `force`); record it; return what it did.

    `force` reruns a finished stage; an unfinished training job with the same fingerprint still resumes from
    its last checkpoint (that is what a retry means), while one with another fingerprint starts over.
    """
    params = params or Params()
    cfg = params.load()
    on_line = on_line or (lambda line: print(line, flush=True))
    split_id(stage_id)  # an unknown id fails before anything is written
    with _stage_lock(cfg, stage_id, on_line) as lock:  # one writer per stage, whichever front door started it
        return _run_locked(stage_id, params, cfg, force, on_line, track, lock.fd if lock else None)


def _stage_lock(cfg: Config, stage_id: str, on_line: LineCallback):
    """The stage's lock (opensora_core/locks.py). The other nodes of a multi-node job run the same stage as
    part of node 0's job: only node 0 takes it."""
    if os.environ.get("OPENSORA_NODE_RANK", "0") != "0":
        return contextlib.nullcontext(None)
    return StageLock(lock_path(cfg, stage_id), on_line=on_line)


def _run_locked(stage_id: str, params: Params, cfg: Config, force: bool, on_line: LineCallback, track: bool,
                lock_fd: int | None) -> StageResult:
    kind, sub = split_id(stage_id)
    fp = fingerprint(cfg, stage_id)
    if not force and is_up_to_date(cfg, stage_id):
        rec = read_record(cfg, stage_id) or {}
        on_line(f"[{stage_id}] up to date ({fp}); skipping")
        return StageResult(stage_id, False, 0.0, fp, rec.get("outputs", []), rec.get("metrics", {}), rec.get("mlflow_run_id"))
    for u in upstream(cfg, stage_id):
        missing = [str(o) for o in outputs(cfg, u) if not o.exists()]
        if missing:
            raise FileNotFoundError(f"[{stage_id}] needs the outputs of {u!r}, missing: {', '.join(missing)}; run `opensora pipeline stage {u}` first")

    prev = read_record(cfg, stage_id) or {}
    resuming = kind == "train" and prev.get("status") == "running" and prev.get("fingerprint") == fp
    if not resuming:  # a changed config (or a forced rerun) must not resume a stale job or keep stale files
        for o in outputs(cfg, stage_id):
            if o.is_dir():
                shutil.rmtree(o)
            elif o.exists():
                o.unlink()
    write_record(cfg, stage_id, {"stage": stage_id, "status": "running", "fingerprint": fp, "started_at": time.time()})
    on_line(f"[{stage_id}] {'resuming' if resuming else 'running'} ({fp})")
    t0 = time.perf_counter()
    stage = STAGES[kind]
    ctx = StageContext(cfg, params, on_line, sub, track, lock_fd)
    run_id = None
    if track and not stage.tracks_itself:
        with tracking.start_run(cfg, run_name=stage_id, stage=sub or kind, tags={"pipeline_stage": stage_id}) as run:
            metrics = stage.run(ctx)
            run_id = run.info.run_id
            import mlflow  # imported by start_run already; named here for its log call

            mlflow.log_metrics({**metrics, "stage_seconds": time.perf_counter() - t0})
    else:
        metrics = stage.run(ctx)
        run_id = _find_run(cfg, sub or kind) if track else None
    seconds = round(time.perf_counter() - t0, 2)
    result = StageResult(stage_id, True, seconds, fp, [str(o) for o in outputs(cfg, stage_id)], metrics, run_id, time.time())
    write_record(cfg, stage_id, {"status": "done", **result.to_dict()})
    shown = {k: round(v, 5) for k, v in list(metrics.items())[:6]}  # evaluate has ~100: all are in MLflow and the record
    on_line(f"[{stage_id}] done in {seconds:.1f} s {json.dumps(shown)}")
    return result


def _find_run(cfg: Config, stage: str) -> str | None:
    """The newest MLflow run tagged `stage` under the current parent (if any): runs the jobs opened themselves."""
    try:
        mlflow = tracking.configure(cfg)
        filt = f"tags.stage = '{stage}'"
        parent = os.environ.get(tracking.PARENT_ENV)
        if parent:
            filt += f" and tags.mlflow.parentRunId = '{parent}'"
        runs = mlflow.search_runs([mlflow.get_experiment_by_name(cfg.tracking.experiment).experiment_id], filt,
                                  order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
        return runs[0].info.run_id if runs else None
    except Exception as e:  # tracking must never fail a finished stage
        log.warning("could not find the MLflow run of %s: %s", stage, e)
        return None
