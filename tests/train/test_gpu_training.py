"""The training loop on a CUDA device (nccl/cuda path of the torch engine); skipped without one."""

from __future__ import annotations

import pytest
import torch

from opensora_core import checkpoint as ckpt
from opensora_core.train.loop import train_stage

from tests.kit.tiny_training import STAGE, RandomLatents, tiny_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
def test_stage_trains_on_cuda_and_resumes_with_ema_on_the_gpu(tmp_path, dtype):
    cfg = tiny_config(tmp_path, **{"train.dtype": dtype, f"stages.{STAGE}.max_steps": 3, "train.ckpt_every": 3})
    summary = train_stage(cfg, STAGE, track=False, dataset=RandomLatents(8))
    assert summary["steps"] == 3 and torch.isfinite(torch.tensor(summary["final_loss"]))
    first_ema = ckpt.load_ema_state(cfg.paths.ckpt_dir(STAGE) / "step_0000003")
    more = tiny_config(tmp_path, **{"train.dtype": dtype, f"stages.{STAGE}.max_steps": 6, "train.ckpt_every": 3})
    assert train_stage(more, STAGE, track=False, dataset=RandomLatents(8))["steps"] == 6
    later_ema = ckpt.load_ema_state(cfg.paths.ckpt_dir(STAGE) / "step_0000006")
    assert any(not torch.equal(first_ema[k], later_ema[k]) for k in first_ema)  # the EMA kept averaging
