"""Signals: SIGTERM stops `opensora pipeline serve`, `opensora pipeline server` and a training job (which first
checkpoints the step it is at, so pre-emption loses nothing)."""

from __future__ import annotations

import signal
import time

import pytest

from tests.faults.jobs import STAGE_ID, STEPS, Job, assert_resumed_bit_identical, job_overrides, latest_step, wait_all_gone
from tests.kit import free_port, opensora_command, wait_for_url

pytestmark = pytest.mark.slow


def _terminate(job: Job) -> tuple[int, float]:
    tree = job.tree()
    t0 = time.monotonic()
    job.proc.send_signal(signal.SIGTERM)
    rc = job.wait(timeout=120)
    wait_all_gone(tree, "\0")  # its children too (the server's services, the runner's webserver)
    return rc, time.monotonic() - t0


def test_sigterm_stops_serve_and_the_server(tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect' / 'prefect.db'}",
           "PREFECT_UI_ENABLED": "false"}
    server = Job(opensora_command("pipeline", "server", "--port", str(port)), tmp_path / "server.log", env)
    serve = None
    try:
        wait_for_url(f"{api}/health", 600, process=server.proc, output=lambda: server.text()[-2000:])
        serve = Job(opensora_command("pipeline", "serve", "--api-url", api), tmp_path / "serve.log", env)
        serve.wait_for("serving progressive-training/tiny")  # registered, and the runner polls
        rc, seconds = _terminate(serve)
        print(f"serve: exit status {rc}, {seconds:.1f} s after SIGTERM")
        assert rc in (0, 143, -signal.SIGTERM), serve.text()[-2000:]
        rc, seconds = _terminate(server)
        print(f"server: exit status {rc}, {seconds:.1f} s after SIGTERM")
        assert rc in (0, 143, -signal.SIGTERM), server.text()[-2000:]
    finally:
        for job in (serve, server):
            if job and job.proc.poll() is None:
                job.proc.kill()


def test_sigterm_to_a_training_job_checkpoints_the_current_step_and_the_rerun_is_bit_identical(tmp_path, reference):
    run_dir = tmp_path / "run"
    overrides = job_overrides(run_dir)
    job = Job(opensora_command("pipeline", "stage", STAGE_ID, "--no-track", *overrides), tmp_path / "log")
    job.wait_for(f"step 13/{STEPS} ")  # between the checkpoints of steps 10 and 20
    tree = job.tree()
    t0 = time.monotonic()
    job.proc.send_signal(signal.SIGTERM)
    seconds = wait_all_gone(tree, str(run_dir))  # (this reaps the job, so its exit status is not read here)
    job.wait()
    assert "exited with status" in job.text() and "rerun to resume" in job.text()
    step = latest_step(run_dir)
    print(f"training job: every process gone {time.monotonic() - t0:.1f} s after SIGTERM ({seconds:.1f}); checkpoint at step {step}")
    assert step is not None and 13 <= step < STEPS, f"no checkpoint of the current step: {step}"
    assert f"checkpointed step {step}" in job.text()
    rerun = Job(opensora_command("pipeline", "stage", STAGE_ID, "--no-track", *overrides), tmp_path / "log2")
    assert rerun.wait() == 0, rerun.text()[-3000:]
    assert_resumed_bit_identical(run_dir, reference, step)
