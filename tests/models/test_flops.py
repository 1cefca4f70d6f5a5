"""flops_per_sample: the FLOP count MFU logging uses (Open-Sora 1.0's STDiT-XL/2 at 16x256: 17.1 TFLOP)."""

import pytest
import torch

from opensora_core.config import ModelConfig
from opensora_core.models import build_model, flops_per_sample
from opensora_core.models.flops import flop_terms

XL2 = ModelConfig(name="STDiT-XL/2", hidden_size=1152, depth=28, num_heads=16, patch_size=(1, 2, 2))


def test_stdit_xl2_at_16x256_costs_17_1_tflop_per_training_sample():
    # 16 frames x 256 px -> latent 16x32x32 -> 16x16x16 tokens; T5-XXL captions of 120 tokens
    assert flops_per_sample(XL2, frames=16, size=256, caption_tokens=120) / 1e12 == pytest.approx(17.1, rel=0.05)


def test_training_counts_forward_and_backward_as_three_forwards():
    assert flops_per_sample(XL2, 16, 256, 120) == 3 * flops_per_sample(XL2, 16, 256, 120, training=False)


def test_the_model_reports_the_same_count_as_its_config():
    with torch.device("meta"):
        model = build_model("STDiT-XL/2")
    assert model.flops_per_sample((16, 32, 32)) == flops_per_sample(XL2, 16, 256, 120)
    assert flops_per_sample(model, 16, (256, 256), 120) == flops_per_sample(XL2, 16, 256, 120)


def test_linear_terms_are_six_times_params_times_tokens_they_see():
    with torch.device("meta"):
        model = build_model("STDiT-XL/2")
    blocks = {n: p.numel() for n, p in model.named_parameters() if n.startswith("blocks.") and n.endswith("weight")}
    video = sum(v for n, v in blocks.items() if ".kv_linear." not in n and "scale_shift" not in n)
    caption = sum(v for n, v in blocks.items() if ".kv_linear." in n)
    terms = flop_terms(1152, 28, (16, 16, 16), 120)
    assert 3 * terms["block_linears"] == 6 * video * 16 * 16 * 16
    assert 3 * terms["caption_kv"] == 6 * caption * 120


def test_full_attention_dit_costs_more_than_stdit_on_long_videos():
    dit = XL2.model_copy(update={"name": "DiT-XL/2"})
    assert flops_per_sample(dit, 64, 512, 120) > 2 * flops_per_sample(XL2, 64, 512, 120)
