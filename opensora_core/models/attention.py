"""Attention layers of STDiT / DiT: self-attention, caption cross-attention, and the caption mask they share.

Parameter names are Open-Sora 1.0's (``qkv``/``proj``; ``q_linear``/``kv_linear``/``proj``), so released
checkpoints load strictly; the fused qkv projection is the released layout itself.

Kernel choice (``attend``): ``scaled_dot_product_attention`` on CUDA (flash / memory-efficient kernels) and
for long sequences, whose memory then does not grow with N^2. On the CPU, the short sequences STDiT attends
over (S = H'W' tokens of a frame, T' frames, L caption tokens) go to an explicit
``matmul -> softmax -> matmul``, which was faster there than SDPA's CPU kernel (docs/results.md).

Caption mask: Open-Sora 1.0 packs the valid caption tokens of the batch and attends per sample (xformers
``BlockDiagonalMask``); a key-padding mask gives the same function per sample. ``trim_caption`` builds it
once per forward for all blocks, after dropping the padding columns that no sample uses; when no token is
left padded there is no mask at all (the unmasked kernels are the fast ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# keys at most this long use explicit attention on the CPU (see the module doc)
CPU_EXPLICIT_MAX_KEYS = 256


@dataclass(frozen=True)
class CaptionMask:
    """Key-padding mask for cross-attention, shared by every block of one forward.

    valid [B, 1, 1, L] bool (True = attend); keep [B, 1, 1] float or None: 0 for a sample with no valid
    token, whose softmax would otherwise be NaN (it attends everywhere, then its output is zeroed, as an
    empty key block of the packed form gives).
    """

    valid: torch.Tensor
    keep: torch.Tensor | None

    @classmethod
    def from_mask(cls, mask: torch.Tensor, check_empty: bool = True) -> CaptionMask:
        """[B, L] (1 = valid) -> CaptionMask; ``check_empty`` drops ``keep`` when every sample has a token
        (a host sync, paid once per forward)."""
        valid = mask.bool()
        has_token = valid.any(dim=1)
        keep = has_token[:, None, None].float()
        if check_empty and bool(has_token.all()):
            keep = None
        else:
            valid = valid | ~has_token[:, None]
        return cls(valid[:, None, None, :], keep)


def trim_caption(y: torch.Tensor, mask: torch.Tensor | None):
    """Drop the caption columns after the last valid token of any sample; mask None if none stays padded.

    y [B, 1, N, C], mask [B, N] or None -> (y [B, 1, L, C], CaptionMask or None). Padding tokens get zero
    attention weight, so the result is the same function; the cross-attention keys shrink from N to L.
    The decisions are taken on a host copy of the mask: one device-to-host transfer per forward (Open-Sora
    1.0 syncs once per forward too, for its packed sequence lengths).
    """
    if mask is None:
        return y, None
    valid = mask.detach().to("cpu", torch.bool)
    columns = valid.any(dim=0)
    length = int(columns.nonzero().max()) + 1 if bool(columns.any()) else 1
    y, valid = y[:, :, :length], valid[:, :length]
    if bool(valid.all()):
        return y, None
    has_token = valid.any(dim=1)
    keep = None if bool(has_token.all()) else has_token[:, None, None].float().to(y.device)
    valid = (valid | ~has_token[:, None])[:, None, None, :].to(y.device, non_blocking=True)
    return y, CaptionMask(valid, keep)


def _explicit_attention(q, k, v, valid=None):
    scores = torch.matmul(q, k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if valid is not None:
        scores = scores.masked_fill(~valid, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1), v)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention, q [B, H, Nq, hd], k/v [B, H, Nk, hd], valid [B, 1, 1, Nk] bool or None -> [B, H, Nq, hd]."""
    if q.device.type == "cpu" and k.shape[-2] <= CPU_EXPLICIT_MAX_KEYS and q.shape[-2] <= CPU_EXPLICIT_MAX_KEYS:
        return _explicit_attention(q, k, v, valid)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=valid)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the token axis: [B, N, D] -> [B, N, D] (one fused qkv projection)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = attend(q, k, v)  # [B, H, N, hd]
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class CrossAttention(nn.Module):
    """Video tokens [B, N, D] attend to caption tokens [B, L, D]; ``mask``: a CaptionMask, a [B, L] tensor
    (1 = valid) or None (every token valid)."""

    def __init__(self, d_model: int, num_heads: int):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.q_linear = nn.Linear(d_model, d_model)
        self.kv_linear = nn.Linear(d_model, d_model * 2)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, mask=None) -> torch.Tensor:
        b, n, d = x.shape
        if mask is not None and not isinstance(mask, CaptionMask):
            mask = CaptionMask.from_mask(mask, check_empty=False)  # no host sync per block
        q = self.q_linear(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv_linear(cond).view(b, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = attend(q, k, v, None if mask is None else mask.valid)
        out = out.transpose(1, 2).reshape(b, n, d)
        if mask is not None and mask.keep is not None:
            out = out * mask.keep.to(out.dtype)
        return self.proj(out)
