"""The caption mask: padding no sample uses is trimmed, the rest masked once per forward, same function."""

import pytest
import torch

from opensora_core.models.attention import CaptionMask, CrossAttention, trim_caption

from models_testkit import inputs
from reference_stdit import reference_stdit_forward


def test_trim_drops_columns_no_sample_uses_and_keeps_the_mask_of_the_rest():
    y = torch.randn(2, 1, 6, 3)
    y_trim, mask = trim_caption(y, torch.tensor([[1, 1, 0, 0, 0, 0], [1, 0, 1, 1, 0, 0]]))
    assert y_trim.shape == (2, 1, 4, 3) and torch.equal(y_trim, y[:, :, :4])
    assert mask.valid[:, 0, 0].tolist() == [[True, True, False, False], [True, False, True, True]]
    assert mask.keep is None


def test_no_mask_is_left_when_the_trimmed_caption_has_no_padding():
    y = torch.randn(2, 1, 6, 3)
    y_trim, mask = trim_caption(y, torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0]]))
    assert y_trim.shape == (2, 1, 3, 3) and mask is None
    assert trim_caption(y, None) == (y, None)


def test_a_sample_without_valid_tokens_gets_zero_cross_attention_output():
    mask = CaptionMask.from_mask(torch.tensor([[0, 0, 0], [1, 1, 0]]))
    assert mask.keep[:, 0, 0].tolist() == [0.0, 1.0]
    attn = CrossAttention(8, 2)
    with torch.no_grad():
        attn.proj.bias.zero_()
        out = attn(torch.randn(2, 5, 8), torch.randn(2, 3, 8), mask)
    assert torch.isfinite(out).all() and out[0].abs().max() == 0 and out[1].abs().max() > 0


@pytest.mark.parametrize("mask", [[[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]], [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0]]],
                         ids=["trimmed and masked", "trimmed to no mask"])
def test_trimmed_captions_compute_open_soras_function(tiny_model, mask):
    model = tiny_model()
    x, t, y = inputs()
    mask = torch.tensor(mask)
    with torch.no_grad():
        ours = model.double()(x, t, y, mask)
    cfg = dict(patch_size=(1, 2, 2), hidden_size=32, num_heads=4, depth=2, space_scale=1.0, time_scale=1.0,
               out_channels=8)
    torch.testing.assert_close(ours, reference_stdit_forward(model.state_dict(), cfg, x, t, y, mask), rtol=1e-5, atol=1e-5)
