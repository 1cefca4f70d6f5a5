"""Run under torchrun (2 gloo ranks): train the tiny STDiT through `train_stage` with a given engine.

    python -m tests.train.colossal_check RUN_DIR ENGINE PLUGIN STEPS [DTYPE [key=value ...]]   (from the repository root)

ENGINE torch|colossalai; PLUGIN torch_ddp|low_level_zero|- (the colossalai engine's plugin). Losses land in
`RUN_DIR/.../train_log.jsonl` (one row per step). On CPU, `low_level_zero` first applies the test-only workarounds
from ../shared/notes/colossalai.md: ColossalAI's ZeRO optimizer refuses a CPU accelerator by design and uses
CUDA streams; with the device assert bypassed and the streams replaced by no-ops (overlap_communication is off
on CPU) it runs our wiring on CPU. Never done outside tests.
"""

import contextlib
import logging
import os
import sys

import torch

from tests.kit.tiny_training import STAGE, RandomLatents, tiny_config


def patch_low_level_zero_for_cpu() -> None:
    from colossalai.accelerator.cpu_accelerator import CpuAccelerator
    from colossalai.zero.low_level import low_level_optim

    def sanity_checks(self):  # ColossalAI's check minus `assert accelerator in (cuda, npu)`
        for group in self.optim.param_groups:
            for p in group["params"]:
                if not getattr(p, "skip_zero_check", False):
                    assert p.dtype == self._dtype, (p.dtype, self._dtype)

    low_level_optim.LowLevelZeroOptimizer._sanity_checks = sanity_checks
    CpuAccelerator.Stream = lambda self, *a, **k: None
    CpuAccelerator.current_stream = lambda self, *a, **k: None
    CpuAccelerator.stream = lambda self, s: contextlib.nullcontext()
    CpuAccelerator.synchronize = lambda self, *a, **k: None


def main(run_dir: str, engine: str, plugin: str, steps: str, dtype: str = "fp32", *overrides: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if plugin != "-":
        os.environ["OPENSORA_COLOSSAL_PLUGIN"] = plugin
    if plugin == "low_level_zero" and not torch.cuda.is_available():
        patch_low_level_zero_for_cpu()
    from opensora_core.train.loop import train_stage

    cfg = tiny_config(run_dir, **{"train.engine": engine, "train.processes": 2, "train.dtype": dtype,
                                  f"stages.{STAGE}.max_steps": int(steps), "train.ckpt_every": 3,
                                  **dict(o.split("=", 1) for o in overrides)})
    summary = train_stage(cfg, STAGE, track=False, dataset=RandomLatents(8))
    if int(os.environ.get("RANK", "0")) == 0:
        print("summary", summary, flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
