"""Initialise STDiT from a PixArt-alpha image checkpoint, or load a released Open-Sora 1.0 checkpoint.

PixArt-alpha -> STDiT (Open-Sora 1.0's first stage starts from PixArt-alpha-XL/2 512x512):
- ``x_embedder.proj.weight`` [D, C, ph, pw] (2D conv) gets a temporal axis of 1: [D, C, 1, ph, pw];
- ``pos_embed`` is dropped (STDiT recomputes its sin-cos buffers for its own size and space_scale);
- ``blocks.N.attn_temp.*`` do not exist in PixArt: they keep the model's fresh init, with the output
  projection ``attn_temp.proj`` zeroed, so right after init the temporal branch adds exactly 0 and the
  video model computes the image model frame by frame;
- every other tensor is copied as is (same names and shapes).

Open-Sora 1.0 release (``OpenSora-v1-16x256x256.pth`` ...): a plain state dict or one under ``ema``;
``pos_embed``/``pos_embed_temporal`` are dropped (recomputed), everything else must match strictly.

Files are read with safetensors or ``torch.load(weights_only=True)`` only (never arbitrary pickles).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

POSITION_BUFFERS = ("pos_embed", "pos_embed_temporal")

PIXART_HINT = (
    "Download PixArt-XL-2-512x512.pth from https://huggingface.co/PixArt-alpha/PixArt-alpha "
    "and put it at {path} (or point model.init_from in params.yaml at it; init_from: null trains from scratch)."
)
OPENSORA_HINT = (
    "Download a released Open-Sora 1.0 checkpoint (e.g. OpenSora-v1-16x256x256.pth from "
    "https://huggingface.co/hpcaitech/Open-Sora) and put it at {path}."
)


def read_state_dict(path: str | Path, hint: str = "", wrappers: tuple[str, ...] = ("state_dict", "ema")) -> dict:
    """Tensors of a .safetensors or .pth/.pt file, unwrapped from the first of ``wrappers`` it holds."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}. " + hint.format(path=path))
    if path.suffix == ".safetensors":
        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in wrappers:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return state


def pixart_to_stdit(pixart_state: dict, model: torch.nn.Module) -> dict:
    """Convert a PixArt-alpha state dict into a complete state dict for ``model`` (see module docstring)."""
    target = model.state_dict()
    converted = {}
    for name, tensor in pixart_state.items():
        if name in POSITION_BUFFERS:
            continue
        if name == "x_embedder.proj.weight" and tensor.ndim == 4:
            tensor = tensor.unsqueeze(2)
        if name not in target:
            raise KeyError(f"PixArt tensor {name!r} has no place in {type(model).__name__}")
        if tuple(tensor.shape) != tuple(target[name].shape):
            raise ValueError(f"{name}: PixArt shape {tuple(tensor.shape)} != model shape {tuple(target[name].shape)}")
        converted[name] = tensor
    fresh = [n for n in target if n not in converted]
    unexplained = [n for n in fresh if n not in POSITION_BUFFERS and ".attn_temp." not in n]
    if unexplained:
        raise KeyError(f"PixArt checkpoint lacks {len(unexplained)} tensors, e.g. {unexplained[:5]}")
    for name in fresh:
        tensor = target[name]
        if ".attn_temp.proj." in name:
            tensor = torch.zeros_like(tensor)  # the temporal branch starts as the identity
        converted[name] = tensor
    return converted


def load_pixart_checkpoint(model: torch.nn.Module, path: str | Path) -> list[str]:
    """Load a PixArt-alpha-layout image checkpoint into an STDiT; returns the names initialised fresh."""
    state = read_state_dict(path, PIXART_HINT)
    full = pixart_to_stdit(state, model)
    model.load_state_dict(full, strict=True)
    return sorted(n for n in full if n not in state and n != "x_embedder.proj.weight")


def load_opensora_checkpoint(model: torch.nn.Module, path: str | Path) -> None:
    """Strictly load a released Open-Sora 1.0 checkpoint (plain or under ``ema``) except position buffers."""
    state = {k: v for k, v in read_state_dict(path, OPENSORA_HINT, ("ema", "state_dict")).items()
             if k not in POSITION_BUFFERS}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in POSITION_BUFFERS]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {path} does not match {type(model).__name__}: "
                           f"missing {missing[:5]} ({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)})")


def load_pretrained(model: torch.nn.Module, path: str | Path) -> str:
    """Load ``model.init_from``: a PixArt image checkpoint (2D patch conv) or an Open-Sora one (3D).
    Returns "pixart" or "opensora"."""
    state = read_state_dict(path, PIXART_HINT, ("state_dict", "ema"))
    if state.get("x_embedder.proj.weight", torch.empty(0, 0, 0)).ndim == 4:
        model.load_state_dict(pixart_to_stdit(state, model), strict=True)
        return "pixart"
    load_opensora_checkpoint(model, path)
    return "opensora"
