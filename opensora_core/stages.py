"""The pipeline's stages: one implementation behind three front doors (the `opensora` CLI, `dvc.yaml`, Prefect).

A stage id names one unit of work, spelled the same everywhere (CLI, DVC stage name, Prefect task):

    prepare -> caption -> encoders -> cache@<stage> -> train@<stage> (one per training stage) -> evaluate

Each stage is idempotent. It writes a record (`<run_dir>/.stages/<id>.json`) holding a fingerprint of the
config keys it depends on (`STAGE_KEYS`) chained with its upstream records' fingerprints, so a direct call
skips work that is up to date, like `dvc repro` does from `dvc.lock`. Training never runs in the caller's
process: `train` goes through the launcher (`opensora_core.train.launcher.launch`), which starts
`cfg.train.processes` ranks; a re-run of an unfinished job with the same fingerprint resumes from its last
checkpoint, a changed fingerprint starts over.

MLflow: every stage but training opens a child run of `OPENSORA_PARENT_RUN_ID` (when set); the training job's
rank 0 opens its own run, joining the same parent through the environment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from opensora_core.config import Config, load_config

log = logging.getLogger(__name__)

LineCallback = Callable[[str], None]

# Config keys (dotted paths in the resolved config) each kind of stage depends on. dvc.yaml lists the same keys
# as `params` (under `presets.${preset}.`), so a changed parameter reruns the same stages through either door.
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "prepare": ("seed", "data.source", "data.src", "data.num_videos", "data.video_frames", "data.video_size",
                "data.min_duration", "data.max_duration", "data.min_resolution", "data.synthetic",
                "data.scene_split"),
    "caption": ("seed", "data.captioner", "data.llava_model", "data.val_fraction"),
    "encoders": ("seed", "vae", "text_encoder"),
    "cache": ("train.use_latent_cache", "stages.{s}.num_frames", "stages.{s}.frame_interval", "stages.{s}.image_size"),
    "train": ("seed", "model", "train", "stages.{s}"),
    "evaluate": ("eval",),
}


@dataclass(frozen=True)
class Params:
    """Where a config comes from, so that subprocesses (training ranks, DVC, CLI stages) rebuild the same one."""

    path: str | None = None
    preset: str | None = None
    overrides: tuple[str, ...] = ()

    def load(self) -> Config:
        return load_config(self.path, self.preset, list(self.overrides))

    def cli_args(self) -> list[str]:
        """Arguments for any `opensora` command: `--params P --preset X key=value ...`."""
        args = ["--params", str(self.path)] if self.path else []
        args += ["--preset", self.preset] if self.preset else []
        return args + list(self.overrides)


@dataclass
class StageResult:
    """What a stage did: `ran` false means it was up to date and skipped."""

    stage: str
    ran: bool
    seconds: float
    fingerprint: str
    outputs: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    finished_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------------
# The DAG


def stage_ids(cfg: Config) -> list[str]:
    """Every stage id in pipeline order."""
    ids = ["prepare", "caption", "encoders"]
    for s in cfg.stage_names():
        ids += [f"cache@{s}", f"train@{s}"]
    return ids + ["evaluate"]


def split_id(stage_id: str) -> tuple[str, str | None]:
    """`train@pretrain_256` -> ("train", "pretrain_256"); `prepare` -> ("prepare", None)."""
    kind, _, sub = stage_id.partition("@")
    if kind not in STAGE_KEYS or bool(sub) != (kind in ("cache", "train")):
        raise ValueError(f"unknown stage {stage_id!r}: expected one of prepare, caption, encoders, cache@<stage>, train@<stage>, evaluate")
    return kind, sub or None


def upstream(cfg: Config, stage_id: str) -> list[str]:
    kind, sub = split_id(stage_id)
    if kind == "prepare":
        return []
    if kind in ("caption", "encoders"):
        return ["prepare"]
    if kind == "cache":
        return ["caption", "encoders"]
    if kind == "train":
        prev = cfg.previous_stage(sub)
        return [f"cache@{sub}"] + ([f"train@{prev}"] if prev else [])
    return ["caption", "encoders", f"train@{cfg.stage_names()[-1]}"]


def outputs(cfg: Config, stage_id: str) -> list[Path]:
    """The paths a stage writes (DVC `outs` of the same stage)."""
    kind, sub = split_id(stage_id)
    p = cfg.paths
    return {
        "prepare": lambda: [p.raw_dir],
        "caption": lambda: [p.manifest],
        "encoders": lambda: [p.vae_dir, p.text_encoder_dir],
        "cache": lambda: [p.cache_dir(sub)],
        "train": lambda: [p.ckpt_dir(sub)],
        "evaluate": lambda: [p.metrics, p.eval_dir / "samples", p.eval_dir / "adherence.json"],
    }[kind]()


def _lookup(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def fingerprint(cfg: Config, stage_id: str) -> str:
    """Hash of the config keys the stage depends on, chained with its upstream stages' fingerprints."""
    kind, sub = split_id(stage_id)
    tree = cfg.model_dump(mode="json")
    own = {k.format(s=sub): _lookup(tree, k.format(s=sub)) for k in STAGE_KEYS[kind]}
    ups = [fingerprint(cfg, u) for u in upstream(cfg, stage_id)]
    text = json.dumps({"stage": stage_id, "keys": own, "upstream": ups}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------
# Records


def record_path(cfg: Config, stage_id: str) -> Path:
    return cfg.root / ".stages" / f"{stage_id}.json"


def read_record(cfg: Config, stage_id: str) -> dict | None:
    try:
        return json.loads(record_path(cfg, stage_id).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_record(cfg: Config, stage_id: str, data: dict) -> None:
    path = record_path(cfg, stage_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)  # atomic: a crash never leaves a half record


def is_up_to_date(cfg: Config, stage_id: str) -> bool:
    rec = read_record(cfg, stage_id)
    return bool(rec and rec.get("status") == "done" and rec.get("fingerprint") == fingerprint(cfg, stage_id)
                and all(o.exists() for o in outputs(cfg, stage_id)))


# ------------------------------------------------------------------------------------------------------
# Stage bodies (each returns metrics; imports are local so `opensora --help` stays fast)


def _on_dask(params: Params, stage_id: str) -> None:
    """The stage's parallel work on the Dask cluster of `data.dask`, through prefect-dask. The route lives with
    the flows (flows/data_prep.py: Prefect tasks mapped on a DaskTaskRunner); imported late, only when asked for."""
    from flows.data_prep import run_stage_on_dask

    run_stage_on_dask(params, stage_id)


def _prepare(cfg: Config, params: Params, on_line: LineCallback) -> dict[str, float]:
    from opensora_core.data.stages import prepare_data

    if cfg.data.dask and cfg.data.source == "ingest":
        _on_dask(params, "prepare")  # probe, hash and scene-split every file on the cluster; then assembles below
    prepare_data(cfg)
    return _manifest_metrics(cfg.paths.raw_manifest, "clips")


def _caption(cfg: Config, params: Params, on_line: LineCallback) -> dict[str, float]:
    from opensora_core.data.stages import caption_data

    caption_data(cfg)
    return _manifest_metrics(cfg.paths.manifest, "captioned_clips")


def _encoders(cfg: Config, params: Params, on_line: LineCallback) -> dict[str, float]:
    """Tiny preset (pretrained: null): train the tiny VAE on the prepared clips and build the tiny T5.
    Hub ids / local folders need nothing here: the out records which weights the later stages load."""
    metrics: dict[str, float] = {}
    p = cfg.paths
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


def _cache(cfg: Config, params: Params, on_line: LineCallback, stage: str) -> dict[str, float]:
    out = cfg.paths.cache_dir(stage)
    if not cfg.train.use_latent_cache:  # online encoding (opensora-1.0): the out is an explicit placeholder
        out.mkdir(parents=True, exist_ok=True)
        (out / "DISABLED").write_text("train.use_latent_cache is false: the training job encodes online\n")
        return {}
    from opensora_core.data.cache import build_latent_cache

    if cfg.data.dask:
        _on_dask(params, f"cache@{stage}")  # one task per shard on the cluster; build_latent_cache then finds it done
    build_latent_cache(cfg, stage)
    return {"cache_mb": sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20}


def _train(cfg: Config, params: Params, on_line: LineCallback, stage: str, track: bool = True,
           lock_fd: int | None = None) -> dict[str, float]:
    """Launch `opensora train --stage S` on cfg.train.processes ranks (torchrun); multi-node jobs read
    OPENSORA_NNODES / OPENSORA_RDZV_ENDPOINT / OPENSORA_NODE_RANK (set by the cluster's worker).
    Every process of the job inherits `lock_fd` (the stage lock), so the lock outlives none of them."""
    from opensora_core.train.launcher import launch, train_args

    nnodes = int(os.environ.get("OPENSORA_NNODES", "1"))
    errors: list[str] = []  # the job's error lines, so the failure message says why
    rank = os.environ.get("OPENSORA_NODE_RANK")
    rc = launch(train_args(stage, params.path, params.preset, params.overrides, track=track), nproc=cfg.train.processes,
                hold_fd=lock_fd,
                nnodes=nnodes, rdzv_endpoint=os.environ.get("OPENSORA_RDZV_ENDPOINT") or None,
                node_rank=int(rank) if rank else None, line_callback=lambda line: (errors.append(line) if "Error" in line else None,
                                                                         on_line(line)))
    if rc != 0:
        why = f" ({errors[-1].split('] ')[-1].strip()})" if errors else ""
        raise RuntimeError(f"training job for {stage} exited with status {rc}{why}; rerun to resume from its last checkpoint")
    return final_metrics(cfg, stage)


def _evaluate(cfg: Config, params: Params, on_line: LineCallback, track: bool = True) -> dict[str, float]:
    """Samples, prompt adherence and held-out loss of every trained stage; logs its own MLflow run."""
    from opensora_core.eval import evaluate

    result = evaluate(cfg, track=track)
    if not isinstance(result, dict) and cfg.paths.metrics.exists():
        result = json.loads(cfg.paths.metrics.read_text())
    return {k: float(v) for k, v in (result or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# Stages whose code opens its own MLflow run (joining OPENSORA_PARENT_RUN_ID): the training job's rank 0, evaluate.
SELF_TRACKING = ("train", "evaluate")

_BODIES: dict[str, Callable[..., dict[str, float]]] = {
    "prepare": _prepare, "caption": _caption, "encoders": _encoders, "cache": _cache, "train": _train, "evaluate": _evaluate,
}


def _manifest_metrics(path: Path, name: str) -> dict[str, float]:
    import pandas as pd

    return {name: float(len(pd.read_csv(path)))} if path.exists() else {}


def final_metrics(cfg: Config, stage: str) -> dict[str, float]:
    """final.json of a training stage (or the last row of train_log.csv): final loss, steps, seconds."""
    d = cfg.paths.ckpt_dir(stage)
    if (d / "final.json").exists():
        data = json.loads((d / "final.json").read_text())
        return {k: float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if (d / "train_log.csv").exists():
        import pandas as pd

        df = pd.read_csv(d / "train_log.csv")
        if len(df) and "loss" in df:
            return {"final_loss": float(df["loss"].iloc[-1]), "steps": float(df["step"].iloc[-1]) if "step" in df else 0.0}
    return {}


def _run_cli(args: list[str], on_line: LineCallback) -> None:
    """Run `opensora <args>` as a subprocess, streaming its output lines."""
    import sys

    rc = stream_command([sys.executable, "-m", "opensora_core.cli.main_module", *args], on_line)
    if rc:
        raise RuntimeError(f"`opensora {' '.join(args)}` exited with status {rc}")


def stream_command(cmd: list[str], on_line: LineCallback, env: dict[str, str] | None = None, cwd: str | Path | None = None) -> int:
    """Run `cmd`, calling `on_line` for every output line (stdout and stderr; `\\r` progress updates count as
    lines, so progress bars show while they run); returns the exit status. The child is terminated if we are
    interrupted (a cancelled Prefect run must not leave an orphan job), and it is owned by this process
    (opensora_core/lifetime.py): if we die, our `opensora` children and their jobs stop too."""
    import re
    import subprocess

    from opensora_core.lifetime import owned_env

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=owned_env({**os.environ, **(env or {})}),
                            cwd=cwd, start_new_session=False)
    buf = b""
    last_progress = 0.0
    try:
        while chunk := os.read(proc.stdout.fileno(), 65536):
            buf += chunk
            *parts, buf = re.split(rb"\r\n|\n|\r", buf)
            for raw in parts:
                line = raw.decode(errors="replace").rstrip()
                if not line:
                    continue
                # progress bars redraw many times a second: pass one redraw per 5 s
                if "%|" in line and time.monotonic() - last_progress < 5:
                    continue
                last_progress = time.monotonic() if "%|" in line else last_progress
                on_line(line)
        if buf.strip():
            on_line(buf.decode(errors="replace").rstrip())
        return proc.wait()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    finally:
        proc.stdout.close()


# ------------------------------------------------------------------------------------------------------
# Running a stage


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


def lock_path(cfg: Config, stage_id: str) -> Path:
    return cfg.root / ".stages" / f"{stage_id}.lock"


def _stage_lock(cfg: Config, stage_id: str, on_line: LineCallback):
    """The stage's lock (opensora_core/locks.py). The other nodes of a multi-node job run the same stage as
    part of node 0's job: only node 0 takes it."""
    import contextlib

    from opensora_core.locks import StageLock

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
    _write_record(cfg, stage_id, {"stage": stage_id, "status": "running", "fingerprint": fp, "started_at": time.time()})
    on_line(f"[{stage_id}] {'resuming' if resuming else 'running'} ({fp})")
    t0 = time.perf_counter()
    run_id = None
    body = _BODIES[kind]
    args = (cfg, params, on_line) + ((sub,) if sub else ())
    if kind == "evaluate":
        args += (track,)
    if kind == "train":
        args += (track, lock_fd)
    if track and kind not in SELF_TRACKING:
        from opensora_core import tracking

        with tracking.start_run(cfg, run_name=stage_id, stage=sub or kind, tags={"pipeline_stage": stage_id}) as run:
            metrics = body(*args)
            run_id = run.info.run_id
            import mlflow

            mlflow.log_metrics({**metrics, "stage_seconds": time.perf_counter() - t0})
    else:
        metrics = body(*args)
        run_id = _find_run(cfg, sub or kind) if track else None
    seconds = round(time.perf_counter() - t0, 2)
    result = StageResult(stage_id, True, seconds, fp, [str(o) for o in outputs(cfg, stage_id)], metrics, run_id, time.time())
    _write_record(cfg, stage_id, {"status": "done", **result.to_dict()})
    shown = {k: round(v, 5) for k, v in list(metrics.items())[:6]}  # evaluate has ~100: all are in MLflow and the record
    on_line(f"[{stage_id}] done in {seconds:.1f} s {json.dumps(shown)}")
    return result


def _find_run(cfg: Config, stage: str) -> str | None:
    """The newest MLflow run tagged `stage` under the current parent (if any): runs the jobs opened themselves."""
    try:
        from opensora_core import tracking

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
