"""Open-Sora 1.0's own STDiT, imported from a checkout of hpcaitech/Open-Sora (tag v1.0.0), for benchmarks.

Nothing of Open-Sora is copied here: ``load_reference_stdit(DIR)`` imports ``opensora/models/stdit/stdit.py``
and ``opensora/models/layers/blocks.py`` from the checkout the user points at. Those files import xformers,
timm and mmengine at module level; where those are not installed, small stand-ins of our own are placed in
``sys.modules`` (and removed again afterwards), giving only what the STDiT path touches:

- ``xformers.ops.memory_efficient_attention`` + ``fmha.BlockDiagonalMask.from_seqlens``: Open-Sora's
  cross-attention packs the batch into one sequence; the stand-in attends block by block with
  ``scaled_dot_product_attention`` (one call per sample, the work xformers does, no dense mask).
- ``timm.models.vision_transformer.Mlp`` (fc1 -> act -> fc2, timm's parameter names) and
  ``timm.models.layers.DropPath`` (only built when drop_path > 0, which the benchmark never asks for).
- ``mmengine.registry.Registry`` (a decorator that returns what it registers).

Open-Sora's ``opensora/__init__.py`` and ``opensora/models/__init__.py`` import every model and encoder
(diffusers, transformers, colossalai...); the package objects are therefore created empty with the checkout's
folders as ``__path__``, so only the STDiT modules run. Materialise a checkout without network from a mirror:
``git --git-dir=MIRROR archive v1.0.0 | tar -x -C DIR``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

STDIT_FILE = Path("opensora/models/stdit/stdit.py")


class ReferenceCheckoutError(ValueError):
    """The folder given as the Open-Sora reference is not a usable checkout."""


# ---------------------------------------------------------------------------------------------------------
# Stand-ins for the GPU-only / heavy imports of the reference files
# ---------------------------------------------------------------------------------------------------------


class _BlockDiagonalMask:
    """What xformers' BlockDiagonalMask carries: query and key lengths of each block of a packed batch."""

    def __init__(self, q_seqlens, kv_seqlens):
        self.q_seqlens = [int(n) for n in q_seqlens]
        self.kv_seqlens = [int(n) for n in (kv_seqlens if kv_seqlens is not None else q_seqlens)]

    @classmethod
    def from_seqlens(cls, q_seqlen, kv_seqlen=None):
        return cls(q_seqlen, kv_seqlen)


def _memory_efficient_attention(q, k, v, attn_bias=None, p: float = 0.0, scale=None):
    """q [1, Mq, H, hd], k/v [1, Mk, H, hd] (xformers layout) -> [1, Mq, H, hd]; block-diagonal if masked."""
    if p:
        raise NotImplementedError("the stand-in has no attention dropout (Open-Sora 1.0 trains with p = 0)")
    q, k, v = (a.transpose(1, 2) for a in (q, k, v))  # [B, H, M, hd]
    if attn_bias is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2).contiguous()
    outs = []
    for qb, kb, vb in zip(q.split(attn_bias.q_seqlens, dim=2), k.split(attn_bias.kv_seqlens, dim=2),
                          v.split(attn_bias.kv_seqlens, dim=2)):
        outs.append(F.scaled_dot_product_attention(qb, kb, vb, scale=scale))
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous()  # xformers returns [1, Mq, H, hd] contiguous


class _Mlp(nn.Module):
    """timm's Mlp as STDiT builds it (no norm, dropout 0): parameter names fc1 / fc2."""

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0, **_):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features or in_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features or in_features, out_features or in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _DropPath(nn.Module):
    """Open-Sora builds DropPath only for drop_path > 0; the benchmark keeps Open-Sora 1.0's default of 0."""

    def __init__(self, drop_prob: float = 0.0, **_):
        super().__init__()
        if drop_prob:
            raise NotImplementedError("the stand-in has no stochastic depth (the benchmark trains with drop_path 0)")

    def forward(self, x):
        return x


class _Registry:
    def __init__(self, name, *args, **kwargs):
        self.name = name

    def register_module(self, name=None, *args, **kwargs):
        if callable(name) and not isinstance(name, str):
            return name
        return lambda obj: obj


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


def _stand_ins() -> dict[str, types.ModuleType]:
    fmha = _module("xformers.ops.fmha", BlockDiagonalMask=_BlockDiagonalMask)
    ops = _module("xformers.ops", memory_efficient_attention=_memory_efficient_attention, fmha=fmha)
    timm_layers = _module("timm.models.layers", DropPath=_DropPath)
    timm_vit = _module("timm.models.vision_transformer", Mlp=_Mlp)
    timm_models = _module("timm.models", layers=timm_layers, vision_transformer=timm_vit)
    mods = {
        "xformers": _module("xformers", ops=ops), "xformers.ops": ops, "xformers.ops.fmha": fmha,
        "timm": _module("timm", models=timm_models), "timm.models": timm_models,
        "timm.models.layers": timm_layers, "timm.models.vision_transformer": timm_vit,
        "mmengine": _module("mmengine"), "mmengine.registry": _module("mmengine.registry", Registry=_Registry),
    }
    # only where the real package is missing: a machine with xformers benchmarks against the real one
    return {name: mod for name, mod in mods.items() if importlib.util.find_spec(name.split(".")[0]) is None}


@contextlib.contextmanager
def _reference_imports(root: Path):
    """sys.modules prepared for importing the checkout's STDiT; everything added is removed on exit."""
    before = set(sys.modules)
    packages = {
        "opensora": root / "opensora",
        "opensora.models": root / "opensora/models",
        "opensora.utils": root / "opensora/utils",
    }
    added = dict(_stand_ins())
    for name, folder in packages.items():
        pkg = _module(name, __path__=[str(folder)])
        added[name] = pkg
    # load_checkpoint (from opensora.utils.ckpt_utils) is only called by the XL/2 factory with a path
    added["opensora.utils.ckpt_utils"] = _module("opensora.utils.ckpt_utils", load_checkpoint=_no_checkpoints)
    clash = [name for name in packages if name in sys.modules]
    if clash:
        raise ReferenceCheckoutError(f"a package named {clash[0]!r} is already imported; cannot load the reference")
    sys.modules.update(added)
    try:
        yield
    finally:
        for name in set(sys.modules) - before:
            del sys.modules[name]


def _no_checkpoints(*args, **kwargs):
    raise NotImplementedError("the benchmark copies our weights into the reference model instead")


def load_reference_stdit(checkout: str | Path) -> type[nn.Module]:
    """The ``STDiT`` class of an Open-Sora 1.0 checkout at ``checkout`` (the folder holding ``opensora/``)."""
    root = Path(checkout).expanduser().resolve()
    if not (root / STDIT_FILE).is_file():
        raise ReferenceCheckoutError(
            f"reference: {root} has no {STDIT_FILE}; materialise Open-Sora v1.0.0 there, e.g. "
            f"`git --git-dir=MIRROR archive v1.0.0 | tar -x -C {root}`")
    with _reference_imports(root):
        module = importlib.import_module("opensora.models.stdit.stdit")
    return module.STDiT


def build_reference_like(reference_cls: type[nn.Module], ours: nn.Module) -> nn.Module:
    """Open-Sora's STDiT with our model's sizes and a copy of its weights (strict: same state dict)."""
    ref = reference_cls(
        input_size=ours.input_size, in_channels=ours.in_channels, patch_size=ours.patch_size,
        hidden_size=ours.hidden_size, depth=ours.depth, num_heads=ours.num_heads, mlp_ratio=ours.mlp_ratio,
        class_dropout_prob=ours.y_embedder.uncond_prob, pred_sigma=ours.pred_sigma,
        no_temporal_pos_emb=ours.no_temporal_pos_emb, caption_channels=ours.caption_channels,
        model_max_length=ours.model_max_length, space_scale=ours.space_scale, time_scale=ours.time_scale,
        enable_flashattn=False, enable_layernorm_kernel=False,
    )
    ref.load_state_dict(ours.state_dict(), strict=True)
    return ref
