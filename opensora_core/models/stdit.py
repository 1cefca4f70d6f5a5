"""STDiT: Open-Sora 1.0's spatial-temporal diffusion transformer (our implementation of the same function).

Block (x [B, T*S, D] tokens, t_mlp [B, 6D], y [B, N, D] caption tokens, mask [B, N]):

    shift1, scale1, gate1, shift2, scale2, gate2 = scale_shift_table[6, D] + t_mlp.view(B, 6, D)
    x = x + gate1 * SpatialAttn(t2i_modulate(LayerNorm(x), shift1, scale1))    # over S tokens, per frame
    x = x + gate1 * TemporalAttn(x + tpe)           # over T frames, per location; un-normalised input,
                                                    # tpe = pos_embed_temporal in block 0 only
    x = x + CrossAttn(x, y, mask)                   # no norm, no gate (PixArt)
    x = x + gate2 * MLP(t2i_modulate(LayerNorm(x), shift2, scale2))

(the temporal branch reuses the spatial gate: that is how Open-Sora 1.0 is built, and the released
weights were trained with it). LayerNorms have no affine parameters, eps 1e-6; MLP uses GELU(tanh).
The rest of the model (embedders, position embeddings, final layer) is in ``opensora_core.models.base``.
"""

from __future__ import annotations

import torch.nn as nn

from opensora_core.models.base import VideoDiffusionTransformer
from opensora_core.models.dit import DiTBlock
from opensora_core.models.attention import SelfAttention
from opensora_core.models.layers import gated_residual, t2i_modulate


class STDiTBlock(DiTBlock):
    """A DiT block (adaLN-single, self-attention, cross-attention, MLP) with a temporal attention after the
    spatial one; registered last, so the state-dict order is Open-Sora 1.0's."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__(hidden_size, num_heads, mlp_ratio, drop_path)
        self.attn_temp = SelfAttention(hidden_size, num_heads)

    def forward(self, x, y, t_mlp, mask=None, tpe=None, grid=None):
        """x [B, T*S, D], y [B, N, D], t_mlp [B, 6D], mask (CaptionMask, [B, N] or None), tpe [1, T, D] or None,
        grid = (T, S) -> [B, T*S, D]."""
        b, n, d = x.shape
        t_len, s_len = grid
        mods = (self.scale_shift_table[None] + t_mlp.reshape(b, 6, d)).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods  # each [B, 1, D]

        # spatial: the S tokens of each frame ([B*T, S, D] is a view of x's layout)
        h = t2i_modulate(self.norm1(x), shift_msa, scale_msa).view(b * t_len, s_len, d)
        x = gated_residual(x, gate_msa, self.attn(h).view(b, n, d), self.drop_path)

        # temporal: the T frames of each spatial location; one copy into [B*S, T, D], and the result is added
        # back through a transposed view (no second copy)
        h = x.view(b, t_len, s_len, d).transpose(1, 2).reshape(b * s_len, t_len, d)
        if tpe is not None:
            h = h + tpe
        h = self.attn_temp(h).view(b, s_len, t_len, d).transpose(1, 2)  # [B, T, S, D] view
        x = gated_residual(x.view(b, t_len, s_len, d), gate_msa[:, None], h, self.drop_path).reshape(b, n, d)

        x = x + self.cross_attn(x, y, mask)
        h = self.mlp(t2i_modulate(self.norm2(x), shift_mlp, scale_mlp))
        return gated_residual(x, gate_mlp, h, self.drop_path)


class STDiT(VideoDiffusionTransformer):
    """Open-Sora 1.0 STDiT. Constructor arguments as Open-Sora's (input_size is the latent (T, H, W)).

    forward(x [B, C, T, H, W], timestep [B], y [B, 1, N, Cc], mask [B, N] | None) -> [B, 2C, T, H, W].
    """

    temporal_attention = True

    def _make_block(self, index: int, drop_path: float) -> nn.Module:
        return STDiTBlock(self.hidden_size, self.num_heads, self.mlp_ratio, drop_path)

    def _run_block(self, block, x, y, t_mlp, mask, tpe, grid):
        return block(x, y, t_mlp, mask, tpe, grid)
