"""Fixtures for the training tests: a tiny config under tmp_path, a fresh MLflow store, the 2-rank DDP reference run
(the tiny stage itself is tests/kit/tiny_training.py)."""

from __future__ import annotations

import pytest

from tests.kit.tiny_training import tiny_config
from tests.train.scale_jobs import train


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    """A fresh MLflow store for the test, and no run or parent run inherited from the environment."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("OPENSORA_MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("OPENSORA_PARENT_RUN_ID", raising=False)
    return uri


@pytest.fixture
def tiny_cfg(tmp_path):
    return tiny_config(tmp_path / "run")


@pytest.fixture(scope="session")
def ddp_2rank_run(tmp_path_factory):
    """The scale-out tests' reference: scale_jobs' stage trained by DDP on 1 node x 2 ranks (config)."""
    return train(tmp_path_factory.mktemp("ddp2") / "run", "torch", 2)
