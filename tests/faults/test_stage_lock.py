"""One writer per stage: a stage holds a lock on its outputs while it runs; a second run waits for it (naming
the holder) or, with OPENSORA_LOCK_TIMEOUT, fails saying who holds it; a dead holder's lock is taken."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from opensora_core.locks import StageLock, StageLocked

from tests.faults.jobs import STAGE_ID, Job, assert_bit_identical, final_weights, job_overrides
from tests.kit import opensora_command

_HOLD = "import sys; from opensora_core.locks import StageLock; lock = StageLock(sys.argv[1]).acquire(); print('held', flush=True); sys.stdin.read()"


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock until its stdin closes."""
    path = tmp_path / ".stages" / "train@x.lock"
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield path, proc
    proc.kill()
    proc.wait()


def test_a_bounded_wait_fails_naming_the_holder(holder):
    path, proc = holder
    with pytest.raises(StageLocked, match=f"held by pid {proc.pid} on {socket.gethostname()} since "):
        StageLock(path, on_line=lambda _line: None, timeout=0).acquire()


def test_the_timeout_comes_from_the_environment(holder, monkeypatch):
    monkeypatch.setenv("OPENSORA_LOCK_TIMEOUT", "0")
    with pytest.raises(StageLocked, match="OPENSORA_LOCK_TIMEOUT"):
        StageLock(holder[0], on_line=lambda _line: None).acquire()


def test_the_lock_of_a_killed_holder_is_taken_over_and_said(holder):
    path, proc = holder
    lines: list[str] = []
    proc.kill()
    proc.wait()
    with StageLock(path, on_line=lines.append, timeout=30) as lock:
        assert lock.holder()["pid"] == os.getpid()
    assert any(f"took over {path.name} from pid {proc.pid}" in line and "died holding it" in line for line in lines), lines


def test_a_waiting_run_says_what_it_waits_for_and_gets_the_lock_when_the_holder_ends(holder):
    path, proc = holder
    lines: list[str] = []
    lock = StageLock(path, on_line=lambda line: (lines.append(line), proc.stdin.close() if len(lines) == 1 else None))
    with lock:
        pass
    assert lines[0].startswith(f"[lock] waiting for {path} held by pid {proc.pid} on {socket.gethostname()}"), lines
    assert lines[-1].startswith(f"[lock] got {path.name} after "), lines


@pytest.mark.slow
def test_two_concurrent_runs_of_a_training_stage_end_bit_identical_and_the_second_says_what_it_waited_for(tmp_path, reference):
    run_dir = tmp_path / "run"
    overrides = job_overrides(run_dir)
    first = Job(opensora_command("pipeline", "stage", STAGE_ID, "--no-track", *overrides), tmp_path / "first.log")
    first.wait_for(f"[{STAGE_ID}] running")
    second = Job(opensora_command("pipeline", "stage", STAGE_ID, "--no-track", *overrides), tmp_path / "second.log")
    assert first.wait() == 0, first.text()[-3000:]
    assert second.wait() == 0, second.text()[-3000:]
    out = second.text()
    assert f"waiting for {run_dir / '.stages' / (STAGE_ID + '.lock')} held by pid {first.proc.pid}" in out, out[-2000:]
    assert f"[{STAGE_ID}] up to date" in out  # it found the first run's result, and wrote nothing
    assert_bit_identical(final_weights(run_dir), reference)
