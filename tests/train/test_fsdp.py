"""train.engine=fsdp under torchrun (gloo): FSDP2 matches DDP, DCP checkpoints resume exactly, reshard to
other world sizes as the sampler's rule says, and load without the training world."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import pytest
import torch

from opensora_core import checkpoint as ckpt
from opensora_core.checkpoint import sharded
from opensora_core.train.launcher import build_command, launch

from tests.kit import free_port
from tests.kit.tiny_training import STAGE, tiny_config
from tests.train.scale_jobs import EVERY, STEPS, job, losses, train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

def _copy_resume_point(src_cfg, run_dir, step: int):
    """A run directory whose stage holds `src_cfg`'s checkpoint of `step` as its latest (and the same cache)."""
    src = src_cfg.paths.ckpt_dir(STAGE)
    cfg = tiny_config(run_dir)
    dst = cfg.paths.ckpt_dir(STAGE)
    dst.mkdir(parents=True)
    shutil.copytree(src / ckpt.step_dir_name(step), dst / ckpt.step_dir_name(step))
    (dst / ckpt.LATEST).write_text(ckpt.step_dir_name(step) + "\n")
    shutil.copytree(src_cfg.paths.cache_dir(STAGE), cfg.paths.cache_dir(STAGE))
    return cfg


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ddp_2rank_run):
    """The 20-step runs on 2 ranks: DDP, and FSDP with per-block activation checkpointing."""
    root = tmp_path_factory.mktemp("fsdp")
    return {"ddp": ddp_2rank_run, "fsdp": train(root / "fsdp", "fsdp", 2, **{"model.grad_checkpoint": "true"}),
            "root": root}


def test_fsdp_on_2_ranks_matches_ddp_loss_for_loss(runs):
    ddp, fsdp = losses(runs["ddp"]), losses(runs["fsdp"])
    assert sorted(ddp) == sorted(fsdp) == list(range(1, STEPS + 1))
    for step in ddp:
        assert fsdp[step] == pytest.approx(ddp[step], rel=1e-4, abs=1e-5), step
    a = ckpt.load_model_state(ckpt.read_latest(runs["ddp"].paths.ckpt_dir(STAGE)))
    b = ckpt.load_model_state(ckpt.read_latest(runs["fsdp"].paths.ckpt_dir(STAGE)))
    # AdamW turns the rounding differences of near-zero gradients into updates of up to lr (1e-3) per step
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=2e-3) for k in a)


def test_fsdp_checkpoint_is_a_dcp_folder_loadable_by_sample_and_the_next_stage(runs):
    from opensora_core.eval.sample import load_checkpoint_model
    from opensora_core.models.stage import build_stage_model
    from opensora_core.train.init import init_weights

    step_dir = ckpt.read_latest(runs["fsdp"].paths.ckpt_dir(STAGE))
    assert sharded.is_sharded(step_dir) and not (step_dir / "model.safetensors").exists()
    assert sorted(p.name for p in (step_dir / "dcp").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    model, _, stage, _ = load_checkpoint_model(step_dir)  # strict load_state_dict, no process group
    ema = sharded.load_full(step_dir, "ema")
    assert stage == STAGE and all(torch.equal(v, ema[k]) for k, v in model.state_dict().items() if k in ema)
    nxt = build_stage_model(runs["fsdp"], "finetune_512")
    assert init_weights(nxt, runs["fsdp"], "finetune_512").startswith(STAGE)
    assert torch.equal(nxt.blocks[0].attn.qkv.weight, ema["blocks.0.attn.qkv.weight"])


def test_killed_fsdp_job_resumes_to_identical_weights(runs):
    cfg, args = job(runs["root"] / "killed", "fsdp", 2, **{"model.grad_checkpoint": "true"})
    proc = subprocess.Popen(build_command(args, nproc=2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    for line in proc.stdout:
        if "saved checkpoint" in line and ckpt.step_dir_name(EVERY) in line:
            os.killpg(proc.pid, signal.SIGKILL)  # every rank and torchrun, mid-run
            break
    assert proc.wait() == -signal.SIGKILL
    assert EVERY <= ckpt.load_meta(ckpt.read_latest(cfg.paths.ckpt_dir(STAGE))).step < STEPS
    assert launch(args, nproc=2, line_callback=lambda _line: None) == 0
    a = ckpt.read_latest(runs["fsdp"].paths.ckpt_dir(STAGE))
    b = ckpt.read_latest(cfg.paths.ckpt_dir(STAGE))
    assert a.name == b.name == ckpt.step_dir_name(STEPS)
    for key in ("model", "ema", "optimizer"):
        wa, wb = sharded.load_full(a, key), sharded.load_full(b, key)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), key


def test_2_rank_checkpoint_loads_exactly_on_1_rank(runs, monkeypatch):
    """Weights, EMA and AdamW moments of the 2-rank checkpoint, resharded onto 1 rank, are the saved ones."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from opensora_core.train.ema import EMA
    from opensora_core.train.distributed import DistEnv
    from opensora_core.train.engines import make_engine
    from opensora_core.models.stage import build_stage_model

    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    cfg = runs["fsdp"]
    step_dir = cfg.paths.ckpt_dir(STAGE) / ckpt.step_dir_name(10)
    engine = make_engine("fsdp", DistEnv(), cfg.train)
    try:
        model = engine.prepare(build_stage_model(cfg, STAGE))
        ema = EMA(model, cfg.train.ema_decay)
        optimizer = engine.make_optimizer(model, 1e-3)
        engine.load_state(step_dir, model, optimizer, ema)
        saved = {key: sharded.load_full(step_dir, key) for key in ("model", "ema", "optimizer")}
        weights = {k: v.full_tensor() for k, v in model.state_dict().items() if hasattr(v, "full_tensor")}
        assert weights and all(torch.equal(w, saved["model"][k]) for k, w in weights.items())
        shadow = {k: v.full_tensor() for k, v in ema.shadow.items() if hasattr(v, "full_tensor")}
        assert shadow.keys() == weights.keys() and all(torch.equal(v, saved["ema"][k]) for k, v in shadow.items())
        moments = get_state_dict(model, optimizer)[1]["state"]
        assert len(moments) == len(weights)
        for fqn, state in moments.items():
            for name in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(state[name].full_tensor(), saved["optimizer"][f"state.{fqn}.{name}"]), (fqn, name)
    finally:
        dist.destroy_process_group()


def _sampler_position(cfg) -> tuple[int, int, int]:
    meta = ckpt.load_meta(ckpt.read_latest(cfg.paths.ckpt_dir(STAGE)))
    return meta.step, meta.epoch, meta.sampler["position"]


def test_resharded_resume_continues_the_global_sample_order(runs):
    """From step 10 of the 2-rank run (epoch 1, 8 of 32 samples consumed: 10 steps x 4 - 32): on 4 ranks a step
    takes the next 8 samples, on 1 rank the next 2; a checkpoint written on 1 rank resumes on 2."""
    meta = ckpt.load_meta(runs["fsdp"].paths.ckpt_dir(STAGE) / ckpt.step_dir_name(10))
    assert (meta.step, meta.epoch, meta.sampler["position"]) == (10, 1, 8)
    on4 = _copy_resume_point(runs["fsdp"], runs["root"] / "on4", 10)
    train(runs["root"] / "on4", "fsdp", 4, **{f"stages.{STAGE}.max_steps": 12})
    assert _sampler_position(on4) == (12, 1, 8 + 2 * 8)
    on1 = _copy_resume_point(runs["fsdp"], runs["root"] / "on1", 10)
    train(runs["root"] / "on1", "fsdp", 1, **{f"stages.{STAGE}.max_steps": 14})
    assert _sampler_position(on1) == (14, 1, 8 + 4 * 2)
    assert ckpt.load_meta(ckpt.read_latest(on1.paths.ckpt_dir(STAGE))).world_size == 1
    train(runs["root"] / "on1", "fsdp", 2, **{f"stages.{STAGE}.max_steps": 18})  # 1 rank -> 2 ranks
    assert _sampler_position(on1) == (18, 1, 16 + 4 * 4)  # the epoch's 32 samples, each once
    assert sorted(losses(on1)) == list(range(11, 19))  # each step logged once, continuing from the checkpoint


def test_torch_engine_refuses_an_fsdp_checkpoint_with_a_clear_error(runs):
    step_dir = ckpt.read_latest(runs["fsdp"].paths.ckpt_dir(STAGE))
    with pytest.raises(ValueError, match="written by train.engine=fsdp"):
        sharded.check_engine(step_dir, "torch")
    assert sharded.check_engine(step_dir, "fsdp")
