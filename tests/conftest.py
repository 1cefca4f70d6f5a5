"""Fixtures shared across test folders (each folder's own conftest.py holds the rest)."""

from __future__ import annotations

import os

import pytest

from tests.kit import TELEMETRY_OFF, free_port

# Session-wide, before any test imports MLflow or Prefect (both read it at import) or spawns a process (each
# inherits it): no telemetry, no `dvc daemon analytics` left behind. kit.run adds it to the environments tests build.
os.environ.update(TELEMETRY_OFF)


@pytest.fixture(autouse=True)
def _environment_restored():
    """Each test gets back the environment it started with: a CLI callback (`--project`), Dask (OMP_NUM_THREADS,
    PYTHONHASHSEED) and others write into os.environ, and later tests' subprocesses would inherit it."""
    before = dict(os.environ)
    yield
    if dict(os.environ) != before:
        os.environ.clear()
        os.environ.update(before)


FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 (a free port) with a bucket `opensora-dvc`; fake AWS credentials in the
    environment while it runs. Yields the endpoint URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    old = {k: os.environ.get(k) for k in FAKE_AWS}
    os.environ.update(FAKE_AWS)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket="opensora-dvc")
        yield url
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
