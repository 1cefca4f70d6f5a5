"""A slow, literal re-derivation of Open-Sora 1.0 STDiT's forward function from a state dict (test oracle).

Written independently of opensora_core.models, step by step as Open-Sora 1.0 computes it: numpy MAE-style
sin-cos tables (meshgrid with w first), explicit softmax attention, and cross-attention that packs the
valid caption tokens of the whole batch and attends per sample to its own block (what xformers'
BlockDiagonalMask does), with Python loops. Eval mode (no caption dropout), float64 throughout.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _sincos_from_grid(dim, pos):
    omega = np.arange(dim // 2, dtype=np.float64)
    omega /= dim / 2.0
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def ref_2d_pos(dim, grid_hw, scale):
    gh, gw = grid_hw
    grid_h = np.arange(gh, dtype=np.float32) / scale
    grid_w = np.arange(gw, dtype=np.float32) / scale
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0)  # w first
    grid = grid.reshape([2, 1, gw, gh])
    emb = np.concatenate([_sincos_from_grid(dim // 2, grid[0]), _sincos_from_grid(dim // 2, grid[1])], axis=1)
    return torch.from_numpy(emb).float()


def ref_1d_pos(dim, length, scale):
    pos = np.arange(0, length)[..., None] / scale
    return torch.from_numpy(_sincos_from_grid(dim, pos)).float()


def _lin(sd, name, x):
    return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def _layernorm(x, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps)


def _gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _softmax_attention(q, k, v):
    """q [Nq, H, hd], k/v [Nk, H, hd] -> [Nq, H, hd]."""
    scale = q.shape[-1] ** -0.5
    scores = torch.einsum("qhd,khd->hqk", q * scale, k)
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def _self_attn(sd, prefix, seq, heads):
    """seq [N, D] -> [N, D]."""
    n, d = seq.shape
    qkv = _lin(sd, prefix + ".qkv", seq).reshape(n, 3, heads, d // heads)
    out = _softmax_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2]).reshape(n, d)
    return _lin(sd, prefix + ".proj", out)


def reference_stdit_forward(sd, cfg, x, timestep, y, mask=None):
    """sd: state dict (float64 tensors); cfg: dict(patch_size, hidden_size, num_heads, depth, space_scale,
    time_scale, out_channels); x [B, C, T, H, W]; timestep [B]; y [B, 1, N, Cc]; mask [B, N] or None."""
    sd = {k: v.double() for k, v in sd.items()}
    x, y = x.double(), y.double()
    pt, ph, pw = cfg["patch_size"]
    d, heads = cfg["hidden_size"], cfg["num_heads"]
    b, c, t_in, h_in, w_in = x.shape
    nt, nh, nw = t_in // pt, h_in // ph, w_in // pw
    s = nh * nw

    tok = torch.nn.functional.conv3d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=(pt, ph, pw))
    tok = tok.flatten(2).transpose(1, 2)  # [B, T*S, D]
    pos = ref_2d_pos(d, (nh, nw), cfg["space_scale"]).double()
    tok = (tok.reshape(b, nt, s, d) + pos).reshape(b, nt * s, d)
    tpe = ref_1d_pos(d, nt, cfg["time_scale"]).double()

    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = timestep.float()[:, None] * freqs[None]
    tfreq = torch.cat([torch.cos(args), torch.sin(args)], -1).double()
    temb = _lin(sd, "t_embedder.mlp.2", torch.nn.functional.silu(_lin(sd, "t_embedder.mlp.0", tfreq)))
    t_mlp = _lin(sd, "t_block.1", torch.nn.functional.silu(temb))

    cap = _lin(sd, "y_embedder.y_proj.fc2", _gelu_tanh(_lin(sd, "y_embedder.y_proj.fc1", y.squeeze(1))))
    # pack valid caption tokens of the batch, remembering each sample's length
    if mask is None:
        lens = [cap.shape[1]] * b
        packed = cap.reshape(-1, d)
    else:
        lens = [int(v) for v in mask.sum(1)]
        packed = torch.cat([cap[i][mask[i].bool()] for i in range(b)], 0)

    for i in range(cfg["depth"]):
        p = f"blocks.{i}"
        mods = sd[p + ".scale_shift_table"][None] + t_mlp.reshape(b, 6, d)
        sh1, sc1, g1, sh2, sc2, g2 = [mods[:, j][:, None] for j in range(6)]
        xm = _layernorm(tok) * (1 + sc1) + sh1
        spatial = torch.stack([
            torch.stack([_self_attn(sd, p + ".attn", xm[bi, f * s:(f + 1) * s], heads) for f in range(nt)])
            for bi in range(b)]).reshape(b, nt * s, d)
        tok = tok + g1 * spatial
        xt = tok.reshape(b, nt, s, d)
        temporal = torch.zeros_like(xt)
        for bi in range(b):
            for loc in range(s):
                seq = xt[bi, :, loc] + (tpe if i == 0 else 0)
                temporal[bi, :, loc] = _self_attn(sd, p + ".attn_temp", seq, heads)
        tok = tok + g1 * temporal.reshape(b, nt * s, d)
        # cross attention: sample bi's queries see only its own packed block of caption tokens
        q = _lin(sd, p + ".cross_attn.q_linear", tok).reshape(b, nt * s, heads, d // heads)
        kv = _lin(sd, p + ".cross_attn.kv_linear", packed).reshape(-1, 2, heads, d // heads)
        outs, start = [], 0
        for bi in range(b):
            k_i, v_i = kv[start:start + lens[bi], 0], kv[start:start + lens[bi], 1]
            outs.append(_softmax_attention(q[bi], k_i, v_i).reshape(nt * s, d))
            start += lens[bi]
        tok = tok + _lin(sd, p + ".cross_attn.proj", torch.stack(outs))
        xm = _layernorm(tok) * (1 + sc2) + sh2
        tok = tok + g2 * _lin(sd, p + ".mlp.fc2", _gelu_tanh(_lin(sd, p + ".mlp.fc1", xm)))

    shift, scale = (sd["final_layer.scale_shift_table"][None] + temb[:, None]).chunk(2, dim=1)
    out = _lin(sd, "final_layer.linear", _layernorm(tok) * (1 + scale) + shift)
    co = cfg["out_channels"]
    out = out.reshape(b, nt, nh, nw, pt, ph, pw, co)
    out = torch.einsum("bthwpqrc->bctphqwr", out).reshape(b, co, nt * pt, nh * ph, nw * pw)
    return out.float()
