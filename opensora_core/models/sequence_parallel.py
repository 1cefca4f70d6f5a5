"""Sequence parallelism for STDiT (Open-Sora 1.0 trained 64x512x512 with sp=2).

The `sp` ranks of a sequence-parallel group hold the same sample; each keeps the tokens of T'/sp frames:

    tokens [B, T'/sp * S, D] per rank
    spatial attention   local (it only mixes the S tokens of a frame)
    temporal attention  all-to-all: [B, T'/sp, S, D] -> [B, T', S/sp, D], attend over T', all-to-all back
    cross attention     local (each query token attends to the caption on its own: exact without exchange)
    MLP, final layer    local; the output is all-gathered along T (backward keeps the local slice)

Every rank of the group computes the same loss from the gathered output and seeds only its own slice of the
gradient, so summing parameter gradients over the group gives exactly the sp=1 gradient (`grad_scale()`:
DDP and FSDP average over all ranks, so the loop multiplies the loss by sp_size). The model is not edited: the
instance's `forward` and its blocks' are replaced (`enable_sequence_parallel`), reusing submodules and weights.
"""

from __future__ import annotations

import types

import torch
import torch.distributed as dist
import torch.utils.checkpoint
from torch import nn

from opensora_core.models.layers import t2i_modulate


def _a2a(x: torch.Tensor, group) -> torch.Tensor:
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x.contiguous(), group=group)
    return out


def _seq_to_spatial(x: torch.Tensor, group, sp: int) -> torch.Tensor:
    """[B, T/sp, S, D] (this rank's frames) -> [B, T, S/sp, D] (this rank's locations)."""
    b, tl, s, d = x.shape
    send = x.reshape(b, tl, sp, s // sp, d).permute(2, 0, 1, 3, 4)  # chunk j of S goes to rank j
    recv = _a2a(send, group)  # [sp, B, T/sp, S/sp, D]: frames of rank j, my locations
    return recv.permute(1, 0, 2, 3, 4).reshape(b, tl * sp, s // sp, d)


def _spatial_to_seq(x: torch.Tensor, group, sp: int) -> torch.Tensor:
    """[B, T, S/sp, D] -> [B, T/sp, S, D] (inverse of `_seq_to_spatial`)."""
    b, t, sl, d = x.shape
    send = x.reshape(b, sp, t // sp, sl, d).permute(1, 0, 2, 3, 4)  # frames chunk j goes to rank j
    recv = _a2a(send, group)  # [sp, B, T/sp, S/sp, D]: my frames, locations of rank j
    return recv.permute(1, 2, 0, 3, 4).reshape(b, t // sp, sl * sp, d)


class SeqToSpatial(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, sp):
        ctx.group, ctx.sp = group, sp
        return _seq_to_spatial(x, group, sp)

    @staticmethod
    def backward(ctx, grad):
        return _spatial_to_seq(grad, ctx.group, ctx.sp), None, None


class SpatialToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, sp):
        ctx.group, ctx.sp = group, sp
        return _spatial_to_seq(x, group, sp)

    @staticmethod
    def backward(ctx, grad):
        return _seq_to_spatial(grad, ctx.group, ctx.sp), None, None


class GatherFrames(torch.autograd.Function):
    """All-gather along dim 1 (frames); backward returns this rank's slice (every rank holds the same loss)."""

    @staticmethod
    def forward(ctx, x, group, sp, rank):
        ctx.rank, ctx.n = rank, x.shape[1]
        parts = [torch.empty_like(x) for _ in range(sp)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad):
        return grad[:, ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n].contiguous(), None, None, None


def sp_block_forward(block: nn.Module, x, y, t_mlp, mask, tpe, grid, group, sp: int):
    """STDiTBlock.forward on this rank's frames: x [B, T'/sp * S, D], grid = (T'/sp, S)."""
    b, n, d = x.shape
    t_len, s_len = grid
    mods = (block.scale_shift_table[None] + t_mlp.reshape(b, 6, d)).chunk(6, dim=1)
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods

    h = t2i_modulate(block.norm1(x), shift_msa, scale_msa).reshape(b * t_len, s_len, d)
    h = block.attn(h).reshape(b, n, d)
    x = x + block.drop_path(gate_msa * h)

    h = SeqToSpatial.apply(x.reshape(b, t_len, s_len, d), group, sp)  # [B, T', S/sp, D]
    t_full, s_loc = h.shape[1], h.shape[2]
    h = h.transpose(1, 2).reshape(b * s_loc, t_full, d)
    if tpe is not None:
        h = h + tpe
    h = block.attn_temp(h).reshape(b, s_loc, t_full, d).transpose(1, 2)
    h = SpatialToSeq.apply(h.contiguous(), group, sp).reshape(b, n, d)
    x = x + block.drop_path(gate_msa * h)

    x = x + block.cross_attn(x, y, mask)
    h = block.mlp(t2i_modulate(block.norm2(x), shift_mlp, scale_mlp))
    return x + block.drop_path(gate_mlp * h)


def sp_forward(self, x, timestep, y, mask=None, force_drop_ids=None):
    """Drop-in for STDiT.forward (same arguments and result) under sequence parallelism."""
    group, sp, rank = self._sp_group, self._sp_size, self._sp_rank
    h, t, t_mlp, y, mask, tpe, grid = self.embed_inputs(x, timestep, y, mask, force_drop_ids)
    t_tokens, s_tokens = h.shape[1], h.shape[2]
    if t_tokens % sp or s_tokens % sp:
        raise ValueError(f"sequence parallel size {sp} must divide the {t_tokens} frames and {s_tokens} locations")
    t_loc = t_tokens // sp
    h = h[:, rank * t_loc:(rank + 1) * t_loc].flatten(1, 2)  # this rank's frames [B, T'/sp * S, D]

    for i, block in enumerate(self.blocks):
        # through the block's __call__ (its forward is sp_block_forward): module hooks such as FSDP2's
        # all-gather of the block's weights run as in the plain forward
        args = (h, y, t_mlp, mask, tpe if i == 0 else None, (t_loc, s_tokens), group, sp)
        if self.grad_checkpoint and self.training and torch.is_grad_enabled():
            h = torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
        else:
            h = block(*args)

    h = self.final_layer(h, t)  # [B, T'/sp * S, p * C_out]
    h = GatherFrames.apply(h.unflatten(1, (t_loc, s_tokens)), group, sp, rank).flatten(1, 2)
    return self.unpatchify(h, grid, x.shape[2:]).float()


def new_sp_groups(sp_size: int):
    """Consecutive ranks form a group: (0..sp-1), (sp..2sp-1), ...; returns (this rank's group, its rank in it).
    Every rank must call it (group creation is collective)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % sp_size:
        raise ValueError(f"sp_size {sp_size} does not divide the world size {world}")
    mine = None
    for start in range(0, world, sp_size):
        g = dist.new_group(list(range(start, start + sp_size)))
        if start <= rank < start + sp_size:
            mine = g
    return mine, rank % sp_size


def enable_sequence_parallel(model: nn.Module, sp_size: int, group=None, sp_rank: int | None = None) -> nn.Module:
    """Make `model` (an STDiT) run sequence-parallel over `sp_size` ranks (new consecutive groups by default)."""
    if not hasattr(model, "blocks") or not all(hasattr(b, "attn_temp") for b in model.blocks):
        raise TypeError(f"sequence parallelism supports STDiT, not {type(model).__name__}")
    if group is None:
        group, sp_rank = new_sp_groups(sp_size)
    model._sp_group, model._sp_size, model._sp_rank = group, sp_size, sp_rank
    model.forward = types.MethodType(sp_forward, model)
    for block in model.blocks:
        block.forward = types.MethodType(sp_block_forward, block)
    return model
