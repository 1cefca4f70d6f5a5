"""DiT (full): the STDiT embedders and block layout with one self-attention over all T*S tokens.

The baseline of the Open-Sora 1.0 report's throughput ablation ("DiT (full)" vs STDiT). Block:

    x = x + gate1 * Attn(t2i_modulate(LayerNorm(x), shift1, scale1))   # all T*S tokens at once
    x = x + CrossAttn(x, y, mask)
    x = x + gate2 * MLP(t2i_modulate(LayerNorm(x), shift2, scale2))

Spatial and temporal sin-cos embeddings are both added to the input tokens. Its state dict is STDiT's
without the ``attn_temp`` tensors.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from opensora_core.models.base import VideoDiffusionTransformer
from opensora_core.models.attention import CrossAttention, SelfAttention
from opensora_core.models.layers import DropPath, Mlp, gated_residual, t2i_modulate


class DiTBlock(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.attn = SelfAttention(hidden_size, num_heads)
        self.cross_attn = CrossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.drop_path = DropPath(drop_path)
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)

    def forward(self, x, y, t_mlp, mask=None):
        """x [B, T*S, D], y [B, N, D], t_mlp [B, 6D], mask (CaptionMask, [B, N] or None) -> [B, T*S, D]."""
        b, _, d = x.shape
        mods = (self.scale_shift_table[None] + t_mlp.reshape(b, 6, d)).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        x = gated_residual(x, gate_msa, self.attn(t2i_modulate(self.norm1(x), shift_msa, scale_msa)), self.drop_path)
        x = x + self.cross_attn(x, y, mask)
        return gated_residual(x, gate_mlp, self.mlp(t2i_modulate(self.norm2(x), shift_mlp, scale_mlp)), self.drop_path)


class DiT(VideoDiffusionTransformer):
    """Full spatio-temporal attention DiT with STDiT's constructor and forward signature."""

    TEMPORAL_POS = ("input",)  # no temporal attention to add it to
    default_temporal_pos = "input"

    def _make_block(self, index: int, drop_path: float) -> nn.Module:
        return DiTBlock(self.hidden_size, self.num_heads, self.mlp_ratio, drop_path)

    def _run_block(self, block, x, y, t_mlp, mask, tpe, grid):
        return block(x, y, t_mlp, mask)
