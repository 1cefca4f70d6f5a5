"""STDiT: Open-Sora 1.0's spatial-temporal diffusion transformer (our implementation of the same function).

The forward function (eval mode) for a latent video x [B, C, T, H, W], timesteps [B], T5 caption
y [B, 1, N, Cc] and its mask [B, N]:

1. tokens = PatchEmbed3D(x) [B, T', S, D] (S = H'W'), plus the 2D sin-cos ``pos_embed`` [1, S, D] on
   every frame (coordinates divided by ``space_scale``).
2. t = TimestepEmbedder(timesteps) [B, D]; t_mlp = t_block(t) = Linear(SiLU(t)) [B, 6D]: adaLN-single
   (PixArt-alpha), one projection for all blocks, each block adding its own ``scale_shift_table`` [6, D].
3. caption tokens = CaptionEmbedder(y) [B, L, D]; the mask selects each sample's valid tokens.
4. the blocks (``STDiTBlock``): spatial, temporal, cross attention and MLP. ``pos_embed_temporal``
   [1, T', D] (frame index divided by ``time_scale``) enters block 0's temporal attention only
   (Open-Sora 1.0), or every token before the blocks with ``temporal_pos="input"``.
5. FinalLayer(tokens, t) [B, T'S, pt*ph*pw*C_out], unpatchified to [B, C_out, T, H, W] float32;
   C_out = 2C with ``pred_sigma`` (the noise and the variance, IDDPM).

The shared layers are in ``opensora_core.models.layers`` and ``.attention``; DiT (``.dit``) is built from
them too. Sequence parallelism (``opensora_core.models.sequence_parallel``) reuses ``embed_inputs``, the blocks'
submodules, ``final_layer`` and ``unpatchify``.
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

FREEZE_OPTIONS = ("not_temporal", "text")
# Where the temporal position embedding enters: "first_block" = block 0's temporal-attention input only
# (Open-Sora 1.0); "input" = every token before the blocks, so every block sees the frame index.
TEMPORAL_POS = ("first_block", "input")


class STDiTBlock(nn.Module):
    """One STDiT block: tokens x [B, T*S, D] -> [B, T*S, D].

        shift1, scale1, gate1, shift2, scale2, gate2 = scale_shift_table[6, D] + t_mlp.view(B, 6, D)
        x = x + gate1 * SpatialAttn(t2i_modulate(LayerNorm(x), shift1, scale1))  # the S tokens of a frame
        x = x + gate1 * TemporalAttn(x + tpe)     # the T frames of a location; input not normalised
        x = x + CrossAttn(x, y, mask)             # no norm, no gate (PixArt-alpha)
        x = x + gate2 * MLP(t2i_modulate(LayerNorm(x), shift2, scale2))

    The temporal branch reuses the spatial gate: Open-Sora 1.0 is built so, and its released weights were
    trained with it. LayerNorms have no affine parameters, eps 1e-6; the MLP uses GELU(tanh).
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        # Construction order is the RNG order of the initial weights; attn_temp comes last, as in Open-Sora 1.0
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.attn = SelfAttention(hidden_size, num_heads)
        self.cross_attn = CrossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6, elementwise_affine=False)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.drop_path = DropPath(drop_path)
        self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)
        self.attn_temp = SelfAttention(hidden_size, num_heads)

    def forward(self, x, y, t_mlp, mask=None, tpe=None, grid=None):
        """x [B, T*S, D], y [B, L, D], t_mlp [B, 6D], mask (CaptionMask, [B, L] or None), tpe [1, T, D] or
        None, grid = (T, S) -> [B, T*S, D]."""
        b, n, d = x.shape
        t_len, s_len = grid
        mods = (self.scale_shift_table[None] + t_mlp.reshape(b, 6, d)).chunk(6, dim=1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods  # each [B, 1, D]

        # spatial: [B*T, S, D] is a view of x's layout
        h = t2i_modulate(self.norm1(x), shift_msa, scale_msa).view(b * t_len, s_len, d)
        x = gated_residual(x, gate_msa, self.attn(h).view(b, n, d), self.drop_path)

        # temporal: one copy into [B*S, T, D]; the result is added back through a transposed view
        h = x.view(b, t_len, s_len, d).transpose(1, 2).reshape(b * s_len, t_len, d)
        if tpe is not None:
            h = h + tpe
        h = self.attn_temp(h).view(b, s_len, t_len, d).transpose(1, 2)  # [B, T, S, D] view
        x = gated_residual(x.view(b, t_len, s_len, d), gate_msa[:, None], h, self.drop_path).reshape(b, n, d)

        x = x + self.cross_attn(x, y, mask)
        h = self.mlp(t2i_modulate(self.norm2(x), shift_mlp, scale_mlp))
        return gated_residual(x, gate_mlp, h, self.drop_path)


class STDiT(nn.Module):
    """Open-Sora 1.0 STDiT. Constructor arguments as Open-Sora's (``input_size`` is the latent (T, H, W)).

    forward(x [B, C, T, H, W], timestep [B], y [B, 1, N, Cc], mask [B, N] | None) -> [B, C_out, T, H, W].
    Position embeddings are buffers built for ``input_size``; other sizes are served from
    ``layers.position_tables``, and ``set_input_size`` rebuilds the buffers for a new training stage.
    """

    def __init__(
        self,
        input_size=(1, 32, 32),
        in_channels: int = 4,
        patch_size=(1, 2, 2),
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        pred_sigma: bool = True,
        drop_path: float = 0.0,
        no_temporal_pos_emb: bool = False,
        caption_channels: int = 4096,
        model_max_length: int = 120,
        dtype: torch.dtype | None = None,
        space_scale: float = 1.0,
        time_scale: float = 1.0,
        freeze: str | None = None,
        enable_grad_checkpoint: bool = False,
        enable_compile: bool = False,
        enable_flashattn: bool = False,  # accepted for config compatibility: SDPA picks flash by itself
        enable_layernorm_kernel: bool = False,  # accepted for config compatibility (no apex here)
        enable_sequence_parallelism: bool = False,
        temporal_pos: str | None = None,
    ):
        super().__init__()
        if enable_sequence_parallelism:
            raise NotImplementedError("sequence parallelism is provided by opensora_core.models.sequence_parallel, not the model")
        if freeze is not None and freeze not in FREEZE_OPTIONS:
            raise ValueError(f"freeze must be one of {FREEZE_OPTIONS} or None, got {freeze!r}")
        self.temporal_pos = temporal_pos or "first_block"
        if self.temporal_pos not in TEMPORAL_POS:
            raise ValueError(f"temporal_pos must be one of {TEMPORAL_POS}, got {temporal_pos!r}")
        self.input_size = tuple(int(v) for v in input_size)
        self.in_channels = in_channels
        self.pred_sigma = pred_sigma
        self.out_channels = in_channels * 2 if pred_sigma else in_channels
        self.patch_size = tuple(int(v) for v in patch_size)
        self.hidden_size = hidden_size
        self.depth = depth
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        self.caption_channels = caption_channels
        self.model_max_length = model_max_length
        self.no_temporal_pos_emb = no_temporal_pos_emb
        self.dtype = dtype
        self.space_scale = float(space_scale)
        self.time_scale = float(time_scale)
        self.grad_checkpoint = enable_grad_checkpoint

        grid = token_grid(self.input_size, self.patch_size)
        pos, pos_t = sincos_tables(hidden_size, grid, self.space_scale, self.time_scale)
        self.register_buffer("pos_embed", pos)
        self.register_buffer("pos_embed_temporal", pos_t)
        self.x_embedder = PatchEmbed3D(self.patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.y_embedder = CaptionEmbedder(caption_channels, hidden_size, class_dropout_prob, model_max_length)
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist()  # stochastic depth grows with depth
        self.blocks = nn.ModuleList([STDiTBlock(hidden_size, num_heads, mlp_ratio, rates[i]) for i in range(depth)])
        self.final_layer = FinalLayer(hidden_size, math.prod(self.patch_size), self.out_channels)

        self.initialize_weights()
        if freeze == "not_temporal":
            self.freeze_not_temporal()
        elif freeze == "text":
            self.freeze_text()
        if enable_compile:
            for block in self.blocks:
                block.compile()  # in place: state-dict keys stay unchanged

    def initialize_weights(self) -> None:
        """``layers.pixart_init_``, with zeroed cross-attention outputs (PixArt-alpha) and zeroed temporal-attention
        outputs (Open-Sora 1.0): a temporal branch starts as the identity, so image weights give an image model."""
        pixart_init_(self, [lin for block in self.blocks for lin in (block.cross_attn.proj, block.attn_temp.proj)])

    # -- forward ---------------------------------------------------------------------------------------------
    def position_embeddings(self, grid, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(spatial [1, S, D], temporal [1, T', D]) for a token grid: the buffers for the built size."""
        if tuple(grid) == token_grid(self.input_size, self.patch_size) and self.pos_embed.device == device:
            return self.pos_embed, self.pos_embed_temporal
        return position_tables(self.hidden_size, tuple(grid), self.space_scale, self.time_scale, device, dtype)

    def embed_inputs(self, x, timestep, y, mask=None, force_drop_ids=None):
        """Steps 1-3 of the forward function (the module doc); shared with the sequence-parallel forward.

        Returns (h [B, T', S, D] tokens with their position embeddings, t [B, D], t_mlp [B, 6D],
        y [B, L, D] caption tokens, mask: a CaptionMask for every block or None, tpe: the temporal embedding
        for block 0's temporal attention or None, grid (T', H', W')).
        """
        dtype = self.dtype or self.x_embedder.proj.weight.dtype
        # Open-Sora 1.0 casts the timesteps to the model dtype too (part of the released models' function)
        x, timestep, y = x.to(dtype), timestep.to(dtype), y.to(dtype)
        grid = token_grid(x.shape[2:], self.patch_size)
        pos, pos_t = self.position_embeddings(grid, x.device, dtype)
        h = self.x_embedder(x).unflatten(1, (grid[0], grid[1] * grid[2])) + pos[:, None]
        at_input = self.temporal_pos == "input"
        if at_input and not self.no_temporal_pos_emb:
            h = h + pos_t[:, :, None]
        t = self.t_embedder(timestep, dtype=h.dtype)
        t_mlp = self.t_block(t)
        y, mask = self.y_embedder(y, mask, self.training, force_drop_ids)
        tpe = None if (self.no_temporal_pos_emb or at_input) else pos_t
        return h, t, t_mlp, y, mask, tpe, grid

    def forward(self, x, timestep, y, mask=None, force_drop_ids=None):
        """x [B, C, T, H, W], timestep [B], y [B, 1, N, Cc], mask [B, N] (1 = valid) or None,
        force_drop_ids [B] (1 = use the null caption) or None -> [B, C_out, T, H, W] float32."""
        h, t, t_mlp, y, mask, tpe, grid = self.embed_inputs(x, timestep, y, mask, force_drop_ids)
        frames = (h.shape[1], h.shape[2])
        h = h.flatten(1, 2)  # [B, T'*S, D]
        for i, block in enumerate(self.blocks):
            args = (h, y, t_mlp, mask, tpe if i == 0 else None, frames)
            if self.grad_checkpoint and self.training and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
            else:
                h = block(*args)
        h = self.final_layer(h, t)
        return self.unpatchify(h, grid, x.shape[2:]).float()

    def unpatchify(self, h: torch.Tensor, grid, size=None) -> torch.Tensor:
        """[B, T'*H'*W', pt*ph*pw*C_out] -> [B, C_out, T'pt, H'ph, W'pw] (cropped to ``size`` if padded)."""
        return unpatchify(h, grid, self.patch_size, self.out_channels, size)

    # -- options ---------------------------------------------------------------------------------------------
    def set_input_size(self, input_size, space_scale: float | None = None, time_scale: float | None = None) -> None:
        """Rebuild ``pos_embed``/``pos_embed_temporal`` for a new latent size and scales (progressive stages)."""
        if space_scale is not None:
            self.space_scale = float(space_scale)
        if time_scale is not None:
            self.time_scale = float(time_scale)
        self.input_size = tuple(int(v) for v in input_size)
        device = self.pos_embed.device if self.pos_embed.device.type != "meta" else "cpu"
        dtype = self.pos_embed.dtype
        grid = token_grid(self.input_size, self.patch_size)
        pos, pos_t = sincos_tables(self.hidden_size, grid, self.space_scale, self.time_scale)
        self.pos_embed, self.pos_embed_temporal = pos.to(device, dtype), pos_t.to(device, dtype)

    def enable_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block in the backward pass (memory for compute: Open-Sora 1.0's 512px stages)."""
        self.grad_checkpoint = enabled

    def freeze_not_temporal(self) -> None:
        """Train the temporal attentions only."""
        for name, p in self.named_parameters():
            p.requires_grad_("attn_temp" in name)

    def freeze_text(self) -> None:
        """Freeze the cross-attentions."""
        for name, p in self.named_parameters():
            if "cross_attn" in name:
                p.requires_grad_(False)

    # -- cost model ------------------------------------------------------------------------------------------
    def num_tokens(self, input_size=None) -> int:
        """Video tokens per sample for a latent size (default: the built input_size)."""
        return math.prod(token_grid(input_size or self.input_size, self.patch_size))

    def flops_per_sample(self, input_size=None, training: bool = True) -> int:
        """Matmul FLOPs (2 per multiply-add) for one sample at a latent size (default: the built one); x3 for
        forward+backward when ``training``. See ``opensora_core.models.flops`` for what is counted."""
        return model_flops(self, token_grid(input_size or self.input_size, self.patch_size), training)
