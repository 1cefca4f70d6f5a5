"""T5 text encoder: captions -> per-token embeddings `[B, 1, N, C]` and a padding mask `[B, N]`.

Open-Sora 1.0 encodes captions with DeepFloyd/t5-v1_1-xxl's encoder, padded/truncated to 120 tokens, in fp32,
frozen; the STDiT cross-attends to all N token embeddings with the attention mask. The tiny preset uses the same
class with a frozen, randomly initialised tiny T5 (`opensora_core.encoders.tiny_text`).

Heavy or optional imports (transformers) happen inside the functions that need them, so importing this module (the
CLI, the stage processes, the Dask workers do) does not load them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from opensora_core.encoders.weights import load_pretrained


class T5Encoder(nn.Module):
    """Frozen T5 encoder + tokenizer.

    Args:
        model: a transformers `T5EncoderModel` (kept in fp32, eval mode, no gradients).
        tokenizer: its tokenizer (any `PreTrainedTokenizer(Fast)` with a pad token).
        model_max_length: every caption is padded or truncated to this many tokens (N); 120 in Open-Sora 1.0.
    """

    def __init__(self, model: nn.Module, tokenizer, model_max_length: int = 120):
        super().__init__()
        self.model = model.float().eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.model_max_length = int(model_max_length)

    @classmethod
    def from_pretrained(cls, id_or_path: str | Path, model_max_length: int = 120, device: str | torch.device = "cpu",
                        param: str = "text_encoder.pretrained") -> T5Encoder:
        """Load a hub id (`DeepFloyd/t5-v1_1-xxl`) or a `save_pretrained` folder holding model and tokenizer.

        Raises FileNotFoundError saying what to download and where to put it when the weights are missing.
        """
        from transformers import AutoTokenizer, T5EncoderModel
        from transformers.utils import logging as hf_logging

        def load(path: str):
            tokenizer = AutoTokenizer.from_pretrained(path)
            # transformers 5 draws a "Loading weights" bar per load (four times in the demo's log, as noise)
            bar = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
            try:
                model = T5EncoderModel.from_pretrained(path, torch_dtype=torch.float32)
            finally:
                if bar:
                    hf_logging.enable_progress_bar()
            return model, tokenizer

        model, tokenizer = load_pretrained(load, id_or_path, "T5 text encoder", param)
        return cls(model.to(device), tokenizer, model_max_length=model_max_length)

    @property
    def hidden_size(self) -> int:
        """C, the caption embedding width (4096 for t5-v1_1-xxl)."""
        return int(self.model.config.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """`input_ids` and `attention_mask`, both `[B, N]` long, N = model_max_length (EOS kept on truncation)."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of captions, not a single string")
        tokens = self.tokenizer(list(texts), max_length=self.model_max_length, padding="max_length", truncation=True,
                                add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        return {"input_ids": tokens["input_ids"].long(), "attention_mask": tokens["attention_mask"].long()}

    @torch.no_grad()
    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Captions -> `{"y": [B, 1, N, C] float32, "mask": [B, N] long}` (mask 1 on real tokens incl. EOS)."""
        tokens = self.tokenize(texts)
        ids, mask = tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, N, C]
        return {"y": hidden[:, None].float(), "mask": mask}

    def null(self, n: int) -> torch.Tensor:
        """Null caption embedding for classifier-free guidance: `encode([""] * n)["y"]`, `[n, 1, N, C]`.

        Open-Sora 1.0 guides with the STDiT's *learned* null caption (`y_embedder.y_embedding`, the embedding
        the model was trained on under caption dropout); samplers should prefer that. This is the fallback for
        a model that has none.
        """
        return self.encode([""] * n)["y"]
