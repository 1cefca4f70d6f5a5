"""The layers STDiT and DiT are both built from: position embeddings, embedders, modulation, final layer.

The layer set is Open-Sora 1.0's, itself PixArt-alpha's (our own code). Parameter names are Open-Sora 1.0's
(``x_embedder.proj``, ``t_embedder.mlp.{0,2}``, ``y_embedder.y_proj.fc{1,2}``, ``mlp.fc{1,2}``,
``final_layer.linear``, ``scale_shift_table``) so released checkpoints load strictly. The attention layers
are in ``opensora_core.models.attention``. Tokens are ``[B, N, D]`` unless stated.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from opensora_core.models.attention import trim_caption

# ----------------------------------------------------------------------------------------------------------
# Token grid and sin-cos position embeddings (built on the CPU in float64, stored as float32)
# ----------------------------------------------------------------------------------------------------------


def token_grid(size, patch_size) -> tuple[int, int, int]:
    """Latent (T, H, W) -> token grid (T', H', W'); rounded up, as the patch embedding pads."""
    return tuple(-(-int(s) // p) for s, p in zip(size, patch_size))


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """[M] positions -> [M, dim]: ``sin(p w_i)`` on the first half of the channels, ``cos(p w_i)`` on the
    second, ``w_i = 10000 ** (-i / (dim/2))`` (the MAE / DiT formula)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dim, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.reshape(-1).to(torch.float64)[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def spatial_pos_embed(dim: int, grid: tuple[int, int], scale: float = 1.0, base_size: int | None = None) -> torch.Tensor:
    """Sin-cos 2D embedding of a (gh, gw) token grid -> [1, gh*gw, dim] float32, tokens row-major.

    The first half of the channels encodes the column w / scale, the second half the row h / scale (MAE's
    grid, where ``meshgrid(w, h)`` puts w first); coordinates are formed in float32, as Open-Sora 1.0 does.
    ``scale``: space_scale 0.5 makes a 16x16 grid look like PixArt's 32x32 one (Open-Sora 1.0, 256px stage).
    ``base_size`` (optional, PixArt) rescales the coordinates to a reference grid size.
    """
    gh, gw = grid
    h = torch.arange(gh, dtype=torch.float32) / scale
    w = torch.arange(gw, dtype=torch.float32) / scale
    if base_size is not None:
        h = h * (base_size / gh)
        w = w * (base_size / gw)
    hh, ww = torch.meshgrid(h, w, indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, ww), sincos_1d(dim // 2, hh)], dim=1)
    return emb.float().unsqueeze(0)


def temporal_pos_embed(dim: int, length: int, scale: float = 1.0) -> torch.Tensor:
    """Sin-cos 1D embedding of frame index / scale -> [1, length, dim] float32."""
    positions = torch.arange(length, dtype=torch.float64) / scale
    return sincos_1d(dim, positions).float().unsqueeze(0)


def sincos_tables(dim: int, grid, space_scale: float = 1.0, time_scale: float = 1.0):
    """(spatial [1, H'W', dim], temporal [1, T', dim]) float32 tables for a token grid (T', H', W')."""
    return spatial_pos_embed(dim, grid[1:], space_scale), temporal_pos_embed(dim, grid[0], time_scale)


@functools.lru_cache(maxsize=32)
def position_tables(dim: int, grid, space_scale: float, time_scale: float, device, dtype):
    """``sincos_tables`` on ``device`` in ``dtype``, for sizes other than the one a model was built for (whose
    tables are its buffers): built once per size, not once per forward. Constants, so models can share them."""
    return tuple(table.to(device, dtype) for table in sincos_tables(dim, grid, space_scale, time_scale))


# ----------------------------------------------------------------------------------------------------------
# Embedders
# ----------------------------------------------------------------------------------------------------------


def approx_gelu() -> nn.Module:
    return nn.GELU(approximate="tanh")


class Mlp(nn.Module):
    """Linear -> activation -> Linear (parameter names fc1 / fc2, as timm's Mlp that Open-Sora 1.0 uses)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None, act=approx_gelu):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbed3D(nn.Module):
    """[B, C, T, H, W] -> [B, T'*H'*W', D] tokens in (t, h, w) row-major order; pads to a patch multiple."""

    def __init__(self, patch_size=(1, 2, 2), in_chans: int = 4, embed_dim: int = 1152):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pt, ph, pw = self.patch_size
        _, _, t, h, w = x.shape
        pad = (0, (-w) % pw, 0, (-h) % ph, 0, (-t) % pt)
        if any(pad):
            x = F.pad(x, pad)
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """[B] (possibly fractional) timesteps -> [B, D]: 256 sinusoidal frequencies, Linear -> SiLU -> Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        """[B] -> [B, dim] float32, ``[cos(t f_i), sin(t f_i)]``, ``f_i = exp(-ln(max_period) i / (dim/2))``:
        cos first (the GLIDE / DiT convention)."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size).to(dtype))


class CaptionEmbedder(nn.Module):
    """Caption [B, 1, N, C_caption] and its mask -> caption tokens [B, L, D] and the mask the blocks share.

    Caption dropout (classifier-free guidance training) replaces a whole caption by the learned null caption
    ``y_embedding`` [N_max, C_caption], a buffer: it is in the released checkpoints, and Open-Sora 1.0
    never trains it.
    """

    def __init__(self, in_channels: int, hidden_size: int, uncond_prob: float, token_num: int = 120):
        super().__init__()
        self.y_proj = Mlp(in_channels, hidden_size, hidden_size, act=approx_gelu)
        self.register_buffer("y_embedding", torch.randn(token_num, in_channels) / in_channels**0.5)
        self.uncond_prob = uncond_prob

    def null_caption(self, n_tokens: int) -> torch.Tensor:
        """The null caption for captions of ``n_tokens`` tokens: [n_tokens, C_caption]."""
        if n_tokens > self.y_embedding.shape[0]:
            raise ValueError(f"caption has {n_tokens} tokens; the model holds {self.y_embedding.shape[0]}")
        return self.y_embedding[:n_tokens]

    def token_drop(self, caption: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if force_drop_ids is None:
            drop = torch.rand(caption.shape[0], device=caption.device) < self.uncond_prob
        else:
            drop = force_drop_ids.to(caption.device) == 1
        null = self.null_caption(caption.shape[2]).to(caption.dtype)
        return torch.where(drop[:, None, None, None], null, caption)

    def forward(self, caption: torch.Tensor, mask: torch.Tensor | None, train: bool,
                force_drop_ids: torch.Tensor | None = None):
        """caption [B, 1, N, C_caption], mask [B, N] (1 = valid; one mask may serve a batch repeated for
        guidance) or None -> (tokens [B, L, D], CaptionMask or None), L <= N: see ``trim_caption``."""
        if mask is not None:
            mask = mask.reshape(mask.shape[0], -1)
            if mask.shape[0] != caption.shape[0]:
                mask = mask.repeat(caption.shape[0] // mask.shape[0], 1)
        caption, mask = trim_caption(caption, mask)
        if (train and self.uncond_prob > 0) or force_drop_ids is not None:
            caption = self.token_drop(caption, force_drop_ids)
        return self.y_proj(caption).squeeze(1), mask


# ----------------------------------------------------------------------------------------------------------
# Block pieces, final layer, unpatchify
# ----------------------------------------------------------------------------------------------------------


def t2i_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x * (1 + scale) + shift`` (adaLN-single: PixArt-alpha), in one pass over x (addcmul) instead of two."""
    return torch.addcmul(shift, x, 1 + scale)


def gated_residual(x: torch.Tensor, gate: torch.Tensor, h: torch.Tensor, drop_path: nn.Module) -> torch.Tensor:
    """``x + drop_path(gate * h)``; one addcmul pass when stochastic depth is off."""
    if drop_path.training and getattr(drop_path, "p", 0.0) > 0:
        return x + drop_path(gate * h)
    return torch.addcmul(x, gate, h)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval mode or when p == 0)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device, dtype=x.dtype)
        return x * keep.bernoulli_(1 - self.p) / (1 - self.p)


class FinalLayer(nn.Module):
    """PixArt-alpha's T2IFinalLayer: tokens [B, N, D], t [B, D] -> [B, N, prod(patch) * C_out].

    A LayerNorm without affine parameters, modulated by ``scale_shift_table[2, D] + t`` (the timestep
    embedding itself, not the blocks' t_block projection), then a linear layer.
    """

    def __init__(self, hidden_size: int, num_patch: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, num_patch * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)
        return self.linear(t2i_modulate(self.norm_final(x), shift, scale))


def unpatchify(h: torch.Tensor, grid, patch_size, out_channels: int, size=None) -> torch.Tensor:
    """[B, T'*H'*W', pt*ph*pw*C] -> [B, C, T'pt, H'ph, W'pw], cropped to the latent ``size`` if it was padded."""
    b = h.shape[0]
    nt, nh, nw = grid
    pt, ph, pw = patch_size
    out = h.reshape(b, nt, nh, nw, pt, ph, pw, out_channels)
    out = out.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, out_channels, nt * pt, nh * ph, nw * pw)
    if size is not None and tuple(out.shape[2:]) != tuple(size):
        out = out[:, :, : size[0], : size[1], : size[2]]
    return out


def _xavier_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def pixart_init_(model: nn.Module, zeroed) -> None:
    """Open-Sora 1.0 / PixArt-alpha initialisation of a model with their top-level layout (``x_embedder``,
    ``t_embedder``, ``t_block``, ``y_embedder``, ``final_layer``): xavier-uniform linears and patch
    convolution (as a linear), N(0, 0.02) for the timestep and caption MLPs, zeros for the final layer and
    the ``zeroed`` linears (the branches that start as the identity). Draws in module order: a seed gives
    the same weights to every model built in the same order."""
    model.apply(_xavier_linear)
    w = model.x_embedder.proj.weight.data
    nn.init.xavier_uniform_(w.view(w.shape[0], -1))
    for lin in (model.t_embedder.mlp[0], model.t_embedder.mlp[2], model.t_block[1]):
        nn.init.normal_(lin.weight, std=0.02)
    nn.init.normal_(model.y_embedder.y_proj.fc1.weight, std=0.02)
    nn.init.normal_(model.y_embedder.y_proj.fc2.weight, std=0.02)
    for lin in [*zeroed, model.final_layer.linear]:
        nn.init.zeros_(lin.weight)
        nn.init.zeros_(lin.bias)
