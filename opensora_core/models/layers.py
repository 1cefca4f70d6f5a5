"""Building blocks shared by STDiT and DiT (the Open-Sora 1.0 / PixArt-alpha layer set, our own code).

Every layer keeps the parameter names of Open-Sora 1.0 (``x_embedder.proj``, ``t_embedder.mlp.{0,2}``,
``y_embedder.y_proj.fc{1,2}``, ``attn.qkv``/``attn.proj``, ``cross_attn.{q_linear,kv_linear,proj}``,
``mlp.fc{1,2}``, ``scale_shift_table``, ``final_layer.linear``) so released checkpoints load strictly.

Functions (all tensors are [batch, tokens, channels] unless stated):

- ``sincos_1d(dim, positions)``: per position p, ``[sin(p * w_0..w_{D/2-1}), cos(p * w_0..)]`` with
  ``w_i = 10000 ** (-i / (D/2))`` (MAE / DiT formula), computed in float64.
- ``spatial_pos_embed(dim, (gh, gw), scale)``: tokens in row-major (h, w) order; the first half of the channels
  encodes the column index w / scale, the second half the row index h / scale (the MAE grid convention where
  ``meshgrid(w, h)`` puts w first). Grid coordinates are formed in float32, as Open-Sora does.
- ``temporal_pos_embed(dim, T, scale)``: ``sincos_1d`` of t / scale.
- ``TimestepEmbedder``: ``[cos(t f), sin(t f)]`` with ``f_i = exp(-ln(10000) i / 128)`` (256 frequencies),
  then Linear -> SiLU -> Linear.
- ``CaptionEmbedder``: optional caption dropout (replace a sample's caption with the learned null caption
  ``y_embedding`` [N, C_caption]) then Linear -> GELU(tanh) -> Linear to the hidden size.
- ``t2i_modulate(x, shift, scale) = x * (1 + scale) + shift`` (adaLN-single, PixArt).
- ``SelfAttention`` / ``CrossAttention`` / ``CaptionMask``: in ``opensora_core.models.attention``.
- ``FinalLayer`` (T2IFinalLayer): LayerNorm without affine, modulated by ``table[2, C] + t`` (the raw
  timestep embedding, not the t_block output), then Linear to ``prod(patch) * C_out``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from opensora_core.models.attention import CaptionMask, CrossAttention, SelfAttention  # noqa: F401 (re-exported)


# ----------------------------------------------------------------------------------------------------------
# Sin-cos position embeddings (computed once per input size, on the CPU, in float64, then stored as float32)
# ----------------------------------------------------------------------------------------------------------


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """[M] positions -> [M, dim] embedding: sin on the first half of the channels, cos on the second."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dim, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.reshape(-1).to(torch.float64)[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def spatial_pos_embed(dim: int, grid: tuple[int, int], scale: float = 1.0, base_size: int | None = None) -> torch.Tensor:
    """Sin-cos 2D embedding for a (gh, gw) token grid -> [1, gh*gw, dim] float32.

    ``scale`` divides the coordinates (space_scale 0.5 makes a 16x16 grid look like PixArt's 32x32 one);
    ``base_size`` (optional, PixArt) rescales the coordinates to a reference grid size.
    """
    gh, gw = grid
    h = torch.arange(gh, dtype=torch.float32) / scale
    w = torch.arange(gw, dtype=torch.float32) / scale
    if base_size is not None:
        h = h * (base_size / gh)
        w = w * (base_size / gw)
    hh, ww = torch.meshgrid(h, w, indexing="ij")  # [gh, gw], row-major tokens
    emb = torch.cat([sincos_1d(dim // 2, ww), sincos_1d(dim // 2, hh)], dim=1)
    return emb.float().unsqueeze(0)


def temporal_pos_embed(dim: int, length: int, scale: float = 1.0) -> torch.Tensor:
    """Sin-cos 1D embedding of frame index / scale -> [1, length, dim] float32."""
    positions = torch.arange(length, dtype=torch.float64) / scale
    return sincos_1d(dim, positions).float().unsqueeze(0)


# ----------------------------------------------------------------------------------------------------------
# Embedders
# ----------------------------------------------------------------------------------------------------------


def approx_gelu() -> nn.Module:
    return nn.GELU(approximate="tanh")


class Mlp(nn.Module):
    """Linear -> activation -> Linear (parameter names fc1 / fc2, as timm's Mlp)."""

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
    """[B] (possibly fractional) timesteps -> [B, D] via 256 sinusoidal frequencies and a 2-layer MLP."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        """[B] -> [B, dim] float32: cos first, then sin (GLIDE / DiT convention)."""
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
    """Caption [B, 1, N, C_caption] -> [B, 1, N, D], with caption dropout to the learned null caption.

    ``y_embedding`` [N_max, C_caption] is a buffer (it is in the checkpoints; Open-Sora never trains it).
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

    def forward(self, caption: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if (train and self.uncond_prob > 0) or force_drop_ids is not None:
            caption = self.token_drop(caption, force_drop_ids)
        return self.y_proj(caption)


def t2i_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift, in one pass over x (addcmul) instead of two."""
    return torch.addcmul(shift, x, 1 + scale)


def gated_residual(x: torch.Tensor, gate: torch.Tensor, h: torch.Tensor, drop_path: nn.Module) -> torch.Tensor:
    """x + drop_path(gate * h); one addcmul pass when stochastic depth is off."""
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
    """PixArt's T2IFinalLayer: [B, N, D] tokens, t [B, D] -> [B, N, prod(patch) * C_out]."""

    def __init__(self, hidden_size: int, num_patch: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, num_patch * out_channels)
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)
        return self.linear(t2i_modulate(self.norm_final(x), shift, scale))
