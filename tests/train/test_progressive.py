"""Progressive stages: a stage starts from the previous stage's EMA weights with recomputed position embeddings."""

from __future__ import annotations

import pytest
import torch

from opensora_core.models.layers import spatial_pos_embed
from opensora_core.checkpoint import load_ema_weights
from opensora_core.models.stage import build_stage_model
from opensora_core.train.init import init_source, init_weights
from opensora_core.train.loop import train_stage

from tests.kit.tiny_training import STAGE, RandomLatents, tiny_config


def test_next_stage_starts_from_previous_ema_with_recomputed_position_embeddings(tmp_path):
    cfg = tiny_config(tmp_path, **{f"stages.{STAGE}.max_steps": 2, "train.ema_decay": 0.5})
    train_stage(cfg, STAGE, track=False, dataset=RandomLatents(4))
    assert init_source(cfg, "finetune_512") == f"stage:{STAGE}"
    ema = load_ema_weights(cfg.paths.ckpt_dir(STAGE))

    model = build_stage_model(cfg, "finetune_512")  # latent 2x8x8 instead of 2x4x4, space_scale 1.0
    assert init_weights(model, cfg, "finetune_512").startswith(STAGE)
    state = model.state_dict()
    carried = [k for k in ema if not k.startswith("pos_embed")]
    assert all(torch.equal(state[k], ema[k]) for k in carried)
    assert state["pos_embed"].shape[1] == 16 and ema["pos_embed"].shape[1] == 4  # 4x4 vs 2x2 token grid
    expected = spatial_pos_embed(32, (4, 4), scale=cfg.stage("finetune_512").space_scale)
    torch.testing.assert_close(state["pos_embed"], expected.to(state["pos_embed"].dtype))


def test_stage_init_from_scratch_override_ignores_previous_stage(tmp_path):
    cfg = tiny_config(tmp_path, **{"stages.finetune_512.init_from": "scratch"})
    assert init_source(cfg, "finetune_512") == "scratch"
    assert init_weights(build_stage_model(cfg, "finetune_512"), cfg, "finetune_512") == "scratch"


def test_next_stage_without_previous_checkpoint_fails_clearly(tmp_path):
    cfg = tiny_config(tmp_path)
    with pytest.raises(FileNotFoundError, match="train that stage first"):
        init_weights(build_stage_model(cfg, "finetune_512"), cfg, "finetune_512")
