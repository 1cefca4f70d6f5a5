"""Sequence parallelism over 2 gloo processes reproduces the one-process forward output and gradients."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(240)
@pytest.mark.parametrize("temporal_pos,engine", [("first_block", "none"), ("input", "none"), ("first_block", "fsdp")])
def test_sp2_forward_and_gradients_equal_sp1(tmp_path, temporal_pos, engine):
    out = tmp_path / "sp.json"
    script = Path(__file__).with_name("sp_check.py")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), str(out), temporal_pos, engine], capture_output=True, text=True, timeout=230)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    for r in results:
        assert r["n_grads"] > 10
        assert r["out"] < 1e-5, r
        assert r["grad"] < 1e-4, r
