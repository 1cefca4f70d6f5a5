"""Deployments: `opensora pipeline serve` (or `make serve`) serves the flows against a Prefect server, so

    prefect deployment run progressive-training/tiny
    prefect deployment run precision-comparison/tiny

start runs that this process executes (each flow run in a subprocess). For a cluster, use a work pool
instead (docs/orchestration.md): `progressive_training.deploy(name=..., work_pool_name=...)`.
"""

from __future__ import annotations

from flows.prefect_env import configure_prefect_env

configure_prefect_env()  # project-local Prefect settings, before prefect is imported
from prefect import serve

from flows.comparison import lr_comparison, precision_comparison
from flows.progressive_training import progressive_training


def deployments(name: str = "tiny"):
    return [
        progressive_training.to_deployment(name=name, tags=["opensora", name], description="the whole pipeline (params.yaml)"),
        precision_comparison.to_deployment(name=name, tags=["opensora", "comparison"]),
        lr_comparison.to_deployment(name=name, tags=["opensora", "comparison"]),
    ]


def serve_all(name: str = "tiny") -> None:
    serve(*deployments(name), limit=1)


if __name__ == "__main__":
    serve_all()
