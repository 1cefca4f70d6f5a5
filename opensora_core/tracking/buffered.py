"""Training metrics that survive the tracking server going away: rank 0's buffered MLflow run, and sending what
a job could not send later (`opensora tracking send <file>`).

mlflow (slow to import) is imported inside the functions that send to the server, so a run with tracking off
never loads it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from opensora_core.io import atomic_write_json

log = logging.getLogger(__name__)


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
        atomic_write_json(self.spill_path, {"tracking_uri": self.uri, "run_id": self.run_id, "status": status,
                                            "metrics": self._metrics, "tags": self._tags})
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
