"""The ColossalAI engine (Booster) on 2 gloo processes: same losses as the torch engine, CheckpointIO resume.

Runs in `.venv-colossal` (`make test-colossal`); skipped where ColossalAI is not importable. Each job is a
torchrun of colossal_check.py; the jobs are shared by the tests of this module (module-scoped fixtures).
CPU: TorchDDPPlugin + torch AdamW (the engine's CPU default) and LowLevelZero stage 2 with the test-only CPU
workarounds. GPU (`gpu`): LowLevelZero unpatched with HybridAdam in bf16 and fp16.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from opensora_core import checkpoint as ckpt

from tests.kit import REPO
from tests.kit.tiny_training import STAGE, tiny_config

pytest.importorskip("colossalai", reason="ColossalAI not installed: run `make test-colossal`")
pytestmark = [pytest.mark.colossal, pytest.mark.timeout(300)]

STEPS = 6
SCRIPT = ["-m", "tests.train.colossal_check"]  # run from the repository root, which holds `tests`


def _run(run_dir: Path, engine: str, plugin: str, steps: int = STEPS, dtype: str = "fp32", nproc: int = 2) -> str:
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(nproc), *SCRIPT, str(run_dir), engine, plugin, str(steps), dtype],
                          capture_output=True, text=True, timeout=280, cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


def _losses(run_dir: Path) -> list[float]:
    log = tiny_config(run_dir).paths.ckpt_dir(STAGE) / "train_log.jsonl"
    return [json.loads(line)["loss"] for line in log.read_text().splitlines()]


def _latest(run_dir: Path) -> Path:
    return ckpt.read_latest(tiny_config(run_dir).paths.ckpt_dir(STAGE))


def _weights_equal(a: Path, b: Path) -> bool:
    wa, wb = ckpt.load_model_state(a), ckpt.load_model_state(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The torch engine's 6-step job; per plugin a 3-step job resumed to 6 steps, and for LowLevelZero (whose
    losses only match the torch engine's up to rounding) also an uninterrupted 6-step job. 6 torchruns."""
    root = tmp_path_factory.mktemp("colossal")
    out = {"torch": root / "torch"}
    _run(out["torch"], "torch", "-")
    for plugin in ("torch_ddp", "low_level_zero"):
        part = root / f"{plugin}-part"
        out[f"{plugin}-log"] = _run(part, "colossalai", plugin, steps=3)
        out[f"{plugin}-resumed-log"] = _run(part, "colossalai", plugin)
        out[f"{plugin}-resumed"] = part
    out["low_level_zero"] = root / "low_level_zero-full"
    _run(out["low_level_zero"], "colossalai", "low_level_zero")
    out["torch_ddp"] = out["torch"]  # the DDP plugin's reference run: its losses equal the torch engine's
    return out


def test_booster_with_ddp_plugin_gives_the_torch_engines_losses_and_weights(runs):
    """The DDP plugin's job (stopped at step 3, resumed through CheckpointIO) reproduces the torch engine."""
    assert "TorchDDPPlugin" in runs["torch_ddp-log"] and "AdamW" in runs["torch_ddp-log"]
    torch_losses, booster_losses = _losses(runs["torch"]), _losses(runs["torch_ddp-resumed"])
    assert len(torch_losses) == STEPS
    assert booster_losses == torch_losses  # same DDP, same AdamW kernel, same clipping: bit for bit
    assert _weights_equal(_latest(runs["torch"]), _latest(runs["torch_ddp-resumed"]))


def test_low_level_zero_stage2_on_cpu_matches_the_torch_engine(runs):
    assert "LowLevelZeroPlugin" in runs["low_level_zero-log"]
    torch_losses, zero_losses = _losses(runs["torch"]), _losses(runs["low_level_zero"])
    assert len(zero_losses) == STEPS
    # ZeRO-2 reduce-scatters flat buckets and clips with its own norm: equal up to float rounding
    assert zero_losses == pytest.approx(torch_losses, rel=1e-5, abs=1e-6)
    wa, wb = ckpt.load_model_state(_latest(runs["torch"])), ckpt.load_model_state(_latest(runs["low_level_zero"]))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


@pytest.mark.parametrize("plugin", ["torch_ddp", "low_level_zero"])
def test_checkpoint_io_writes_booster_files_and_resume_is_exact(runs, plugin):
    full, resumed = _latest(runs[plugin]), _latest(runs[f"{plugin}-resumed"])
    assert full.name == resumed.name == f"step_{STEPS:07d}"
    assert "resume:step_0000003" in runs[f"{plugin}-resumed-log"]
    booster = resumed.parent / "colossal"
    # kept in step with the loop's checkpoints (keep_last=2): steps 3 and 6
    assert sorted(p.name for p in booster.iterdir()) == ["step_0000003", "step_0000006"]
    assert {p.name for p in (booster / resumed.name).iterdir()} >= {"model.safetensors", "optimizer.bin"}
    assert not (resumed / "optimizer.pt").exists()  # the Booster's optimizer.bin is the optimizer state
    booster_model = ckpt.load_model_state(booster / resumed.name)
    assert all(torch.equal(booster_model[k], v) for k, v in ckpt.load_model_state(resumed).items())
    assert _losses(runs[f"{plugin}-resumed"]) == _losses(runs[plugin])
    assert _weights_equal(full, resumed)
    ea, eb = ckpt.load_ema_state(full), ckpt.load_ema_state(resumed)
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_level_zero_with_hybrid_adam_trains_on_gpu(tmp_path, dtype):
    """Unpatched LowLevelZero stage 2 (overlapped communication) + HybridAdam, one GPU; fp16 with 2^16 scaling."""
    log = _run(tmp_path, "colossalai", "-", steps=STEPS, dtype=dtype, nproc=1)
    assert "LowLevelZeroPlugin" in log and "HybridAdam" in log, log[-3000:]
    losses = _losses(tmp_path)
    assert len(losses) == STEPS and all(map(lambda x: x == x and abs(x) < 1e3, losses))
    _run(tmp_path, "colossalai", "-", steps=STEPS + 3, dtype=dtype, nproc=1)  # resume through CheckpointIO
    assert len(_losses(tmp_path)) == STEPS + 3


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_sequence_parallel_with_low_level_zero_on_two_gpus(tmp_path):
    cfg_dir = tmp_path / "sp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           *SCRIPT, str(cfg_dir), "colossalai", "-", str(STEPS), "bf16", f"stages.{STAGE}.sp_size=2"],
                          capture_output=True, text=True, timeout=280, cwd=REPO)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert len(_losses(cfg_dir)) == STEPS
