"""The work-pool route: deployments that a `prefect worker` runs wherever it is started (a GPU node, a Slurm
allocation, a Kubernetes pod), instead of the process that served them.

    opensora pipeline pool gpu                  a `process` work pool named gpu (idempotent)
    opensora pipeline deploy --pool gpu         progressive-training/<name> (+ comparisons) from this project
    opensora pipeline worker --pool gpu         a worker that pulls their runs; run it on the training machine
    prefect deployment run progressive-training/<name>

A deployment's code is the installed package (a module entrypoint, `flows.progressive_training...`), its working
directory the project it was deployed from (Prefect's local storage: the worker's flow-run process starts there,
so it finds params.yaml, runs/, the MLflow store and DVC as any other front door does).
"""

from __future__ import annotations

from pathlib import Path

from flows.prefect_env import configure_prefect_env

configure_prefect_env()  # project-local Prefect settings, before prefect is imported
from prefect import Flow  # noqa: E402
from prefect.client.orchestration import get_client  # noqa: E402
from prefect.client.schemas.actions import WorkPoolCreate  # noqa: E402
from prefect.exceptions import ObjectAlreadyExists  # noqa: E402
from prefect.workers.process import ProcessWorker  # noqa: E402

# deployment flows: name -> module entrypoint (the package's, so a project holds no flow code of its own)
ENTRYPOINTS = {
    "progressive-training": "flows.progressive_training.progressive_training",
    "precision-comparison": "flows.comparison.precision_comparison",
    "lr-comparison": "flows.comparison.lr_comparison",
}


def create_process_pool(name: str) -> bool:
    """Create a `process` work pool (the default job template of Prefect's process worker); False if it exists."""
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process",
                                                   base_job_template=ProcessWorker.get_default_base_job_template()))
        except ObjectAlreadyExists:
            return False
    return True


def deploy_to_pool(pool: str, name: str, project_dir: Path, flows: list[str] | None = None) -> list[str]:
    """Deploy the pipeline's flows from `project_dir` to `pool`; returns the deployment ids."""
    ids = []
    for flow_name in flows or list(ENTRYPOINTS):
        remote = Flow.from_source(source=str(project_dir), entrypoint=ENTRYPOINTS[flow_name])
        ids.append(str(remote.deploy(name=name, work_pool_name=pool, tags=["opensora", name], print_next_steps=False)))
    return ids
