"""T5Encoder and the tiny preset's frozen random T5."""

from __future__ import annotations

import json

import pytest
import torch

from opensora_core.encoders import T5Encoder, create_tiny_text_encoder
from opensora_core.encoders.tiny_text import build_tokenizer


def test_encode_returns_token_embeddings_and_mask_padded_to_max_length(tiny_t5_dir):
    enc = T5Encoder.from_pretrained(tiny_t5_dir, model_max_length=16)
    out = enc.encode(["a red circle", "a small blue square moves to the left"])
    assert out["y"].shape == (2, 1, 16, 64) and out["y"].dtype == torch.float32
    assert out["mask"].shape == (2, 16) and out["mask"].dtype == torch.long
    # 3 words + </s>, 8 words + </s>; the rest is padding
    assert out["mask"].sum(1).tolist() == [4, 9]
    assert out["mask"][0, :4].all() and not out["mask"][0, 4:].any()


def test_long_captions_are_truncated_to_max_length_keeping_eos(tiny_t5_dir):
    enc = T5Encoder.from_pretrained(tiny_t5_dir, model_max_length=16)
    tokens = enc.tokenize(["red " * 40])
    assert tokens["input_ids"].shape == (1, 16) and tokens["attention_mask"].all()
    assert tokens["input_ids"][0, -1].item() == enc.tokenizer.eos_token_id


def test_reload_after_save_pretrained_gives_identical_embeddings(tiny_t5_dir, tmp_path):
    enc = T5Encoder.from_pretrained(tiny_t5_dir, model_max_length=16)
    enc.model.save_pretrained(tmp_path / "copy")
    enc.tokenizer.save_pretrained(tmp_path / "copy")
    again = T5Encoder.from_pretrained(tmp_path / "copy", model_max_length=16)
    caps = ["a red circle moves left on a blue background", "two green triangles", ""]
    a, b = enc.encode(caps), again.encode(caps)
    assert torch.equal(a["y"], b["y"]) and torch.equal(a["mask"], b["mask"])


def test_tiny_t5_is_deterministic_from_its_seed(tmp_path):
    a = create_tiny_text_encoder(tmp_path / "a", hidden_size=64, model_max_length=48, seed=7)
    b = create_tiny_text_encoder(tmp_path / "b", hidden_size=64, model_max_length=48, seed=7)
    c = create_tiny_text_encoder(tmp_path / "c", hidden_size=64, model_max_length=48, seed=8)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    cfg = json.loads((a / "config.json").read_text())
    assert (cfg["d_model"], cfg["num_layers"], cfg["num_heads"]) == (64, 2, 2)


def test_captions_differing_in_one_colour_word_get_clearly_different_embeddings(tiny_t5_dir):
    enc = T5Encoder.from_pretrained(tiny_t5_dir, model_max_length=16)
    y = enc.encode(["a red circle moves left on a gray background", "a blue circle moves left on a gray background",
                    "a red circle moves left on a gray background"])["y"][:, 0]  # [3, N, C]
    # the same caption encodes identically; one changed word moves the whole sequence (attention mixes it in)
    assert torch.equal(y[0], y[2])
    word = (y[0, 1] - y[1, 1]).norm() / y[0, 1].norm()
    others = (y[0, 2:10] - y[1, 2:10]).norm(dim=-1) / y[0, 2:10].norm(dim=-1)
    assert word > 0.5, f"the differing token moved by only {word:.3f} of its norm"
    assert (others > 0.01).all(), f"context tokens did not see the changed word: {others}"


def test_every_word_of_the_synthetic_captions_is_one_token():
    tokenizer = build_tokenizer(model_max_length=48)
    caption = ("a small magenta triangle moves to the right and a large cyan square zooms out "
               "while the sky turns from day to night")
    assert tokenizer.tokenize(caption) == caption.split()
    # unknown words fall back to character pieces: still distinct, never <unk>
    assert tokenizer.tokenize("zebra") != tokenizer.tokenize("zebras")
    assert tokenizer.unk_token not in tokenizer.tokenize("zebra")


def test_captions_of_the_synthetic_dataset_fit_in_48_tokens_with_no_character_fallback():
    synthetic = pytest.importorskip("opensora_core.data.synthetic")
    tokenizer = build_tokenizer(model_max_length=48)
    for i in range(300):
        caption = synthetic.sample_clip_spec(42, i).caption
        tokens = tokenizer.tokenize(caption)
        assert tokens == caption.lower().split(), caption
        assert len(tokens) + 1 <= 48, caption


def test_null_is_the_encoding_of_empty_captions(tiny_t5_dir):
    enc = T5Encoder.from_pretrained(tiny_t5_dir, model_max_length=16)
    null = enc.null(3)
    assert null.shape == (3, 1, 16, 64)
    assert torch.equal(null, enc.encode([""] * 3)["y"])


def test_text_encoder_is_frozen_fp32(tiny_t5_dir):
    enc = T5Encoder.from_pretrained(tiny_t5_dir, model_max_length=16)
    assert enc.hidden_size == 64
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in enc.parameters())
    assert not enc.model.training


def test_missing_t5_names_what_to_download_and_where(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        T5Encoder.from_pretrained(tmp_path / "pretrained_models" / "t5-v1_1-xxl")
    assert "t5-v1_1-xxl" in str(err.value) and "text_encoder.pretrained" in str(err.value)


def test_unreachable_hub_t5_says_how_to_download_it(monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError) as err:
        T5Encoder.from_pretrained("DeepFloyd/t5-v1_1-xxl-not-cached")
    assert "huggingface-cli download DeepFloyd/t5-v1_1-xxl-not-cached --local-dir pretrained_models/t5-v1_1-xxl-not-cached" in str(err.value)
