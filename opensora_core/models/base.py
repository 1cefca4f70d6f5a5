"""The part STDiT and DiT share: embedders, position embeddings, caption handling, final layer, unpatchify.

Forward function (Open-Sora 1.0 STDiT, eval mode), for x [B, C, T, H, W], timestep [B], y [B, 1, N, Cc],
mask [B, N]:

1. tokens = PatchEmbed3D(x) -> [B, T'*S, D] (S = H'*W'), plus the 2D sin-cos ``pos_embed`` [1, S, D] added to
   every frame (spatial coordinates divided by ``space_scale``).
2. t = TimestepEmbedder(timestep) [B, D]; t_mlp = t_block(t) = Linear(SiLU(t)) [B, 6D] (adaLN-single:
   one projection shared by all blocks, each block adds its own learned ``scale_shift_table`` [6, D]).
3. y = CaptionEmbedder(y) -> [B, N, D] (caption dropout to the null caption ``y_embedder.y_embedding`` in
   training); the mask [B, N] selects each sample's valid caption tokens for cross-attention.
4. the blocks (STDiT: spatial, temporal, cross, MLP; DiT: full spatio-temporal attention, cross, MLP).
   ``pos_embed_temporal`` [1, T', D] (frame index divided by ``time_scale``) enters STDiT right before the
   first block's temporal attention; DiT adds it to the tokens with ``pos_embed``.
5. FinalLayer(tokens, t) -> [B, T'*S, pt*ph*pw*C_out]; unpatchify "B (T' H' W') (pt ph pw C) -> B C (T' pt)
   (H' ph) (W' pw)"; output cast to float32. C_out = 2C when ``pred_sigma`` (epsilon and variance).

Position embeddings are buffers built once for ``input_size``; other input sizes are served from a cache
keyed by size and device, and ``set_input_size`` rebuilds the buffers for a new training stage.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.utils.checkpoint

from opensora_core.models.attention import trim_caption
from opensora_core.models.flops import flop_terms
from opensora_core.models.layers import (
    CaptionEmbedder,
    FinalLayer,
    PatchEmbed3D,
    TimestepEmbedder,
    spatial_pos_embed,
    temporal_pos_embed,
)

FREEZE_OPTIONS = ("not_temporal", "text")


class VideoDiffusionTransformer(nn.Module):
    """Base class; subclasses implement ``_make_block(i, drop_path)`` and ``_run_block(...)``."""

    # Where the temporal position embedding enters: "first_block" = added to block 0's temporal-attention input
    # only (Open-Sora 1.0 STDiT); "input" = added to every token before the blocks (DiT; an STDiT option).
    TEMPORAL_POS = ("first_block", "input")
    default_temporal_pos = "first_block"
    temporal_attention = False  # whether blocks attend over frames (STDiT) besides within a frame or all tokens

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
            raise NotImplementedError("sequence parallelism is provided by opensora_core.parallel, not the model")
        if freeze is not None and freeze not in FREEZE_OPTIONS:
            raise ValueError(f"freeze must be one of {FREEZE_OPTIONS} or None, got {freeze!r}")
        self.temporal_pos = temporal_pos or self.default_temporal_pos
        if self.temporal_pos not in self.TEMPORAL_POS:
            raise ValueError(f"temporal_pos must be one of {self.TEMPORAL_POS}, got {temporal_pos!r}")
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
        self._pos_cache: dict = {}

        grid = self.token_grid(self.input_size)
        self.register_buffer("pos_embed", spatial_pos_embed(hidden_size, grid[1:], self.space_scale))
        self.register_buffer("pos_embed_temporal", temporal_pos_embed(hidden_size, grid[0], self.time_scale))

        self.x_embedder = PatchEmbed3D(self.patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.y_embedder = CaptionEmbedder(caption_channels, hidden_size, class_dropout_prob, model_max_length)
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList([self._make_block(i, rates[i]) for i in range(depth)])
        self.final_layer = FinalLayer(hidden_size, math.prod(self.patch_size), self.out_channels)

        self.initialize_weights()
        if freeze == "not_temporal":
            self.freeze_not_temporal()
        elif freeze == "text":
            self.freeze_text()
        if enable_compile:
            for block in self.blocks:
                block.compile()  # in place: state-dict keys stay unchanged

    @property
    def temporal_pos_at_input(self) -> bool:
        return self.temporal_pos == "input"

    # -- construction hooks ------------------------------------------------------------------------------
    def _make_block(self, index: int, drop_path: float) -> nn.Module:
        raise NotImplementedError

    def _run_block(self, block, x, y, t_mlp, mask, tpe, grid):
        raise NotImplementedError

    # -- position embeddings -------------------------------------------------------------------------------
    def token_grid(self, input_size) -> tuple[int, int, int]:
        """Latent (T, H, W) -> token grid (T', H', W') (ceil: the patch embedding pads)."""
        return tuple(-(-int(s) // p) for s, p in zip(input_size, self.patch_size))

    def set_input_size(self, input_size, space_scale: float | None = None, time_scale: float | None = None) -> None:
        """Rebuild ``pos_embed``/``pos_embed_temporal`` for a new latent size and scales (progressive stages)."""
        if space_scale is not None:
            self.space_scale = float(space_scale)
        if time_scale is not None:
            self.time_scale = float(time_scale)
        self.input_size = tuple(int(v) for v in input_size)
        grid = self.token_grid(self.input_size)
        device = self.pos_embed.device if self.pos_embed.device.type != "meta" else None
        dtype = self.pos_embed.dtype
        self.pos_embed = spatial_pos_embed(self.hidden_size, grid[1:], self.space_scale).to(device or "cpu", dtype)
        self.pos_embed_temporal = temporal_pos_embed(self.hidden_size, grid[0], self.time_scale).to(
            device or "cpu", dtype
        )
        self._pos_cache.clear()

    def position_embeddings(self, grid, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(spatial [1, S, D], temporal [1, T', D]) for a token grid; buffers for the built size, else cached."""
        built = self.token_grid(self.input_size)
        if tuple(grid) == built and self.pos_embed.device == device:
            return self.pos_embed, self.pos_embed_temporal
        key = (tuple(grid), self.space_scale, self.time_scale, device, dtype)
        if key not in self._pos_cache:
            self._pos_cache[key] = (
                spatial_pos_embed(self.hidden_size, grid[1:], self.space_scale).to(device, dtype),
                temporal_pos_embed(self.hidden_size, grid[0], self.time_scale).to(device, dtype),
            )
        return self._pos_cache[key]

    # -- forward ---------------------------------------------------------------------------------------------
    def embed_inputs(self, x, timestep, y, mask=None, force_drop_ids=None):
        """The part of the forward pass before the blocks (shared with the sequence-parallel forward).

        Returns (h [B, T', S, D] tokens with their position embeddings, t [B, D], t_mlp [B, 6D], y [B, L, D]
        (the caption without the padding columns no sample uses, L <= N), mask: a CaptionMask shared by the
        blocks or None when no token is padded, tpe: the temporal embedding for block 0's temporal attention
        or None, grid).
        """
        dtype = self.dtype or self.x_embedder.proj.weight.dtype
        # Open-Sora casts the timesteps to the model dtype too (part of the released models' function)
        x, timestep, y = x.to(dtype), timestep.to(dtype), y.to(dtype)
        grid = self.token_grid(x.shape[2:])
        t_tokens, s_tokens = grid[0], grid[1] * grid[2]

        pos, pos_t = self.position_embeddings(grid, x.device, dtype)
        h = self.x_embedder(x).unflatten(1, (t_tokens, s_tokens)) + pos[:, None]
        if self.temporal_pos_at_input and not self.no_temporal_pos_emb:
            h = h + pos_t[:, :, None]

        t = self.t_embedder(timestep, dtype=h.dtype)  # [B, D]
        t_mlp = self.t_block(t)  # [B, 6D]
        if mask is not None:
            mask = mask.reshape(mask.shape[0], -1)
            if mask.shape[0] != y.shape[0]:  # one mask for a doubled (classifier-free guidance) batch
                mask = mask.repeat(y.shape[0] // mask.shape[0], 1)
        y, mask = trim_caption(y, mask)  # padding no sample uses is dropped; mask None when none is left
        y = self.y_embedder(y, self.training, force_drop_ids).squeeze(1)  # [B, L, D]
        tpe = None if (self.no_temporal_pos_emb or self.temporal_pos_at_input) else pos_t
        return h, t, t_mlp, y, mask, tpe, grid

    def forward(self, x, timestep, y, mask=None, force_drop_ids=None):
        """x [B, C, T, H, W], timestep [B], y [B, 1, N, Cc], mask [B, N] (1 = valid) or None
        -> [B, C_out, T, H, W] float32 (C_out = 2C with pred_sigma)."""
        h, t, t_mlp, y, mask, tpe, grid = self.embed_inputs(x, timestep, y, mask, force_drop_ids)
        t_tokens, s_tokens = h.shape[1], h.shape[2]
        h = h.flatten(1, 2)  # [B, T'*S, D]

        for i, block in enumerate(self.blocks):
            block_tpe = tpe if i == 0 else None
            if self.grad_checkpoint and self.training and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(
                    self._run_block, block, h, y, t_mlp, mask, block_tpe, (t_tokens, s_tokens), use_reentrant=False
                )
            else:
                h = self._run_block(block, h, y, t_mlp, mask, block_tpe, (t_tokens, s_tokens))

        h = self.final_layer(h, t)
        return self.unpatchify(h, grid, x.shape[2:]).float()

    def unpatchify(self, h: torch.Tensor, grid, size=None) -> torch.Tensor:
        """[B, T'*H'*W', pt*ph*pw*C_out] -> [B, C_out, T'pt, H'ph, W'pw] (cropped to ``size`` if padded)."""
        b = h.shape[0]
        nt, nh, nw = grid
        pt, ph, pw = self.patch_size
        out = h.reshape(b, nt, nh, nw, pt, ph, pw, self.out_channels)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, self.out_channels, nt * pt, nh * ph, nw * pw)
        if size is not None and tuple(out.shape[2:]) != tuple(size):
            out = out[:, :, : size[0], : size[1], : size[2]]
        return out

    # -- options -----------------------------------------------------------------------------------------------
    def enable_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block in the backward pass (memory for compute: 64-frame training)."""
        self.grad_checkpoint = enabled

    def freeze_not_temporal(self) -> None:
        for name, p in self.named_parameters():
            p.requires_grad_("attn_temp" in name)

    def freeze_text(self) -> None:
        for name, p in self.named_parameters():
            if "cross_attn" in name:
                p.requires_grad_(False)

    def initialize_weights(self) -> None:
        """Open-Sora / PixArt init: xavier linears, N(0, 0.02) for timestep and caption MLPs, zeroed
        cross-attention outputs, final layer and temporal-attention outputs (so a new model starts at 0)."""

        def basic(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(basic)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], self.t_block[1]):
            nn.init.normal_(lin.weight, std=0.02)
        nn.init.normal_(self.y_embedder.y_proj.fc1.weight, std=0.02)
        nn.init.normal_(self.y_embedder.y_proj.fc2.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.cross_attn.proj.weight)
            nn.init.zeros_(block.cross_attn.proj.bias)
            if hasattr(block, "attn_temp"):
                nn.init.zeros_(block.attn_temp.proj.weight)
                nn.init.zeros_(block.attn_temp.proj.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    # -- cost model ----------------------------------------------------------------------------------------------
    def num_tokens(self, input_size=None) -> int:
        """Video tokens per sample for a latent size (default: the built input_size)."""
        return math.prod(self.token_grid(input_size or self.input_size))

    def flops_per_sample(self, input_size=None, training: bool = True) -> int:
        """Matmul FLOPs (2 per multiply-add) for one sample at a latent size (default: the built one); x3 for
        forward+backward when ``training``. See ``opensora_core.models.flops`` for what is counted."""
        terms = flop_terms(self.hidden_size, self.depth, self.token_grid(input_size or self.input_size),
                           self.model_max_length, temporal=self.temporal_attention, mlp_ratio=self.mlp_ratio,
                           patch_size=self.patch_size, in_channels=self.in_channels,
                           out_channels=self.out_channels, caption_channels=self.caption_channels)
        return sum(terms.values()) * (3 if training else 1)
