"""STDiT / DiT: checkpoint layout, the Open-Sora 1.0 function, masks, caption dropout, options."""

from pathlib import Path

import pytest
import torch

from opensora_core.models import DiT, STDiT, build_model
from opensora_core.models import layers

from models_testkit import inputs
from reference_stdit import ref_1d_pos, ref_2d_pos, reference_stdit_forward

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"


def read_layout(name):
    rows = (line.split("\t") for line in (REFERENCE / name).read_text().splitlines() if line.strip())
    return {k: tuple(int(v) for v in shape.strip("()").split(",") if v.strip()) for k, shape in rows}


@pytest.fixture(scope="module")
def xl2_models():
    """STDiT-XL/2 and DiT-XL/2 on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        return build_model("STDiT-XL/2"), build_model("DiT-XL/2")


def test_stdit_xl2_state_dict_matches_released_checkpoint_layout(xl2_models):
    model = xl2_models[0]
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == read_layout("opensora-v1.0-stdit-xl2-state-dict.tsv")
    assert isinstance(model, STDiT)


def test_dit_xl2_state_dict_is_stdit_without_temporal_attention(xl2_models):
    model = xl2_models[1]
    expected = {k: v for k, v in read_layout("opensora-v1.0-stdit-xl2-state-dict.tsv").items() if ".attn_temp." not in k}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert isinstance(model, DiT)


def test_position_embeddings_match_open_sora_sincos_tables():
    torch.testing.assert_close(layers.spatial_pos_embed(32, (4, 6), 0.5)[0], ref_2d_pos(32, (4, 6), 0.5))
    torch.testing.assert_close(layers.temporal_pos_embed(32, 5, 2 / 3)[0], ref_1d_pos(32, 5, 2 / 3))


@pytest.mark.parametrize("with_mask", [False, True])
def test_stdit_computes_open_sora_function(tiny_model, with_mask):
    model = tiny_model(space_scale=0.5, time_scale=2 / 3)
    x, t, y = inputs()
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 1, 1]]) if with_mask else None
    with torch.no_grad():  # float64: compare functions, not float32 rounding of large random weights
        ours = model.double()(x, t, y, mask)
    cfg = dict(patch_size=(1, 2, 2), hidden_size=32, num_heads=4, depth=2, space_scale=0.5, time_scale=2 / 3,
               out_channels=8)
    expected = reference_stdit_forward(model.state_dict(), cfg, x, t, y, mask)
    assert ours.shape == (2, 8, 3, 4, 6)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["STDiT-tiny", "DiT-tiny"])
@pytest.mark.parametrize("n_tokens", [6, 5, 1])
def test_forward_shapes_with_and_without_mask_and_odd_caption_lengths(tiny_model, name, n_tokens):
    model = tiny_model(name)
    x, t, y = inputs(n=n_tokens)
    mask = torch.ones(2, n_tokens, dtype=torch.long)
    mask[0, n_tokens // 2 + 1:] = 0
    with torch.no_grad():
        for m in (None, mask):
            out = model(x, t, y, m)
            assert out.shape == (2, 8, 3, 4, 6) and out.dtype == torch.float32
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["STDiT-tiny", "DiT-tiny"])
def test_masked_out_caption_tokens_do_not_influence_output(tiny_model, name):
    model = tiny_model(name)
    x, t, y = inputs()
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    y_changed = y.clone()
    y_changed[0, 0, 2:] = 100 * torch.randn(4, 16)
    y_changed[1, 0, 5] = -50.0
    with torch.no_grad():
        a, b = model(x, t, y, mask), model(x, t, y_changed, mask)
        unmasked = model(x, t, y_changed)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, unmasked, atol=1e-3)


def test_a_caption_with_no_valid_token_gives_finite_output(tiny_model):
    model = tiny_model()
    x, t, y = inputs()
    with torch.no_grad():
        out = model(x, t, y, torch.tensor([[0] * 6, [1] * 6]))
    assert torch.isfinite(out).all()


def test_one_mask_serves_a_doubled_guidance_batch(tiny_model):
    model = tiny_model().double()
    x, t, y = inputs()
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])
    with torch.no_grad():
        doubled = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y]), mask)
        single = model(x, t, y, mask)
    torch.testing.assert_close(doubled[:2], single)
    torch.testing.assert_close(doubled[2:], single)


def test_single_frame_stdit_behaves_as_image_model(tiny_model):
    """T=1: temporal attention sees one frame; the model is a per-image transformer (reference function)."""
    model = tiny_model()
    x, t, y = inputs(t=1)
    with torch.no_grad():
        out = model.double()(x, t, y)
    cfg = dict(patch_size=(1, 2, 2), hidden_size=32, num_heads=4, depth=2, space_scale=1.0, time_scale=1.0,
               out_channels=8)
    assert out.shape == (2, 8, 1, 4, 6)
    torch.testing.assert_close(out, reference_stdit_forward(model.state_dict(), cfg, x, t, y), rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_gives_same_gradients(tiny_model):
    x, t, y = inputs()
    grads = []
    for ckpt in (False, True):
        model = tiny_model(class_dropout_prob=0.0).train()
        model.enable_grad_checkpointing(ckpt)
        model(x, t, y).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_caption_dropout_uses_the_learned_null_caption(tiny_model):
    model = tiny_model(class_dropout_prob=1.0)
    x, t, y = inputs()
    null = model.y_embedder.y_embedding[None, None].expand(2, 1, 6, 16)
    with torch.no_grad():
        expected = model.eval()(x, t, null)
        dropped = model.train()(x, t, y)
        forced = model.eval()(x, t, y, force_drop_ids=torch.tensor([1, 0]))
        kept = model(x, t, y)
    torch.testing.assert_close(dropped, expected)
    torch.testing.assert_close(forced[0], expected[0])
    torch.testing.assert_close(forced[1], kept[1])


def test_position_embeddings_are_built_once_per_size(tiny_model, monkeypatch):
    model = tiny_model()
    calls = []
    real = layers.spatial_pos_embed
    monkeypatch.setattr(layers, "spatial_pos_embed", lambda *a, **k: calls.append(a) or real(*a, **k))
    layers.position_tables.cache_clear()
    with torch.no_grad():
        for _ in range(3):
            model(*inputs())  # the built size: buffers
        assert calls == []
        for _ in range(3):
            model(*inputs(t=2, h=8, w=8))  # another size: computed once, then cached
    assert len(calls) == 1


def test_set_input_size_rebuilds_position_buffers(tiny_model):
    model = tiny_model()
    model.set_input_size((8, 16, 16), space_scale=0.5, time_scale=2 / 3)
    torch.testing.assert_close(model.pos_embed[0], ref_2d_pos(32, (8, 8), 0.5))
    torch.testing.assert_close(model.pos_embed_temporal[0], ref_1d_pos(32, 8, 2 / 3))
    with torch.no_grad():
        assert model(*inputs(t=8, h=16, w=16)).shape == (2, 8, 8, 16, 16)


def test_freeze_options_leave_the_right_parameters_trainable(tiny_model):
    model = tiny_model(freeze="not_temporal")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".attn_temp." in n for n in trainable)
    model = tiny_model(freeze="text")
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(".cross_attn." in n for n in frozen)
    with pytest.raises(ValueError):
        tiny_model(freeze="everything")
    with pytest.raises(ValueError, match="DiT"):  # it has no temporal attention to leave trainable
        tiny_model("DiT-tiny", freeze="not_temporal")


def test_flops_estimate_counts_linear_layers_and_favours_stdit_for_long_videos(xl2_models):
    stdit, dit = xl2_models
    block_params = sum(p.numel() for n, p in stdit.named_parameters() if n.startswith("blocks."))
    tokens = stdit.num_tokens()
    assert tokens == 16 * 16 * 16
    # linear FLOPs ~ 2 * params * tokens per forward; attention adds a little on top
    assert 2 * block_params * tokens * 0.9 < stdit.flops_per_sample(training=False) < 2 * block_params * tokens * 1.5
    assert stdit.flops_per_sample() == 3 * stdit.flops_per_sample(training=False)
    big = (64, 64, 64)
    assert dit.flops_per_sample(big) > 2 * stdit.flops_per_sample(big)


def test_compile_flag_keeps_checkpoint_keys(tiny_model):
    plain, compiled = tiny_model(randomized=False), tiny_model(randomized=False, enable_compile=True)
    assert list(compiled.state_dict()) == list(plain.state_dict())


@pytest.mark.parametrize("temporal_pos, frame_order_matters", [("first_block", False), ("input", True)])
def test_temporal_pos_input_gives_every_block_the_frame_index(tiny_model, temporal_pos, frame_order_matters):
    # With the temporal attentions switched off, Open-Sora 1.0's placement (block 0's temporal-attention input
    # only) leaves the model blind to frame order; "input" adds the embedding to the tokens themselves.
    model = tiny_model(temporal_pos=temporal_pos)
    with torch.no_grad():
        for block in model.blocks:
            block.attn_temp.proj.weight.zero_()
            block.attn_temp.proj.bias.zero_()
        x, t, y = inputs()
        forward, reversed_back = model(x, t, y), model(x.flip(2), t, y).flip(2)
    assert model.temporal_pos == temporal_pos
    assert torch.allclose(forward, reversed_back, atol=1e-5) != frame_order_matters


def test_stdit_defaults_to_open_sora_placement_and_dit_refuses_it(tiny_model):
    assert tiny_model().temporal_pos == "first_block" and tiny_model("DiT-tiny").temporal_pos == "input"
    with pytest.raises(ValueError, match="temporal_pos"):
        tiny_model("DiT-tiny", temporal_pos="first_block")
