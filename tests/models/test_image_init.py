"""Image init (PixArt-alpha -> STDiT) and loading released Open-Sora 1.0 checkpoints."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models_testkit import TINY, inputs, randomize
from opensora_core.models import STDiT, build_model, load_opensora_checkpoint, load_pixart_checkpoint
from opensora_core.models.image_init import load_pretrained, pixart_to_stdit

REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"


def fake_pixart_state(seed=3):
    """Random weights in PixArt-alpha's layout for the tiny size: 2D patch conv, a 32x32-grid pos_embed
    (wrong for our inputs on purpose: it must be dropped), no temporal attention."""
    image = randomize(build_model("STDiT-tiny", **TINY, input_size=(1, 4, 6)), seed)
    state = {k: v.clone() for k, v in image.state_dict().items() if ".attn_temp." not in k and k != "pos_embed_temporal"}
    state["x_embedder.proj.weight"] = state["x_embedder.proj.weight"].squeeze(2)
    state["pos_embed"] = torch.randn(1, 1024, TINY["hidden_size"])
    return state


@pytest.fixture
def pixart_pth(tmp_path):
    path = tmp_path / "PixArt-tiny.pth"
    torch.save({"state_dict": fake_pixart_state()}, path)
    return path


def test_video_output_equals_image_model_frame_by_frame_right_after_image_init(pixart_pth):
    video_model = build_model("STDiT-tiny", **TINY, input_size=(4, 4, 6))
    image_model = build_model("STDiT-tiny", **TINY, input_size=(1, 4, 6))
    load_pixart_checkpoint(video_model, pixart_pth)
    load_pixart_checkpoint(image_model, pixart_pth)
    video_model, image_model = video_model.double().eval(), image_model.double().eval()
    x, t, y = inputs(t=4)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        video = video_model(x, t, y, mask)
        for f in range(4):
            frame = image_model(x[:, :, f:f + 1], t, y, mask)
            torch.testing.assert_close(video[:, :, f:f + 1], frame, rtol=1e-9, atol=1e-9)


def test_image_init_copies_pixart_weights_and_starts_temporal_attention_at_zero(pixart_pth):
    pixart = fake_pixart_state()
    model = build_model("STDiT-tiny", **TINY, input_size=(4, 4, 6))
    fresh = load_pixart_checkpoint(model, pixart_pth)
    state = model.state_dict()
    assert all(".attn_temp." in n or n.startswith("pos_embed") for n in fresh)
    torch.testing.assert_close(state["x_embedder.proj.weight"][:, :, 0], pixart["x_embedder.proj.weight"])
    torch.testing.assert_close(state["blocks.1.mlp.fc2.weight"], pixart["blocks.1.mlp.fc2.weight"])
    assert state["pos_embed"].shape == (1, 6, TINY["hidden_size"])  # recomputed for 4x6 latents, not PixArt's
    for i in range(TINY["depth"]):
        assert not state[f"blocks.{i}.attn_temp.proj.weight"].any() and not state[f"blocks.{i}.attn_temp.proj.bias"].any()
        assert state[f"blocks.{i}.attn_temp.qkv.weight"].abs().sum() > 0


def test_image_init_reads_safetensors_too(tmp_path):
    path = tmp_path / "pixart.safetensors"
    save_file({k: v.contiguous() for k, v in fake_pixart_state().items()}, str(path))
    model = build_model("STDiT-tiny", **TINY, input_size=(2, 4, 6))
    assert load_pretrained(model, path) == "pixart"


def test_released_pixart_xl2_layout_converts_to_stdit_xl2():
    rows = [line.split("\t") for line in (REFERENCE / "pixart-alpha-xl2-state-dict.tsv").read_text().splitlines()]
    with torch.device("meta"):
        pixart = {k: torch.empty(eval(shape)) for k, shape in rows}
        model = build_model("STDiT-XL/2")
        full = pixart_to_stdit(pixart, model)
    assert full.keys() == model.state_dict().keys()
    assert full["x_embedder.proj.weight"].shape == (1152, 4, 1, 2, 2)
    assert sum(".attn_temp." in k for k in full.keys() - pixart.keys()) == 112


def test_missing_checkpoint_says_what_to_download_and_where(tmp_path):
    model = build_model("STDiT-tiny", **TINY)
    target = tmp_path / "pretrained_models" / "PixArt-XL-2-512x512.pth"
    with pytest.raises(FileNotFoundError, match="PixArt-XL-2-512x512.pth.*" + str(target.name)):
        load_pixart_checkpoint(model, target)
    with pytest.raises(FileNotFoundError, match="Open-Sora"):
        load_opensora_checkpoint(model, tmp_path / "OpenSora-v1-16x256x256.pth")


@pytest.mark.parametrize("under_ema", [False, True])
def test_released_opensora_checkpoint_loads_strictly_without_position_buffers(tmp_path, under_ema):
    source = randomize(build_model("STDiT-tiny", **TINY, input_size=(4, 4, 6)), 5)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    state["pos_embed"] = torch.randn(1, 99, TINY["hidden_size"])  # stale buffers from another size
    state["pos_embed_temporal"] = torch.randn(1, 7, TINY["hidden_size"])
    path = tmp_path / "ckpt.pth"
    torch.save({"ema": state} if under_ema else state, path)
    model = build_model("STDiT-tiny", **TINY, input_size=(2, 8, 8), space_scale=0.5)
    load_opensora_checkpoint(model, path)
    assert isinstance(model, STDiT)
    torch.testing.assert_close(model.blocks[0].attn_temp.qkv.weight, source.blocks[0].attn_temp.qkv.weight)
    assert model.pos_embed.shape == (1, 16, TINY["hidden_size"])
    del state["blocks.0.mlp.fc1.bias"]
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="blocks.0.mlp.fc1.bias"):
        load_opensora_checkpoint(model, path)
