"""MLflow conventions in one place.

One parent run per pipeline run, a child run per stage: a stage joins its parent through `parent_run_id` or the
`OPENSORA_PARENT_RUN_ID` environment variable (set by the flow for the jobs it launches). Every run is tagged
with preset / stage / dtype / lr so that comparing fp16 with bf16 or lr 1e-4 with 2e-5 is one filter away,
e.g. `tags.dtype = 'fp16'` in the MLflow UI.

mlflow (slow to import) is imported inside the functions that talk to the tracking server, so the CLI and
the stage processes that do not track never pay for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opensora_core.config import Config
from opensora_core.tracking.buffered import PENDING_FILE, BufferedRun, send_pending  # noqa: F401 - public API
from opensora_core.tracking.step_log import MetricsLog  # noqa: F401 - public API

PARENT_ENV = "OPENSORA_PARENT_RUN_ID"
TAGS_ENV = "OPENSORA_RUN_TAGS"  # JSON object of extra tags for every run of a job (e.g. {"comparison": "precision"})
RUN_ENV = "OPENSORA_MLFLOW_RUN_ID"  # set to resume logging into an existing run (e.g. a retried stage)
log = logging.getLogger(__name__)


def resolve_uri(uri: str, root: Path) -> str:
    """Relative `sqlite:///x.db` and plain paths are taken from the project root, so every front door agrees."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{root / uri.removeprefix('sqlite:///')}"
    if "://" not in uri:
        return str(root / uri)
    return uri


# MLflow 3's UI opens an experiment by its kind: this one is model training (runs table, charts), not GenAI traces.
# The tag is what MLflow 3.1-3.x read; from 3.17 the UI decides by its own `workflowType` (GenAI unless the page's
# URL or the browser's stored choice says otherwise), so the links we print carry WORKFLOW_QUERY as well.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
WORKFLOW_QUERY = "workflowType=machine_learning"


def tracking_root(cfg: Config) -> Path:
    """Where relative tracking URIs point: the project, or, inside a DVC experiment (`dvc exp run --temp`, a queued
    one), the project DVC copied, so a sweep's runs land in the user's MLflow store and not in a deleted temp copy."""
    if os.environ.get("DVC_EXP_NAME") and os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"])
    return cfg.project_dir


def configure(cfg: Config):
    """Point MLflow at the config's tracking URI and experiment; returns the mlflow module."""
    import mlflow

    uri = resolve_uri(cfg.tracking.uri, tracking_root(cfg))
    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    if exp is None:
        # SQLite backend: artifacts in mlartifacts/ beside the database (the project root by default)
        artifacts = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" if uri.startswith("sqlite:///") else None
        with contextlib.suppress(Exception):  # another process may create it at the same moment
            mlflow.create_experiment(cfg.tracking.experiment, artifact_location=artifacts.as_uri() if artifacts else None,
                                     tags=EXPERIMENT_KIND)
    elif not all(exp.tags.get(k) == v for k, v in EXPERIMENT_KIND.items()):  # made by an older version
        for k, v in EXPERIMENT_KIND.items():
            mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, k, v)
    mlflow.set_experiment(cfg.tracking.experiment)
    return mlflow


def run_tags(cfg: Config, stage: str | None = None, extra: dict[str, Any] | None = None) -> dict[str, str]:
    lr = cfg.stages[stage].lr if stage in cfg.stages and cfg.stages[stage].lr else cfg.train.lr
    tags = {"preset": cfg.preset, "dtype": cfg.train.dtype, "lr": f"{lr:g}", "engine": cfg.train.engine}
    if os.environ.get("DVC_EXP_NAME"):  # run by `dvc exp run`: the name `dvc exp show` lists it under
        tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
    if stage:
        tags["stage"] = stage
    tags.update({k: str(v) for k, v in (extra or {}).items()})
    return tags


@contextlib.contextmanager
def start_run(
    cfg: Config,
    run_name: str,
    stage: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, Any] | None = None,
    log_config: bool = True,
) -> Iterator[Any]:
    """Start (or resume, via OPENSORA_MLFLOW_RUN_ID) an MLflow run tagged for comparison; yields the active run."""
    mlflow = configure(cfg)
    parent = parent_run_id or os.environ.get(PARENT_ENV) or None
    env_tags = json.loads(os.environ.get(TAGS_ENV) or "{}")
    all_tags = run_tags(cfg, stage, {**env_tags, **(tags or {})})
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    resume_id = os.environ.get(RUN_ENV) or None
    with mlflow.start_run(run_id=resume_id, run_name=None if resume_id else run_name, tags=all_tags) as run:
        if log_config and not resume_id:
            flat = {k: ("null" if v is None else v) for k, v in cfg.to_flat_dict().items()}
            # MLflow caps a param value at 6000 chars and a batch at 100 params
            items = [(k, str(v)[:500]) for k, v in flat.items()]
            for i in range(0, len(items), 100):
                mlflow.log_params(dict(items[i : i + 100]))
        yield run


def log_table(name: str, rows: list[dict[str, Any]]) -> None:
    """Log rows as a JSON table artifact (`name`.json) to the active run, viewable in the MLflow UI."""
    import mlflow

    if not rows:
        return
    columns = list(rows[0])
    table = {"columns": columns, "data": [[r.get(c) for c in columns] for r in rows]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / (name if name.endswith(".json") else f"{name}.json")
        path.write_text(json.dumps(table, indent=1, default=str))
        mlflow.log_artifact(str(path))


def run_url(run_id: str, cfg: Config, ui: str = "http://127.0.0.1:5000") -> str:
    """Link to a run in the MLflow UI started with the README's `make mlflow-ui`."""
    import mlflow

    exp = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    return f"{ui}/#/experiments/{exp.experiment_id if exp else 0}/runs/{run_id}?{WORKFLOW_QUERY}"


def experiment_url(cfg: Config, ui: str = "http://127.0.0.1:5000") -> str:
    """Link to the experiment's runs table (model-training view) in the MLflow UI at `ui`."""
    mlflow = configure(cfg)
    exp = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    return f"{ui}/#/experiments/{exp.experiment_id}/runs?{WORKFLOW_QUERY}"


def create_run(cfg: Config, run_name: str, stage: str | None = None, tags: dict[str, Any] | None = None) -> str:
    """Create a run without making it the active run of this process (a pipeline's parent run, held by the
    orchestrator while stage subprocesses log children into it); end it with `end_run(run_id, status)`."""
    mlflow = configure(cfg)
    from mlflow.entities import Param

    client = mlflow.MlflowClient()
    all_tags = run_tags(cfg, stage, {**json.loads(os.environ.get(TAGS_ENV) or "{}"), **(tags or {})})
    parent = os.environ.get(PARENT_ENV)
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    exp = mlflow.get_experiment_by_name(cfg.tracking.experiment)
    run = client.create_run(exp.experiment_id, run_name=run_name, tags=all_tags)
    items = [Param(k, str("null" if v is None else v)[:500]) for k, v in cfg.to_flat_dict().items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i : i + 100])
    return run.info.run_id


def end_run(run_id: str, status: str = "FINISHED") -> None:
    import mlflow

    mlflow.MlflowClient().set_terminated(run_id, status=status)
