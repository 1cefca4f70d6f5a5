"""fp16 loss scaling and the NaN guard."""

from __future__ import annotations

import pytest
import torch

from opensora_core import checkpoint as ckpt
from opensora_core.train.loop import train_stage
from opensora_core.train.precision import LossScaler, NaNGuard, NonFiniteLossError

from tests.kit import free_port
from tests.kit.tiny_training import STAGE, RandomLatents, tiny_config


def test_overflowing_fp16_step_is_skipped_and_scale_halves():
    p = torch.nn.Parameter(torch.ones(3))
    scaler = LossScaler(enabled=True, init_scale=2.0**16, growth_interval=2)
    p.grad = torch.tensor([1.0, float("inf"), 0.0])
    assert not scaler.unscale_and_check([p])
    scaler.update(False)
    assert scaler.scale_value == 2.0**15 and scaler.skipped_steps == 1
    for _ in range(2):  # two good steps in a row: the scale doubles again
        p.grad = torch.ones(3) * scaler.scale_value
        assert scaler.unscale_and_check([p])
        assert torch.equal(p.grad, torch.ones(3))  # gradients come back unscaled
        scaler.update(True)
    assert scaler.scale_value == 2.0**16


def test_nan_guard_aborts_after_patience_consecutive_nonfinite_losses():
    guard = NaNGuard(patience=3)
    assert not guard.check(torch.tensor(float("nan")), 1)
    assert guard.check(torch.tensor(1.0), 2)  # a finite loss resets the count
    assert not guard.check(torch.tensor(float("inf")), 3)
    assert not guard.check(torch.tensor(float("nan")), 4)
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
        guard.check(torch.tensor(float("nan")), 5)


def test_fp16_training_skips_overflowing_steps_without_touching_weights(tmp_path):
    # a scale near the fp32 maximum makes the scaled gradients overflow: those steps must be skipped
    cfg = tiny_config(tmp_path, **{"train.dtype": "fp16", "train.initial_loss_scale": 3e38,
                                   f"stages.{STAGE}.max_steps": 3, "train.ckpt_every": 1, "train.keep_last": 5})
    summary = train_stage(cfg, STAGE, track=False, dataset=RandomLatents(8))
    assert summary["skipped_steps"] >= 1
    root = cfg.paths.ckpt_dir(STAGE)
    first = ckpt.load_model_state(root / "step_0000001")
    meta = ckpt.load_meta(root / "step_0000001")
    assert meta.scaler["skipped_steps"] == 1 and meta.scaler["scale"] == 1.5e38
    # weights after a skipped first step are the initial weights: equal to the EMA (nothing averaged in)
    ema = ckpt.load_ema_state(root / "step_0000001")
    assert all(torch.equal(first[k], ema[k]) for k in first)


def test_bf16_training_runs_with_finite_loss(tmp_path):
    cfg = tiny_config(tmp_path, **{"train.dtype": "bf16", f"stages.{STAGE}.max_steps": 2})
    summary = train_stage(cfg, STAGE, track=False, dataset=RandomLatents(8))
    assert summary["steps"] == 2 and torch.isfinite(torch.tensor(summary["final_loss"]))


def test_colossalai_engine_without_colossalai_fails_naming_the_install_route(tmp_path):
    pytest.importorskip("torch")
    try:
        import colossalai  # noqa: F401
        pytest.skip("colossalai is installed here")
    except ImportError:
        pass
    cfg = tiny_config(tmp_path, **{"train.engine": "colossalai", f"stages.{STAGE}.max_steps": 1})
    with pytest.raises(RuntimeError, match="make test-colossal"):
        train_stage(cfg, STAGE, track=False, dataset=RandomLatents(4))


def _agree_worker(rank: int, port: int, out):
    import torch.distributed as dist

    from opensora_core.train.precision import all_ranks_any

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        # rank 0's loss is fine but it was asked to stop; rank 1's loss is NaN: both ranks see both
        out.put((rank, all_ranks_any((rank == 1, rank == 0, False), torch.device("cpu"))))
    finally:
        dist.destroy_process_group()


def test_all_ranks_agree_on_every_flag_of_one_all_reduce():
    import torch.multiprocessing as mp

    port = free_port()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_agree_worker, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert results == {0: (True, True, False), 1: (True, True, False)}
