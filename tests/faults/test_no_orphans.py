"""No orphans: whatever process of a job is killed, and however, nothing of the job is left running, and the
rerun resumes and ends bit-identical to an uninterrupted run (`reference`: same losses, weights and EMA)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import psutil
import pytest

from opensora_core import checkpoint as ckpt
from opensora_core.lifetime import OWNER_ENV

from tests.faults.jobs import STAGE, STAGE_ID, STEPS, Job, assert_resumed_bit_identical, job_overrides, latest_step, wait_all_gone
from tests.kit import opensora_command, wait_until
from tests.kit.tiny_training import tiny_config

pytestmark = pytest.mark.slow


def _ranks(job: Job) -> list[psutil.Process]:
    return [p for p in job.tree() if "train" in p.cmdline() and "torch.distributed.run" not in p.cmdline()]


def _torchrun(job: Job) -> psutil.Process:
    return next(p for p in job.tree() if "torch.distributed.run" in p.cmdline())


def test_each_kill_point_of_a_training_job_leaves_nothing_running_and_the_resumed_run_is_bit_identical(tmp_path, reference):
    """One run directory, killed at one point after another: torchrun (SIGKILL), one rank (SIGKILL), the stage
    process (SIGKILL), every process of the job at once (SIGKILL: none gets to clean up), then resumed to the end.
    The checkpoints land mid-epoch (16 samples / (2 ranks x 2) = 4 steps an epoch, one every 10 steps), so the
    resume also continues the data order inside an epoch; each rank keeps its own RNG state."""
    run_dir = tmp_path / "run"
    overrides = job_overrides(run_dir)
    steps_seen = []
    kill_points = [
        ("torchrun SIGKILL", lambda job: _torchrun(job).kill()),
        ("one rank SIGKILL", lambda job: _ranks(job)[-1].kill()),
        ("stage process SIGKILL", lambda job: job.proc.kill()),
        ("the whole job SIGKILL", lambda job: [p.kill() for p in job.tree()]),
    ]
    for i, (what, kill) in enumerate(kill_points):
        job = Job(opensora_command("pipeline", "stage", STAGE_ID, "--no-track", *overrides), tmp_path / f"log{i}")
        start = latest_step(run_dir) or 0
        job.wait_for(f"step {start + 5}/{STEPS} ")
        tree = job.tree()
        assert len(_ranks(job)) == 2, [p.cmdline()[:6] for p in tree]
        kill(job)
        seconds = wait_all_gone(tree, str(run_dir))
        job.wait()
        steps_seen.append(latest_step(run_dir))
        print(f"{what}: every process gone after {seconds:.1f} s; latest checkpoint step {steps_seen[-1]}")
    assert steps_seen[-1] is not None and steps_seen[-1] < STEPS
    job = Job(opensora_command("pipeline", "stage", STAGE_ID, "--no-track", *overrides), tmp_path / "log-final")
    assert job.wait() == 0, job.text()[-3000:]
    assert "resuming" in job.text() and f"resume:{ckpt.step_dir_name(steps_seen[-1])}" in job.text()
    assert "[rank 1] " in job.text()  # the launcher names each rank's lines
    assert_resumed_bit_identical(run_dir, reference, steps_seen[-1])
    final = ckpt.read_latest(tiny_config(run_dir).paths.ckpt_dir(STAGE))
    assert sorted(p.name for p in final.glob("rng_rank*.pt")) == ["rng_rank0.pt", "rng_rank1.pt"]


def _flow_env(tmp_path) -> dict[str, str]:
    home = tmp_path / "prefect"
    return {"PREFECT_HOME": str(home), "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
            "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PREFECT_API_URL": ""}


def _flow_run_states(tmp_path) -> dict[str, str]:
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        return dict(db.execute("SELECT name, state_type FROM flow_run"))


@pytest.mark.timeout(1800)  # three flow runs, each starting Prefect's temporary server: ~20 s idle, minutes when busy
def test_a_killed_flow_takes_its_job_and_temporary_server_down_and_the_next_run_marks_it_crashed(tmp_path, reference):
    """`opensora pipeline run --stage pretrain_256` stopped during training, first by SIGTERM, then (rerun)
    by SIGKILL: each time the stage process, torchrun, both ranks and Prefect's temporary API server go. The
    SIGTERMed run ends Crashed by itself; the SIGKILLed one is marked Crashed by the next run, which resumes."""
    run_dir = tmp_path / "run"
    overrides = job_overrides(run_dir)
    env = _flow_env(tmp_path)
    for i, sig in enumerate((signal.SIGTERM, signal.SIGKILL)):
        flow = Job(opensora_command("pipeline", "run", "--stage", STAGE, *overrides), tmp_path / f"flow{i}.log", env)
        flow.wait_for(f"step {(latest_step(run_dir) or 0) + 5}/{STEPS} ")
        tree = flow.tree()
        names = " ".join(" ".join(p.cmdline()) for p in tree)
        assert "uvicorn" in names and "torch.distributed.run" in names, names
        flow.proc.send_signal(sig)
        seconds = wait_all_gone(tree, str(run_dir))
        flow.wait()
        print(f"flow {sig.name}: its {len(tree) - 1} processes (server, stage, torchrun, ranks) gone after {seconds:.1f} s")
    states = _flow_run_states(tmp_path)
    assert sorted(states.values()) == ["CRASHED", "RUNNING"], states
    (dead,) = [name for name, state in states.items() if state == "RUNNING"]
    resumed_at = latest_step(run_dir)

    rerun = Job(opensora_command("pipeline", "run", "--stage", STAGE, *overrides), tmp_path / "flow-final.log", env)
    assert rerun.wait() == 0, rerun.text()[-3000:]
    assert f"flow run {dead} was still Running but its process is gone: marked Crashed" in rerun.text()
    assert _flow_run_states(tmp_path)[dead] == "CRASHED"
    assert "resuming" in rerun.text()
    assert_resumed_bit_identical(run_dir, reference, resumed_at)


_OWNER = textwrap.dedent("""
    import os, subprocess, sys
    # an intermediate process that is not ours (like DVC's shell): `; true` keeps sh from exec'ing the child
    child = [sys.executable, "-m", "opensora_core.lifetime", "timeit", "-n1", "-r1", "import time; time.sleep(600)"]
    subprocess.run(["sh", "-c", " ".join(f"'{a}'" for a in child) + "; true"], env={**os.environ, "%s": str(os.getpid())})
""" % OWNER_ENV)


@pytest.mark.parametrize("killed", ["owner", "intermediate"])
def test_a_bound_process_dies_when_its_owner_or_any_process_in_between_dies(killed):
    owner = subprocess.Popen([sys.executable, "-c", _OWNER])
    root = psutil.Process(owner.pid)
    # bound = its watcher thread runs (before that, a dead owner is caught by the start-up check instead)
    wait_until(lambda: any("timeit" in p.cmdline() and p.num_threads() >= 2 for p in root.children(recursive=True)), 120,
               what="the bound process's watcher thread", interval=0.05, process=owner)
    tree = [root, *root.children(recursive=True)]
    shell = next(p for p in tree if p.name() == "sh")
    (root if killed == "owner" else shell).send_signal(signal.SIGKILL)
    wait_all_gone(tree, "time.sleep(600)", timeout=60)
    owner.wait()


def test_a_bound_process_whose_owner_is_already_gone_exits_at_once():
    env = {**os.environ, OWNER_ENV: str(os.getpid() + 10**6)}  # no such ancestor
    out = subprocess.run([sys.executable, "-m", "opensora_core.lifetime", "timeit", "-n1", "-r1", "pass"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "is gone" in out.stderr
