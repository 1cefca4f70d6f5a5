"""The `progressive-training` flow: the Open-Sora 1.0 recipe as one Prefect flow.

    prepare_data -> caption -> train_vae -> cache-pretrain_256 -> pretrain_256 -> cache-finetune_512
    -> finetune_512 -> cache-finetune_64f -> finetune_64f -> evaluate

Each task runs its stage in a subprocess (`dvc repro --single-item <stage>` when DVC can record the run,
else `opensora pipeline stage <stage>`; see flows/runner.py) and streams its lines into Prefect's log.
Training tasks launch torchrun jobs and retry; a retried job resumes from its last checkpoint. The flow opens
one MLflow parent run; every stage's run joins it. It ends by publishing a markdown artifact of the results.

Run locally (no server): `opensora pipeline run` / `opensora demo`, or `python -m flows.progressive_training`.
"""

from __future__ import annotations

import os
import time
from typing import Any

from flows.prefect_env import configure_prefect_env

configure_prefect_env()  # project-local Prefect settings, before prefect is imported
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE as NO_CACHE
from prefect.runtime import flow_run

from flows.run_lifetime import claim_flow_run
from flows.runner import dvc_can_record, results_markdown, run_stage_process, select_stages, task_name
from opensora_core import pipeline, tracking


@task(name="stage", cache_policy=NO_CACHE, retry_delay_seconds=0)
def stage_task(stage_id: str, params: dict[str, Any], use_dvc: bool, force: bool, parent_run_id: str | None,
               run_tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one stage as a subprocess; its output lines become this task's log lines."""
    logger = get_run_logger()
    p = pipeline.Params(params.get("path"), params.get("preset"), tuple(params.get("overrides") or ()))
    return run_stage_process(stage_id, p, use_dvc, force, parent_run_id, logger.info, run_tags)


def as_dict(params: pipeline.Params) -> dict[str, Any]:
    return {"path": params.path, "preset": params.preset, "overrides": list(params.overrides)}


def job_params(preset: str | None, dtype: str | None, lr: float | None, processes: int | None,
               overrides: list[str] | None, params_path: str | None = None) -> pipeline.Params:
    """The flow's parameters as the config source every job rebuilds (`--params --preset key=value`)."""
    extra = [f"train.dtype={dtype}"] * bool(dtype) + [f"train.lr={lr}"] * bool(lr) + [f"train.processes={processes}"] * bool(processes)
    return pipeline.Params(params_path, preset, tuple(list(overrides or []) + extra))


def run_pipeline(params: pipeline.Params, stage_list: list[str] | None, train_retries: int, force: bool,
                 use_dvc: bool | None, title: str, tags: dict[str, str] | None = None,
                 artifact_key: str = "progressive-training") -> list[dict[str, Any]]:
    """Run the selected stages in order under one MLflow parent run; publish the results table."""
    logger = get_run_logger()
    claim_flow_run(logger)  # this run dies with its owner; earlier runs whose process died are marked Crashed
    cfg = params.load()
    ids = select_stages(cfg, stage_list)
    use_dvc = dvc_can_record(params, cfg) if use_dvc is None else use_dvc
    logger.info("stages: %s (%s)", ", ".join(ids), "recorded by DVC" if use_dvc else "direct, stage records only")
    rows: list[dict[str, Any]] = []
    run_tags = {"pipeline": title, "prefect_flow_run": str(flow_run.get_name() or ""), **(tags or {})}
    parent_id = tracking.create_run(cfg, f"{title}-{flow_run.get_name() or time.strftime('%H%M%S')}", tags=run_tags)
    client = tracking.configure(cfg).MlflowClient()
    error: BaseException | None = None
    for sid in ids:
        kind, _ = pipeline.split_id(sid)
        task_fn = stage_task.with_options(name=task_name(sid), retries=train_retries if kind == "train" else 0)
        t0 = time.time()
        try:
            row = task_fn(sid, as_dict(params), use_dvc, force, parent_id)
        except Exception as e:  # publish what happened before failing the flow
            rows.append({"stage": sid, "outcome": f"failed: {str(e)[:80]}", "seconds": time.time() - t0})
            error = e
            break
        rows.append(row)
        m = row.get("metrics") or {}
        client.log_metric(parent_id, f"{task_name(sid)}_seconds", row["seconds"])
        if "final_loss" in m:
            client.log_metric(parent_id, f"{task_name(sid)}_final_loss", m["final_loss"])
    markdown = results_markdown(title, rows, cfg)
    client.log_text(parent_id, markdown, "pipeline_results.md")
    client.log_dict(parent_id, [{k: r.get(k) for k in ("stage", "outcome", "ran", "seconds", "mlflow_run_id")} for r in rows],
                    "pipeline_results.json")
    tracking.end_run(parent_id, "FAILED" if error else "FINISHED")
    create_markdown_artifact(markdown=markdown, key=artifact_key, description=f"{title}: stage outcomes")
    if error is not None:
        raise error
    for r in rows:
        r["parent_run_id"] = parent_id
    return rows


@flow(name="progressive-training", log_prints=True)
def progressive_training(
    preset: str | None = None,
    dtype: str | None = None,
    lr: float | None = None,
    processes: int | None = None,
    nodes: int = 1,
    stages_to_run: list[str] | None = None,
    overrides: list[str] | None = None,
    train_retries: int = 1,
    force: bool = False,
    use_dvc: bool | None = None,
    params_path: str | None = None,
) -> list[dict[str, Any]]:
    """Data prep -> 256px pretraining -> 512px fine-tuning -> 64-frame fine-tuning -> evaluation.

    Args:
        preset, dtype, lr, processes: override params.yaml (dtype fp32|bf16|fp16; processes = ranks per job).
        nodes: nodes per training job (the worker sets OPENSORA_RDZV_ENDPOINT / OPENSORA_NODE_RANK).
        stages_to_run: ids or task names (prepare_data, caption, train_vae, cache, pretrain_256, ...); all by default.
        overrides: `key=value` overrides, e.g. ["stages.pretrain_256.max_steps=20"].
        train_retries: retries of each training task (a retry resumes from the last checkpoint).
        force: rerun stages that are up to date.
        use_dvc: record stages through `dvc repro` (default: when the config is exactly params.yaml's).
    """
    if nodes > 1:
        os.environ["OPENSORA_NNODES"] = str(nodes)
    params = job_params(preset, dtype, lr, processes, overrides, params_path)
    return run_pipeline(params, stages_to_run, train_retries, force, use_dvc, "progressive-training")


if __name__ == "__main__":
    progressive_training()
