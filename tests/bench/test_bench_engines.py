"""`opensora bench model --engines torch,fsdp --nproc 2`: STDiT's training step per engine under torchrun (gloo)."""

import pytest

from opensora_core.bench.engines import run_engine_benchmark
from opensora_core.bench.model import BenchShape

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def test_fsdp_on_2_ranks_holds_half_the_model_state_per_rank_of_ddp():
    """The rows: step time and model state per rank, for each shape and engine."""
    shapes = (BenchShape("16x256", (2, 4, 4), 2, False), BenchShape("16x512", (2, 8, 8), 1, True),
              BenchShape("64x512", (4, 4, 4), 1, True))  # the CPU shapes' kinds, smaller
    rows = run_engine_benchmark(["torch", "fsdp"], 2, steps=1, warmup=1, caption=(16, 8), shapes=shapes)
    by = {(r["shape"], r["engine"]): r for r in rows}
    assert {engine for _, engine in by} == {"torch", "fsdp"} and len(by) == len(rows) == 6
    for shape in {shape for shape, _ in by}:
        ddp, fsdp = by[(shape, "torch")], by[(shape, "fsdp")]
        assert fsdp["state_MiB/rank"] == pytest.approx(ddp["state_MiB/rank"] / 2, rel=0.05)
        assert ddp["step_ms"] > 0 and fsdp["step_ms"] > 0 and fsdp["ranks"] == 2
