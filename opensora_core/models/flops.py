"""FLOP count of STDiT / DiT per sample, for MFU (model FLOPs utilisation) logging and benchmarks.

Counted: every matmul, 2 FLOPs per multiply-add; a training step is forward + backward = 3 x forward
(the backward pass does two matmuls per forward one). Gradient-checkpoint recomputation is not counted
(the MFU convention: FLOPs the model needs, not the ones a memory trade adds). Elementwise work, norms and
softmax are left out (a few percent at XL/2 sizes). Per block, with N = T'*S video tokens, S = H'*W' per
frame, L caption tokens, D hidden, r mlp ratio:

    linears on video tokens  2 N D^2 (4 spatial + 4 temporal + 2 cross q/out + 2r MLP)   (DiT: no temporal)
    caption keys/values      2 L (2 D^2)
    attention (QK^T and AV)  spatial 4 T' S^2 D, temporal 4 S T'^2 D, cross 4 N L D     (DiT: full 4 N^2 D)

plus the patch embedding (2 N D C p), the caption MLP (2 L (C_cap D + D^2)) and the final layer
(2 N D p C_out). This is "6 x params x tokens" made exact: each weight is multiplied by the tokens it sees
(video tokens, or caption tokens for kv_linear and the caption MLP), plus the attention terms.
STDiT-XL/2 at 16x256 (latent 16x32x32, 16x16x16 tokens, 120 caption tokens): 17.1 TFLOP per sample.
"""

from __future__ import annotations

import math


def flop_terms(hidden_size: int, depth: int, grid, caption_tokens: int, *, temporal: bool = True,
               mlp_ratio: float = 4.0, patch_size=(1, 2, 2), in_channels: int = 4, out_channels: int = 8,
               caption_channels: int = 4096) -> dict[str, int]:
    """Forward FLOPs of one sample by term; ``grid`` = token grid (T', H', W'), ``temporal`` False for DiT."""
    nt, nh, nw = grid
    s, d, l = nh * nw, hidden_size, caption_tokens
    n = nt * s
    p = math.prod(patch_size)
    video_linears = (4 + (4 if temporal else 0) + 2) * d * d + 2 * d * int(d * mlp_ratio)
    if temporal:
        self_attention = 4 * nt * s * s * d + 4 * s * nt * nt * d
    else:
        self_attention = 4 * n * n * d
    return {
        "block_linears": depth * 2 * n * video_linears,
        "caption_kv": depth * 2 * l * 2 * d * d,
        "self_attention": depth * self_attention,
        "cross_attention": depth * 4 * n * l * d,
        "embedders": 2 * n * d * in_channels * p + 2 * l * (caption_channels * d + d * d),
        "final_layer": 2 * n * d * p * out_channels,
    }


def flops_per_sample(model_cfg, frames: int, size, caption_tokens: int = 120, *, caption_channels: int = 4096,
                     latent_channels: int = 4, vae_downsample: int = 8, pred_sigma: bool = True,
                     training: bool = True) -> int:
    """FLOPs per video sample of a training step (``training``) or a forward pass.

    model_cfg: anything with ``hidden_size``, ``depth``, ``patch_size``, ``mlp_ratio`` and ``name`` (a
        ``config.ModelConfig``, a model, a dict); a name starting with "DiT" counts full attention.
    frames, size: the video (frames, and pixel side or (height, width)); the latent is
        frames x size / vae_downsample (the SD VAE: /8 in space, none in time).
    caption_tokens: caption length the model attends to (T5's model_max_length, 120 for Open-Sora 1.0).
    caption_channels: the text encoder width (4096 for T5-XXL); latent_channels: the VAE's (4);
    pred_sigma: the model also predicts the variance (output channels 2 x latent).
    """
    get = model_cfg.get if isinstance(model_cfg, dict) else lambda k, default=None: getattr(model_cfg, k, default)
    height, width = (size, size) if isinstance(size, int) else size
    latent = (frames, -(-height // vae_downsample), -(-width // vae_downsample))
    patch = tuple(get("patch_size", (1, 2, 2)))
    grid = tuple(-(-int(v) // q) for v, q in zip(latent, patch))
    name = str(get("name", "") or type(model_cfg).__name__)
    terms = flop_terms(get("hidden_size"), get("depth"), grid, caption_tokens, temporal=not name.startswith("DiT"),
                       mlp_ratio=get("mlp_ratio", 4.0), patch_size=patch, in_channels=latent_channels,
                       out_channels=latent_channels * (2 if pred_sigma else 1), caption_channels=caption_channels)
    forward = sum(terms.values())
    return 3 * forward if training else forward


def model_flops(model, grid, training: bool = True) -> int:
    """FLOPs per sample of a built STDiT / DiT for a token ``grid`` (T', H', W'): forward, or forward +
    backward when ``training``. The blocks' ``attn_temp`` tells STDiT's attention from DiT's full one."""
    terms = flop_terms(model.hidden_size, model.depth, grid, model.model_max_length,
                       temporal=hasattr(model.blocks[0], "attn_temp"), mlp_ratio=model.mlp_ratio,
                       patch_size=model.patch_size, in_channels=model.in_channels,
                       out_channels=model.out_channels, caption_channels=model.caption_channels)
    return sum(terms.values()) * (3 if training else 1)
