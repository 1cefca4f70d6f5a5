"""How flow tasks choose their command: DVC records a run only when params.yaml describes it exactly."""

from __future__ import annotations

import sys

import pytest

from flows.runner import dvc_can_record, select_stages, stage_command, task_name
from opensora_core import pipeline
from opensora_core.config import load_config


def test_task_names_read_as_the_recipe():
    cfg = load_config()
    assert [task_name(s) for s in pipeline.stage_ids(cfg)] == [
        "prepare_data", "caption", "train_vae", "cache-pretrain_256", "pretrain_256", "cache-finetune_512",
        "finetune_512", "cache-finetune_64f", "finetune_64f", "evaluate"]


def test_stage_selection_accepts_task_names_ids_and_cache_and_keeps_pipeline_order():
    cfg = load_config()
    assert select_stages(cfg, ["evaluate", "pretrain_256", "cache"]) == [
        "cache@pretrain_256", "train@pretrain_256", "cache@finetune_512", "cache@finetune_64f", "evaluate"]
    assert select_stages(cfg, ["train@finetune_512", "prepare_data"]) == ["prepare", "train@finetune_512"]
    with pytest.raises(ValueError, match="unknown stage"):
        select_stages(cfg, ["pretrain_1024"])


def test_dvc_records_the_run_only_when_the_config_is_exactly_params_yaml():
    plain = pipeline.Params()
    assert dvc_can_record(plain, plain.load())
    same = pipeline.Params(overrides=("train.lr=1e-3",))  # the tiny preset's own value: still params.yaml's config
    assert dvc_can_record(same, same.load())
    for overrides in (("train.lr=1e-4",), ("run_dir=/tmp/elsewhere",)):
        p = pipeline.Params(overrides=overrides)
        assert not dvc_can_record(p, p.load())


def test_commands_go_through_dvc_or_the_cli():
    p = pipeline.Params(overrides=("train.lr=1e-4",))
    assert stage_command("train@pretrain_256", p, True, False)[1:] == ["-m", "opensora_core.lifetime", "dvc", "repro",
                                                                      "--single-item", "train@pretrain_256"]
    cli = stage_command("train@pretrain_256", p, False, True)
    assert cli[0] == sys.executable and cli[3:] == ["pipeline", "stage", "train@pretrain_256", "--force", "train.lr=1e-4"]
