"""`precision-comparison` (fp16 vs bf16) and `lr-comparison` (1e-4 vs 2e-5): one stage trained twice.

Both variants start from the same seed and the same inputs: the upstream stages run (or are reused) once in
the main run directory, and each variant gets its own run directory (`<run_dir>/compare/<kind>-<stage>/<value>`)
whose data, encoders, latent cache and previous-stage checkpoint are links to the shared ones. Their MLflow
runs are children of one parent run and carry `comparison=<kind>` plus the usual dtype/lr tags, so the MLflow
UI compares them with one filter (`tags.comparison = 'precision'`) or from the parent run's page.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flows.prefect_env import configure_prefect_env

configure_prefect_env()  # project-local Prefect settings, before prefect is imported
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.progressive_training import as_dict, job_params, stage_task
from flows.run_lifetime import claim_flow_run
from flows.runner import dvc_can_record, results_markdown, task_name
from opensora_core import pipeline, tracking


def upstream_closure(cfg, stage_id: str) -> list[str]:
    """Every stage `stage_id` needs, in pipeline order."""
    need: set[str] = set()
    todo = list(pipeline.upstream(cfg, stage_id))
    while todo:
        s = todo.pop()
        if s not in need:
            need.add(s)
            todo += pipeline.upstream(cfg, s)
    return [s for s in pipeline.stage_ids(cfg) if s in need]


def link_inputs(base_cfg, variant_cfg, stage_id: str) -> None:
    """Point the variant's inputs at the shared outputs (symlinks), so the variants train on identical data."""
    for up in pipeline.upstream(base_cfg, stage_id) + ["prepare", "caption", "encoders"]:
        for src, dst in zip(pipeline.outputs(base_cfg, up), pipeline.outputs(variant_cfg, up)):
            if dst.is_symlink() or dst.exists():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src, dst, target_is_directory=src.is_dir())


def compare(kind: str, key: str, values: list[Any], stage: str, steps: int | None, preset: str | None,
            overrides: list[str] | None, params_path: str | None) -> list[dict[str, Any]]:
    logger = get_run_logger()
    claim_flow_run(logger)
    base = job_params(preset, None, None, None, overrides, params_path)
    cfg = base.load()
    sid = f"train@{stage}"
    cfg.stage(stage)
    use_dvc = dvc_can_record(base, cfg)
    rows: list[dict[str, Any]] = []
    group = f"{kind}-{stage}"
    parent_id = tracking.create_run(cfg, f"{group}-comparison", stage=stage, tags={"comparison": kind, "pipeline": f"{kind}-comparison",
                                                                    key.split(".")[-1]: " vs ".join(map(str, values))})
    status = "FAILED"
    try:
        for up in upstream_closure(cfg, sid):  # shared inputs, reused when up to date
            stage_task.with_options(name=task_name(up))(up, as_dict(base), use_dvc, False, parent_id)
        for value in values:
            root = Path(cfg.root) / "compare" / group / str(value)
            extra = [f"{key}={value}", f"run_dir={root}"] + ([f"stages.{stage}.max_steps={steps}"] if steps else [])
            variant = pipeline.Params(base.path, base.preset, tuple(base.overrides) + tuple(extra))
            link_inputs(cfg, variant.load(), sid)
            logger.info("%s=%s -> %s", key, value, root)
            row = stage_task.with_options(name=f"{stage}-{key.split('.')[-1]}-{value}")(
                sid, as_dict(variant), False, False, parent_id, {"comparison": kind, "comparison_value": str(value)})
            rows.append({**row, "stage": f"{stage} {key}={value}", "parent_run_id": parent_id})
        status = "FINISHED"
    finally:
        tracking.end_run(parent_id, status)
    create_markdown_artifact(markdown=results_markdown(f"{kind}-comparison ({stage})", rows, cfg), key=f"{kind}-comparison")
    return rows


@flow(name="precision-comparison", log_prints=True)
def precision_comparison(stage: str = "pretrain_256", dtypes: list[str] = ["fp16", "bf16"], steps: int | None = None,  # noqa: B006
                         preset: str | None = None, overrides: list[str] | None = None, params_path: str | None = None):
    """The same stage with fp16 and with bf16 from the same seed (Open-Sora 1.0 chose bf16: fp16 was unstable)."""
    return compare("precision", "train.dtype", dtypes, stage, steps, preset, overrides, params_path)


@flow(name="lr-comparison", log_prints=True)
def lr_comparison(stage: str = "pretrain_256", lrs: list[float] = [1e-4, 2e-5], steps: int | None = None,  # noqa: B006
                  preset: str | None = None, overrides: list[str] | None = None, params_path: str | None = None):
    """The same stage with lr 1e-4 and 2e-5 from the same seed (Open-Sora 1.0 settled on 2e-5)."""
    return compare("lr", "train.lr", lrs, stage, steps, preset, overrides, params_path)
