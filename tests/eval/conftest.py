"""Fixtures of the evaluation tests: real synthetic clips (rendered by the data package, through H.264 and back)."""

from __future__ import annotations

import numpy as np
import pytest


def decode_mp4(path) -> np.ndarray:
    """uint8 [T, H, W, 3] frames of a video file."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(name="decode_mp4")
def _decode_mp4_fixture():
    return decode_mp4


@pytest.fixture(scope="session")
def heldout_clips(tmp_path_factory):
    """48 synthetic clips (32 frames, 64x64) written as mp4 by the real generator: (frames list, manifest rows)."""
    from opensora_core.data.manifest import read_manifest
    from opensora_core.data.synthetic import generate_synthetic

    manifest = generate_synthetic(tmp_path_factory.mktemp("syn") / "data", num=48, frames=32, size=64, seed=11,
                                  workers=1, progress=False)
    df = read_manifest(manifest)
    return [decode_mp4(p) for p in df["path"]], df.to_dict("records")


class _HashTextEncoder:
    """Stand-in with T5Encoder's interface (used only until opensora_core.encoders.T5Encoder exists): a fixed
    random embedding per word, so different prompts give different captions."""

    def __init__(self, hidden_size: int = 16, model_max_length: int = 8):
        import torch

        self.hidden_size, self.model_max_length = hidden_size, model_max_length
        self.table = torch.randn(997, hidden_size, generator=torch.Generator().manual_seed(0))

    def encode(self, texts):
        import zlib

        import torch

        y = torch.zeros(len(texts), 1, self.model_max_length, self.hidden_size)
        mask = torch.zeros(len(texts), self.model_max_length, dtype=torch.long)
        for i, t in enumerate(texts):
            for j, w in enumerate(t.split()[: self.model_max_length]):
                y[i, 0, j], mask[i, j] = self.table[zlib.crc32(w.encode()) % 997], 1
        return {"y": y, "mask": mask}


@pytest.fixture(scope="session")
def tiny_stack(tmp_path_factory):
    """(STDiT, VideoAutoencoderKL, text encoder): a random tiny STDiT (latent 2x4x4), a tiny VAE (ds 4) and a
    tiny T5 (save_pretrained into a tmp dir) or its stand-in while the T5 wrapper is not there."""
    import torch

    from opensora_core.encoders.vae import VideoAutoencoderKL
    from opensora_core.encoders.vae_train import tiny_autoencoder
    from opensora_core.models import build_model

    try:
        from opensora_core.encoders import T5Encoder
    except ImportError:
        T5Encoder = None
    if T5Encoder is not None:
        from transformers import T5Config, T5EncoderModel

        d = tmp_path_factory.mktemp("t5")
        T5EncoderModel(T5Config(vocab_size=200, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)).save_pretrained(d)
        _write_tiny_tokenizer(d)
        text = T5Encoder.from_pretrained(str(d), model_max_length=8)
    else:
        text = _HashTextEncoder(16, 8)
    torch.manual_seed(0)
    model = build_model("STDiT-tiny", input_size=(2, 4, 4), in_channels=4, caption_channels=16, model_max_length=8,
                        hidden_size=32, depth=1, num_heads=2).eval()
    vae = VideoAutoencoderKL(tiny_autoencoder(latent_channels=4, downsample=4, width=8), micro_batch_size=8)
    return model, vae, text


def _write_tiny_tokenizer(d) -> None:
    """A word-level tokenizer saved next to the tiny T5 (nothing can be downloaded here)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(
        "a small large red green blue yellow magenta cyan circle square triangle moves to the left right up down "
        "zooms in out rotates on black dark gray background while sky turns from day night".split())}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(d)
