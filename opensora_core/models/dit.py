"""DiT (full): STDiT's embedders and final layer around blocks with one self-attention over all T*S tokens.

The baseline of the Open-Sora 1.0 report's throughput ablation ("DiT (full)" vs STDiT), built from the
layers STDiT uses (``opensora_core.models.layers``, ``.attention``). Block:

    x = x + gate1 * Attn(t2i_modulate(LayerNorm(x), shift1, scale1))   # all T*S tokens at once
    x = x + CrossAttn(x, y, mask)
    x = x + gate2 * MLP(t2i_modulate(LayerNorm(x), shift2, scale2))

With no temporal attention to carry the frame index, the spatial and temporal sin-cos embeddings are both
added to the input tokens. Constructor and forward signature are STDiT's; its state dict is STDiT's without
the ``attn_temp`` tensors.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.utils.checkpoint

from opensora_core.models.attention import CrossAttention, SelfAttention
from opensora_core.models.flops import model_flops
from opensora_core.models.layers import (
    CaptionEmbedder,
    DropPath,
    FinalLayer,
    Mlp,
    PatchEmbed3D,
    TimestepEmbedder,
    gated_residual,
    pixart_init_,
    position_tables,
    sincos_tables,
    t2i_modulate,
    token_grid,
    unpatchify,
)


class DiTBlock(nn.Module):
    """adaLN-single block with full self-attention: x [B, T*S, D] -> [B, T*S, D]."""

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
        """x [B, T*S, D], y [B, L, D], t_mlp [B, 6D], mask (CaptionMask, [B, L] or None) -> [B, T*S, D]."""
        b, _, d = x.shape
        mods = (self.scale_shift_table[None] + t_mlp.reshape(b, 6, d)).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        x = gated_residual(x, gate_msa, self.attn(t2i_modulate(self.norm1(x), shift_msa, scale_msa)), self.drop_path)
        x = x + self.cross_attn(x, y, mask)
        return gated_residual(x, gate_mlp, self.mlp(t2i_modulate(self.norm2(x), shift_mlp, scale_mlp)), self.drop_path)


class DiT(nn.Module):
    """Full spatio-temporal attention DiT: STDiT's constructor arguments, forward and position embeddings."""

    def __init__(self, input_size=(1, 32, 32), in_channels: int = 4, patch_size=(1, 2, 2), hidden_size: int = 1152,
                 depth: int = 28, num_heads: int = 16, mlp_ratio: float = 4.0, class_dropout_prob: float = 0.1,
                 pred_sigma: bool = True, drop_path: float = 0.0, no_temporal_pos_emb: bool = False,
                 caption_channels: int = 4096, model_max_length: int = 120, dtype: torch.dtype | None = None,
                 space_scale: float = 1.0, time_scale: float = 1.0, freeze: str | None = None,
                 enable_grad_checkpoint: bool = False, enable_compile: bool = False, enable_flashattn: bool = False,
                 enable_layernorm_kernel: bool = False, enable_sequence_parallelism: bool = False,
                 temporal_pos: str | None = None):
        super().__init__()  # enable_flashattn, enable_layernorm_kernel: accepted and unused, as by STDiT
        if enable_sequence_parallelism:
            raise NotImplementedError("sequence parallelism supports STDiT only")
        if freeze not in (None, "text"):
            raise ValueError(f"freeze must be 'text' or None for DiT (no temporal attention), got {freeze!r}")
        if temporal_pos not in (None, "input"):
            raise ValueError(f"DiT adds temporal_pos at the input only, got {temporal_pos!r}")
        self.temporal_pos = "input"
        self.input_size, self.patch_size = tuple(int(v) for v in input_size), tuple(int(v) for v in patch_size)
        self.in_channels, self.pred_sigma = in_channels, pred_sigma
        self.out_channels = in_channels * 2 if pred_sigma else in_channels
        self.hidden_size, self.depth, self.num_heads, self.mlp_ratio = hidden_size, depth, num_heads, mlp_ratio
        self.caption_channels, self.model_max_length = caption_channels, model_max_length
        self.no_temporal_pos_emb, self.dtype = no_temporal_pos_emb, dtype
        self.space_scale, self.time_scale = float(space_scale), float(time_scale)
        self.grad_checkpoint = enable_grad_checkpoint

        # the same modules, in the same order, as STDiT: the same state-dict keys and seeded initial weights
        pos, pos_t = sincos_tables(hidden_size, token_grid(self.input_size, self.patch_size), self.space_scale,
                                   self.time_scale)
        self.register_buffer("pos_embed", pos)
        self.register_buffer("pos_embed_temporal", pos_t)
        self.x_embedder = PatchEmbed3D(self.patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.y_embedder = CaptionEmbedder(caption_channels, hidden_size, class_dropout_prob, model_max_length)
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio, rates[i]) for i in range(depth)])
        self.final_layer = FinalLayer(hidden_size, math.prod(self.patch_size), self.out_channels)

        pixart_init_(self, [block.cross_attn.proj for block in self.blocks])
        if freeze == "text":
            for name, p in self.named_parameters():
                p.requires_grad_("cross_attn" not in name)
        if enable_compile:
            for block in self.blocks:
                block.compile()

    def forward(self, x, timestep, y, mask=None, force_drop_ids=None):
        """As STDiT.forward: x [B, C, T, H, W], timestep [B], y [B, 1, N, Cc], mask [B, N] or None
        -> [B, C_out, T, H, W] float32."""
        dtype = self.dtype or self.x_embedder.proj.weight.dtype
        x, timestep, y = x.to(dtype), timestep.to(dtype), y.to(dtype)
        grid = token_grid(x.shape[2:], self.patch_size)
        if grid == token_grid(self.input_size, self.patch_size) and self.pos_embed.device == x.device:
            pos, pos_t = self.pos_embed, self.pos_embed_temporal
        else:
            pos, pos_t = position_tables(self.hidden_size, grid, self.space_scale, self.time_scale, x.device, dtype)
        h = self.x_embedder(x).unflatten(1, (grid[0], grid[1] * grid[2])) + pos[:, None]
        if not self.no_temporal_pos_emb:
            h = h + pos_t[:, :, None]
        h = h.flatten(1, 2)
        t = self.t_embedder(timestep, dtype=h.dtype)
        t_mlp = self.t_block(t)
        y, mask = self.y_embedder(y, mask, self.training, force_drop_ids)
        for block in self.blocks:
            if self.grad_checkpoint and self.training and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(block, h, y, t_mlp, mask, use_reentrant=False)
            else:
                h = block(h, y, t_mlp, mask)
        h = self.final_layer(h, t)
        return unpatchify(h, grid, self.patch_size, self.out_channels, x.shape[2:]).float()

    def set_input_size(self, input_size, space_scale: float | None = None, time_scale: float | None = None) -> None:
        """Rebuild the position buffers for a new latent size and scales (as STDiT.set_input_size)."""
        self.space_scale = self.space_scale if space_scale is None else float(space_scale)
        self.time_scale = self.time_scale if time_scale is None else float(time_scale)
        self.input_size = tuple(int(v) for v in input_size)
        device = self.pos_embed.device if self.pos_embed.device.type != "meta" else "cpu"
        dtype = self.pos_embed.dtype
        tables = sincos_tables(self.hidden_size, token_grid(self.input_size, self.patch_size), self.space_scale,
                               self.time_scale)
        self.pos_embed, self.pos_embed_temporal = (table.to(device, dtype) for table in tables)

    def enable_grad_checkpointing(self, enabled: bool = True) -> None:
        self.grad_checkpoint = enabled

    def num_tokens(self, input_size=None) -> int:
        return math.prod(token_grid(input_size or self.input_size, self.patch_size))

    def flops_per_sample(self, input_size=None, training: bool = True) -> int:
        """As STDiT.flops_per_sample, with one attention over all T*S tokens."""
        return model_flops(self, token_grid(input_size or self.input_size, self.patch_size), training)
