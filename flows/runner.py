"""How a Prefect task runs a stage: as a subprocess, through DVC when DVC can record it.

Versioning is shared with `dvc repro` by construction: when the flow's config is exactly what `params.yaml`
says (no overrides that change it), a task runs `dvc repro --single-item <stage>`. DVC then decides whether
the stage is up to date, runs the same `opensora pipeline stage <id>` command `dvc repro` would, and updates
`dvc.lock` and the DVC cache, so after a Prefect run `dvc status` is clean and vice versa. With overrides
(a comparison, a smaller test pipeline, another run_dir) DVC cannot describe the run, so the task runs
`opensora pipeline stage <id> <overrides>` directly; its idempotency comes from the stage records.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opensora_core import pipeline, tracking
from opensora_core.config import Config
from opensora_core.lifetime import bound_command

# DVC's hints after each stage (git add dvc.lock, autostage, dvc push): noise in a flow's log
_DVC_HINTS = ("To track the changes with git", "git add ", "To enable auto staging", "dvc config core.autostage",
              "Use `dvc push`")

TASK_NAMES = {"prepare": "prepare_data", "caption": "caption", "encoders": "train_vae", "evaluate": "evaluate"}


def task_name(stage_id: str) -> str:
    """Prefect task name of a stage: prepare_data, caption, train_vae, cache-pretrain_256, pretrain_256, evaluate."""
    kind, sub = pipeline.split_id(stage_id)
    return sub if kind == "train" else (f"cache-{sub}" if kind == "cache" else TASK_NAMES[kind])


def select_stages(cfg: Config, wanted: list[str] | None) -> list[str]:
    """Stage ids to run, in pipeline order. `wanted` may name ids (train@pretrain_256), task names
    (pretrain_256, prepare_data, train_vae) or `cache` (every cache stage)."""
    ids = pipeline.stage_ids(cfg)
    if not wanted:
        return ids
    names = {task_name(i): i for i in ids} | {i: i for i in ids}
    chosen: set[str] = set()
    for w in wanted:
        if w == "cache":
            chosen |= {i for i in ids if i.startswith("cache@")}
        elif w in names:
            chosen.add(names[w])
        else:
            raise ValueError(f"unknown stage {w!r}; choose from {', '.join(names)}")
    return [i for i in ids if i in chosen]


def dvc_can_record(params: pipeline.Params, cfg: Config) -> bool:
    """True when `dvc repro` would run exactly this config: the project's params.yaml, its preset, no change."""
    root = cfg.project_dir
    if not (root / "dvc.yaml").exists() or not _inside_dvc_repo(root):
        return False
    if params.path and Path(params.path).resolve() != (root / "params.yaml").resolve():
        return False
    plain = pipeline.Params(str(root / "params.yaml")).load()
    return plain.model_dump() == cfg.model_dump() and cfg.root == root / "runs" / cfg.preset


def _inside_dvc_repo(root: Path) -> bool:
    """DVC needs its repo (`.dvc`) at the project root, inside a git work tree (here or in a parent folder)."""
    return (root / ".dvc").is_dir() and any((d / ".git").exists() for d in (root, *root.parents))


def stage_command(stage_id: str, params: pipeline.Params, use_dvc: bool, force: bool) -> list[str]:
    if use_dvc:  # DVC is not ours: it runs bound to the flow (opensora_core/lifetime.py), so it dies with it
        return bound_command("dvc", "repro", "--single-item", *(["--force"] if force else []), stage_id)
    return [sys.executable, "-m", "opensora_core.cli.main_module", "pipeline", "stage", stage_id,
            *(["--force"] if force else []), *params.cli_args()]


def run_stage_process(stage_id: str, params: pipeline.Params, use_dvc: bool, force: bool,
                      parent_run_id: str | None, on_line: Callable[[str], None],
                      run_tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one stage in a subprocess, streaming its lines; returns its record plus `ran` and `seconds`."""
    cfg = params.load()
    env = {
        # `opensora` on PATH for DVC's shell commands, whether or not the venv is activated
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }
    if parent_run_id:
        env["OPENSORA_PARENT_RUN_ID"] = parent_run_id
    if run_tags:  # extra MLflow tags of every run the stage opens (e.g. comparison=precision)
        env["OPENSORA_RUN_TAGS"] = json.dumps(run_tags)
    t0 = time.time()
    def forward(line: str) -> None:
        if not (use_dvc and line.strip().startswith(_DVC_HINTS)):
            on_line(line)

    rc = pipeline.stream_command(stage_command(stage_id, params, use_dvc, force), forward, env=env, cwd=cfg.project_dir)
    if rc != 0:
        raise RuntimeError(f"stage {stage_id} failed (exit status {rc}); see the log above")
    rec = pipeline.read_record(cfg, stage_id) or {}
    ran = float(rec.get("finished_at") or 0) >= t0
    # seconds: the task's subprocess wall time; stage_seconds: the stage body's own time (0 when up to date), so
    # the difference is the orchestration overhead (interpreter start-up, DVC, MLflow run bookkeeping)
    return {**rec, "stage": stage_id, "ran": ran, "seconds": round(time.time() - t0, 2),
            "stage_seconds": float(rec.get("seconds") or 0) if ran else 0.0, "via": "dvc" if use_dvc else "cli"}


def results_markdown(title: str, rows: list[dict[str, Any]], cfg: Config, mlflow_ui: str = "http://127.0.0.1:5000") -> str:
    """The flow's report: one row per stage with outcome, duration, final loss and the MLflow run link."""
    lines = [f"# {title}", "", f"preset `{cfg.preset}`, dtype `{cfg.train.dtype}`, lr `{cfg.train.lr:g}`, run dir `{cfg.root}`", "",
             "| stage | outcome | duration (s) | final loss | MLflow run |", "|---|---|---:|---:|---|"]
    for r in rows:
        m = r.get("metrics") or {}
        loss = m.get("final_loss", m.get("loss"))
        run_id = r.get("mlflow_run_id")
        link = f"[{run_id[:8]}]({tracking.run_url(run_id, cfg, mlflow_ui)})" if run_id else "-"
        outcome = r.get("outcome") or ("ran" if r.get("ran") else "up to date")
        lines.append(f"| {r['stage']} | {outcome} | {r.get('seconds', 0):.1f} | {'-' if loss is None else f'{loss:.4f}'} | {link} |")
    return "\n".join(lines) + "\n"


def summary_json(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, indent=1, default=str)
