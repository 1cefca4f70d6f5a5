"""Checkpoint atomicity, pruning, safe loading, and exact resume in one process."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import opensora_core.checkpoint as ckpt
from opensora_core.train.loop import train_stage

from tests.kit.tiny_training import STAGE, RandomLatents, tiny_config


def _save(root, step, keep_last=2):
    state = ckpt.TrainState(step=step, epoch=0)
    w = {"w": torch.full((2, 2), float(step))}
    return ckpt.save_checkpoint(root, state, w, w, {"state": {}, "param_groups": []}, keep_last=keep_last)


def test_kill_during_save_leaves_latest_on_previous_complete_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 1)
    real_save_file = ckpt.write.save_file

    def die_after_model(tensors, path):  # the EMA write "crashes" the process mid-checkpoint
        if path.endswith("ema.safetensors"):
            raise KeyboardInterrupt("killed during save")
        real_save_file(tensors, path)

    monkeypatch.setattr(ckpt.write, "save_file", die_after_model)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 2)
    latest = ckpt.read_latest(tmp_path)
    assert latest.name == "step_0000001"
    assert ckpt.load_model_state(latest)["w"][0, 0] == 1.0
    assert not (tmp_path / "step_0000002").exists()  # the half-written one never got its final name
    monkeypatch.setattr(ckpt.write, "save_file", real_save_file)
    _save(tmp_path, 2)  # the next save cleans the leftover temp dir
    assert ckpt.read_latest(tmp_path).name == "step_0000002"
    assert not list(tmp_path.glob(".tmp-*"))


def test_only_the_last_k_checkpoints_are_kept(tmp_path):
    for step in range(1, 5):
        _save(tmp_path, step, keep_last=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_0000003", "step_0000004"]


def test_rng_states_round_trip_through_weights_only_load(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    path = tmp_path / "rng.pt"
    torch.save(ckpt.rng_state(), path)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(torch.load(path, weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_resumed_run_matches_uninterrupted_run_bit_for_bit(tmp_path):
    full = tiny_config(tmp_path / "full")
    train_stage(full, STAGE, track=False, dataset=RandomLatents(6))
    # the same job stopped after its step-3 checkpoint, then restarted with the full step budget
    part = tiny_config(tmp_path / "part", **{f"stages.{STAGE}.max_steps": 3})
    train_stage(part, STAGE, track=False, dataset=RandomLatents(6))
    resumed = tiny_config(tmp_path / "part")
    summary = train_stage(resumed, STAGE, track=False, dataset=RandomLatents(6))
    assert summary["steps"] == 6 and summary["epoch"] == 1  # 6 steps = two 3-batch epochs (0, 1)
    a, b = ckpt.read_latest(full.paths.ckpt_dir(STAGE)), ckpt.read_latest(resumed.paths.ckpt_dir(STAGE))
    for load in (ckpt.load_model_state, ckpt.load_ema_state):
        wa, wb = load(a), load(b)
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    rows = [line for line in (resumed.paths.ckpt_dir(STAGE) / "train_log.jsonl").read_text().splitlines()]
    assert len(rows) == 6  # one row per step, no duplicates from the restart
