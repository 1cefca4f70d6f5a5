"""Checkpoints you can trust: every file's size and checksum is recorded, whatever loads a checkpoint verifies it,
a damaged `latest` falls back to the newest complete checkpoint, and a full disk never costs the last good one."""

from __future__ import annotations

import logging
import os
import resource
import signal
import subprocess

import pytest
import torch
from typer.testing import CliRunner

import opensora_core.checkpoint as ckpt
from opensora_core.cli import app
from opensora_core.checkpoint.integrity import verify_checkpoint
from opensora_core.train.loop import train_stage

from tests.faults.faults_support import (PARAMS, REPO, STAGE, RandomLatents, flip_last_byte, tiny_config,
                                         tiny_overrides, tree, truncate_to_half, write_latent_cache)
from tests.kit import environment, opensora_command


def _save(root, step, keep_last=5):
    w = {"w": torch.full((64, 64), float(step))}
    state = ckpt.TrainState(step=step, epoch=0)
    return ckpt.save_checkpoint(root, state, w, w, {"state": {}, "param_groups": [], "step": torch.tensor(step)},
                                keep_last=keep_last)


def _write_garbage(path):
    path.write_bytes(b"\x00\xff{not json")


DAMAGE = {  # what can be wrong with the latest checkpoint -> the words the warning must contain
    "truncated": (lambda d: truncate_to_half(d / "model.safetensors"), "model.safetensors truncated"),
    "missing file": (lambda d: (d / "ema.safetensors").unlink(), "ema.safetensors missing"),
    "checksum": (lambda d: flip_last_byte(d / "optimizer.pt"), "optimizer.pt checksum mismatch"),
    "unreadable meta": (lambda d: _write_garbage(d / "meta.json"), "meta.json unreadable"),
    "missing meta": (lambda d: (d / "meta.json").unlink(), "meta.json missing"),
}


def test_meta_records_size_and_checksum_of_every_file_including_subfolders(tmp_path, monkeypatch):
    real_save_file = ckpt.write.save_file

    def save_with_engine_folder(tensors, path):  # an engine (e.g. DCP) adding its own folder to the step dir
        real_save_file(tensors, path)
        shard = os.path.join(os.path.dirname(path), "dcp", "__0_0.distcp")
        os.makedirs(os.path.dirname(shard), exist_ok=True)
        with open(shard, "wb") as f:
            f.write(os.urandom(4096))

    monkeypatch.setattr(ckpt.write, "save_file", save_with_engine_folder)
    d = _save(tmp_path, 1)
    files = ckpt.load_meta(d).files
    assert set(files) == {"model.safetensors", "ema.safetensors", "optimizer.pt", "rng_rank0.pt", "dcp/__0_0.distcp"}
    assert files["dcp/__0_0.distcp"]["size"] == 4096 and len(files["dcp/__0_0.distcp"]["sha256"]) == 64
    assert verify_checkpoint(d) == []
    flip_last_byte(d / "dcp" / "__0_0.distcp")
    assert verify_checkpoint(d) == ["dcp/__0_0.distcp checksum mismatch (sha256)"]


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_damaged_latest_falls_back_to_previous_complete_checkpoint_with_a_warning(tmp_path, caplog, damage):
    _save(tmp_path, 1)
    latest = _save(tmp_path, 2)
    spoil, words = DAMAGE[damage]
    spoil(latest)
    with caplog.at_level(logging.WARNING, logger="opensora_core.checkpoint.read"):
        assert ckpt.resume_point(tmp_path) == tmp_path / "step_0000001"
    warning = caplog.text
    assert words in warning and "step_0000002" in warning and "using step_0000001 instead" in warning
    assert (tmp_path / "step_0000002").is_dir()  # kept: the evidence, and a rerun of step 2 replaces it


def test_latest_naming_a_missing_directory_falls_back(tmp_path, caplog):
    _save(tmp_path, 1)
    (tmp_path / "latest").write_text("step_0000009\n")
    with caplog.at_level(logging.WARNING):
        assert ckpt.resume_point(tmp_path).name == "step_0000001"
    assert "step_0000009 does not exist" in caplog.text


def test_no_complete_checkpoint_stops_with_a_clear_message_and_deletes_nothing(tmp_path):
    for d in [_save(tmp_path, 1), _save(tmp_path, 2)]:
        truncate_to_half(d / "model.safetensors")
    before = tree(tmp_path)
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.resume_point(tmp_path)
    message = str(err.value)
    assert "no complete checkpoint" in message and "Nothing was deleted" in message
    assert "step_0000002: model.safetensors truncated" in message and "step_0000001: model.safetensors truncated" in message
    assert tree(tmp_path) == before


def test_training_with_no_complete_checkpoint_exits_4_naming_what_is_wrong_and_deletes_nothing(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    root = cfg.paths.ckpt_dir(STAGE)
    for d in [_save(root, 3), _save(root, 6)]:
        (d / "meta.json").write_text("{")
    before = tree(tmp_path)
    result = CliRunner().invoke(app, ["train", "--stage", STAGE, "--no-track", "--params", str(PARAMS),
                                      *tiny_overrides(tmp_path / "run")])
    assert result.exit_code == 4, result.output
    assert "CheckpointError: no complete checkpoint" in result.output and "meta.json unreadable" in result.output
    assert tree(tmp_path) == before


def test_keep_last_never_deletes_the_newest_complete_checkpoint(tmp_path):
    _save(tmp_path, 1)
    truncate_to_half(_save(tmp_path, 2) / "model.safetensors")  # newest, and `latest`, but damaged
    ckpt.prune(tmp_path, keep_last=1)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_0000001", "step_0000002"]
    _save(tmp_path, 3, keep_last=1)  # a complete newer one: now the older ones may go
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_0000003"]


def test_next_stage_init_verifies_and_falls_back(tmp_path, caplog):
    _save(tmp_path, 1)
    flip_last_byte(_save(tmp_path, 2) / "ema.safetensors")
    with caplog.at_level(logging.WARNING):
        weights = ckpt.load_ema_weights(tmp_path)  # what init_weights calls with the previous stage's directory
    assert float(weights["w"][0, 0]) == 1.0
    assert "ema.safetensors checksum mismatch" in caplog.text


def test_weights_only_readers_hash_only_the_weights_a_resume_hashes_everything(tmp_path):
    _save(tmp_path, 1)
    flip_last_byte(_save(tmp_path, 2) / "optimizer.pt")
    assert float(ckpt.load_ema_weights(tmp_path)["w"][0, 0]) == 2.0  # its weights are intact: init may use them
    assert ckpt.resume_point(tmp_path).name == "step_0000001"  # a resume needs the optimizer too


def test_sample_refuses_a_damaged_checkpoint_naming_the_file_and_writes_nothing(tmp_path):
    d = _save(tmp_path / "ckpt", 1)
    truncate_to_half(d / "model.safetensors")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square moving left\n")
    out = tmp_path / "samples"
    result = CliRunner().invoke(app, ["sample", "--checkpoint", str(d), "--prompts", str(prompts), "--out", str(out),
                                      "--no-track"])
    assert result.exit_code == 2, result.output
    assert "model.safetensors truncated" in result.output and "Traceback" not in result.output
    assert not out.exists()


def _final_weights(cfg):
    d = ckpt.read_latest(cfg.paths.ckpt_dir(STAGE))
    return d.name, ckpt.load_model_state(d), ckpt.load_ema_state(d)


@pytest.mark.slow
def test_truncated_latest_resumes_from_previous_and_ends_bit_identical(tmp_path, caplog):
    data = RandomLatents(6)
    full = tiny_config(tmp_path / "full", **{f"stages.{STAGE}.max_steps": 9})
    train_stage(full, STAGE, track=False, dataset=data)

    part = tiny_config(tmp_path / "cut", **{f"stages.{STAGE}.max_steps": 6})  # checkpoints at 3 and 6
    train_stage(part, STAGE, track=False, dataset=data)
    truncate_to_half(part.paths.ckpt_dir(STAGE) / "step_0000006" / "model.safetensors")
    resumed = tiny_config(tmp_path / "cut", **{f"stages.{STAGE}.max_steps": 9})
    with caplog.at_level(logging.WARNING):
        train_stage(resumed, STAGE, track=False, dataset=data)
    assert "step_0000006: model.safetensors truncated" in caplog.text and "using step_0000003 instead" in caplog.text

    (name_a, model_a, ema_a), (name_b, model_b, ema_b) = _final_weights(full), _final_weights(resumed)
    assert name_a == name_b == "step_0000009"
    for a, b in ((model_a, model_b), (ema_a, ema_b)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _limit_file_size(limit: int):
    def preexec():  # in the child only: writes past `limit` bytes fail with EFBIG ("File too large")
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer instead of failing the write
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def _train_cli(run_dir, max_steps, preexec=None):
    cmd = opensora_command("train", "--stage", STAGE, "--no-track", "--params", str(PARAMS),
                           *tiny_overrides(run_dir, **{f"stages.{STAGE}.max_steps": max_steps}))
    env = environment({"PYTHONDONTWRITEBYTECODE": "1"})
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, preexec_fn=preexec)


@pytest.mark.slow
def test_disk_full_while_writing_checkpoint_keeps_latest_and_the_rerun_resumes(tmp_path):
    cfg = tiny_config(tmp_path / "run", **{f"stages.{STAGE}.max_steps": 3})
    write_latent_cache(cfg.paths.cache_dir(STAGE), RandomLatents(6))
    train_stage(cfg, STAGE, track=False)  # step_0000003, complete
    root = cfg.paths.ckpt_dir(STAGE)
    limit = (root / "step_0000003" / "model.safetensors").stat().st_size // 2

    full = _train_cli(tmp_path / "run", 6, _limit_file_size(limit))
    output = full.stdout + full.stderr
    assert full.returncode == 4, output[-3000:]
    assert "disk full while writing checkpoint step_0000006" in output and "File too large" in output
    assert "Traceback" not in output
    assert ckpt.read_latest(root).name == "step_0000003" and verify_checkpoint(root / "step_0000003") == []
    assert not (root / "step_0000006").exists() and not list(root.glob(".tmp-*"))  # the half-written one is gone

    rerun = _train_cli(tmp_path / "run", 6)  # space freed
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    assert "resume:step_0000003" in rerun.stdout + rerun.stderr
    assert ckpt.read_latest(root).name == "step_0000006" and verify_checkpoint(root / "step_0000006") == []
