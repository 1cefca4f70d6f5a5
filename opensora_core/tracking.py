"""MLflow conventions in one place.

One parent run per pipeline run, a child run per stage: a stage joins its parent through `parent_run_id` or the
`OPENSORA_PARENT_RUN_ID` environment variable (set by the flow for the jobs it launches). Every run is tagged
with preset / stage / dtype / lr so that comparing fp16 with bf16 or lr 1e-4 with 2e-5 is one filter away,
e.g. `tags.dtype = 'fp16'` in the MLflow UI.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opensora_core.config import Config

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


# --------------------------------------------------------------------------------------------------------
# Training metrics that survive the tracking server going away


PENDING_FILE = "mlflow_pending.json"
_FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
_BATCH = 1000  # MLflow's limit of metrics per log_batch request


@contextlib.contextmanager
def _fail_fast() -> Iterator[None]:
    """MLflow calls that give up at once: by default a dead server is retried with back-off for ~4 minutes, during
    which training would stand still. The buffer below is the retry."""
    old = {k: os.environ.get(k) for k in _FAIL_FAST}
    os.environ.update(_FAIL_FAST)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class BufferedRun:
    """Rank 0's logging into the active MLflow run of a training job, kept when the tracking server is down.

    Step metrics are sent as they come; when the server does not answer they are kept (with the time they were
    logged) and sent together with later ones once it answers again (tried at most every `retry_interval`
    seconds, and always at the end). What is still unsent when the job ends is written to
    `spill_dir/mlflow_pending.json`, which the job's log and final.json name; `opensora tracking send <file>`
    sends it later, and a resumed job of the same run picks it up by itself.
    """

    def __init__(self, run_id: str, spill_dir: Path, retry_interval: float = 10.0):
        import mlflow

        self.run_id, self.spill_path, self.retry_interval = run_id, Path(spill_dir) / PENDING_FILE, retry_interval
        self.uri = mlflow.get_tracking_uri()
        self._metrics: list[tuple[str, float, int, int]] = []  # key, value, timestamp ms, step
        self._tags: dict[str, str] = {}
        self._down_since: float | None = None
        self._last_try = 0.0
        self._load_previous()

    def _load_previous(self) -> None:
        if not self.spill_path.is_file():
            return
        try:
            old = json.loads(self.spill_path.read_text())
        except (OSError, json.JSONDecodeError):
            return
        if old.get("run_id") == self.run_id:  # an earlier attempt of this run could not send these
            self._metrics = [tuple(m) for m in old.get("metrics", [])]
            self._tags = dict(old.get("tags", {}))
            log.info("sending %d metric values an earlier attempt kept in %s", len(self._metrics), self.spill_path)

    @property
    def pending(self) -> int:
        return len(self._metrics) + len(self._tags)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._metrics += [(k, float(v), now, int(step)) for k, v in metrics.items()]
        self.flush()

    def set_tag(self, key: str, value: str) -> None:
        self._tags[key] = str(value)
        self.flush()

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> bool:
        """Upload a file (a sample grid) if the server answers; a file it does not take stays where it is on disk
        (beside the checkpoints), named in a warning: artifacts are not kept for a resend."""
        try:
            with _fail_fast():
                _client(self.uri).log_artifact(self.run_id, str(path), artifact_path)
            return True
        except Exception as e:  # noqa: BLE001 - as for metrics: training goes on
            log.warning("MLflow at %s did not take %s (%s); the file stays on disk", self.uri, path, _short(e))
            return False

    def flush(self, force: bool = False) -> bool:
        """Send what is kept; False when the server did not take it (it stays kept)."""
        if not self.pending:
            return True
        if not force and self._down_since is not None and time.monotonic() - self._last_try < self.retry_interval:
            return False
        from mlflow.entities import Metric, RunTag

        self._last_try = time.monotonic()
        client = _client(self.uri)
        try:
            with _fail_fast():
                while self._metrics:
                    chunk = self._metrics[:_BATCH]
                    client.log_batch(self.run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in chunk])
                    del self._metrics[:len(chunk)]
                if self._tags:
                    client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in self._tags.items()])
                    self._tags.clear()
        except Exception as e:  # noqa: BLE001 - whatever the client raises for a dead server, training goes on
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning("MLflow at %s does not answer (%s): metrics are kept and sent when it is back",
                            self.uri, _short(e))
            return False
        if self._down_since is not None:
            log.info("MLflow at %s is back after %.0fs: kept metrics sent", self.uri, time.monotonic() - self._down_since)
            self._down_since = None
        return True

    def end(self, status: str = "FINISHED") -> Path | None:
        """Send what is kept and end the run with `status`; returns the file holding what MLflow did not take
        (None when everything was sent). Ends the fluent active run either way."""
        import mlflow

        sent = self.flush(force=True)
        terminated = False
        if sent:
            try:
                with _fail_fast():
                    mlflow.end_run(status)  # pops the active run first, then tells the server
                terminated = True
            except Exception as e:  # noqa: BLE001
                log.warning("MLflow at %s did not take the end of run %s (%s)", self.uri, self.run_id, _short(e))
        if mlflow.active_run() is not None and mlflow.active_run().info.run_id == self.run_id:
            with contextlib.suppress(Exception), _fail_fast():
                mlflow.end_run(status)  # the server is down: the run is left RUNNING there until the file is sent
        if sent and terminated:
            with contextlib.suppress(FileNotFoundError):
                self.spill_path.unlink()
            return None
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.spill_path.with_name(self.spill_path.name + ".tmp")
        tmp.write_text(json.dumps({"tracking_uri": self.uri, "run_id": self.run_id, "status": status,
                                   "metrics": self._metrics, "tags": self._tags}))
        os.replace(tmp, self.spill_path)
        log.warning("MLflow at %s was down at the end of the job: %d metric values of run %s are in %s; "
                    "send them with `opensora tracking send %s`", self.uri, len(self._metrics), self.run_id,
                    self.spill_path, self.spill_path)
        return self.spill_path


def send_pending(path: str | Path, tracking_uri: str | None = None) -> int:
    """Send a job's `mlflow_pending.json` (metrics, tags, final status) to its run; removes the file once sent.
    Returns the number of metric values sent; raises when the server still does not answer."""
    from mlflow.entities import Metric, RunTag

    path = Path(path)
    data = json.loads(path.read_text())
    client = _client(tracking_uri or data["tracking_uri"])
    metrics = [Metric(k, v, t, s) for k, v, t, s in data.get("metrics", [])]
    for i in range(0, len(metrics), _BATCH):
        client.log_batch(data["run_id"], metrics=metrics[i:i + _BATCH])
    if data.get("tags"):
        client.log_batch(data["run_id"], tags=[RunTag(k, v) for k, v in data["tags"].items()])
    client.set_terminated(data["run_id"], status=data.get("status", "FINISHED"))
    path.unlink()
    return len(metrics)


def _client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text[:200]}"
