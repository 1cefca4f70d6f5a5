"""Fixtures for the orchestration tests: a run directory and MLflow database in tmp, fake stage bodies."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile

import pytest

# Prefect state of these tests in tmp, not the project's .prefect/ (set before flows/prefect are imported)
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-test-"))
os.environ.setdefault("PREFECT_API_DATABASE_CONNECTION_URL", f"sqlite+aiosqlite:///{os.environ['PREFECT_HOME']}/prefect.db")

from opensora_core import pipeline


@pytest.fixture
def mlflow_db(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("OPENSORA_PARENT_RUN_ID", raising=False)
    return uri


@pytest.fixture
def tmp_params(tmp_path) -> pipeline.Params:
    """The project's params with the run directory moved into tmp."""
    return pipeline.Params(overrides=(f"run_dir={tmp_path / 'run'}",))


class FakeBodies:
    """Stage bodies that write their declared outputs and count calls; `fail_train_once` makes the first
    training attempt write a partial checkpoint and fail, like a killed job."""

    def __init__(self):
        self.calls: list[str] = []
        self.fail_train_once: set[str] = set()

    def make(self, kind: str):
        def body(ctx: pipeline.StageContext):
            cfg, on_line, sub = ctx.cfg, ctx.on_line, ctx.stage
            sid = f"{kind}@{sub}" if sub else kind
            self.calls.append(sid)
            on_line(f"fake {sid} running")
            for out in pipeline.outputs(cfg, sid):
                if kind == "train":
                    out.mkdir(parents=True, exist_ok=True)
                    partial = out / "partial"
                    if sid in self.fail_train_once:
                        self.fail_train_once.discard(sid)
                        partial.write_text("step 5")
                        raise RuntimeError(f"{sid}: job killed")
                    resumed = partial.exists()
                    (out / "final.json").write_text(json.dumps({"final_loss": 0.5, "resumed": int(resumed)}))
                elif out.suffix:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(sid)
                else:
                    out.mkdir(parents=True, exist_ok=True)
                    (out / "x").write_text(sid)
            return {"final_loss": 0.5} if kind == "train" else {"fake": 1.0}

        return body


@pytest.fixture
def fake_bodies(monkeypatch) -> FakeBodies:
    fake = FakeBodies()
    for kind, stage in pipeline.STAGES.items():
        monkeypatch.setitem(pipeline.STAGES, kind, dataclasses.replace(stage, run=fake.make(kind)))
    return fake


