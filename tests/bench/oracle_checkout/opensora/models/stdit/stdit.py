"""A stand-in Open-Sora checkout for CI, which has no network: ``STDiT`` is the float64 oracle of
tests/models/reference_stdit.py behind Open-Sora 1.0's constructor and forward signature.

It imports what Open-Sora's real stdit.py imports at the top (xformers, timm, mmengine), so loading it
through ``load_reference_stdit`` exercises the benchmark's stand-ins too.
"""

import importlib.util
from pathlib import Path

import torch.nn as nn
import xformers.ops  # noqa: F401  (the stand-in, where xformers is not installed)
from mmengine.registry import Registry
from timm.models.vision_transformer import Mlp  # noqa: F401

from opensora_core.models import STDiT as _LayoutSource

# the oracle lives with the model tests (tests/models/reference_stdit.py); loaded by path, as a checkout would
_ORACLE = Path(__file__).resolve().parents[5] / "models" / "reference_stdit.py"
_spec = importlib.util.spec_from_file_location("_reference_stdit_oracle", _ORACLE)
_oracle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_oracle)
reference_stdit_forward = _oracle.reference_stdit_forward

MODELS = Registry("models")


def _holder(root: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    *path, leaf = dotted.split(".")
    module = root
    for part in path:
        if not hasattr(module, part):
            module.add_module(part, nn.Module())
        module = getattr(module, part)
    return module, leaf


@MODELS.register_module()
class STDiT(nn.Module):
    def __init__(self, input_size, in_channels=4, patch_size=(1, 2, 2), hidden_size=1152, depth=28, num_heads=16,
                 mlp_ratio=4.0, caption_channels=4096, model_max_length=120, space_scale=1.0, time_scale=1.0,
                 pred_sigma=True, **_):
        super().__init__()
        # the released layout's names and shapes (values are overwritten by load_state_dict)
        layout = _LayoutSource(input_size=input_size, in_channels=in_channels, patch_size=patch_size,
                               hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                               caption_channels=caption_channels, model_max_length=model_max_length)
        buffers = {name for name, _ in layout.named_buffers()}
        for name, value in layout.state_dict().items():
            module, leaf = _holder(self, name)
            if name in buffers:
                module.register_buffer(leaf, value.clone())
            else:
                module.register_parameter(leaf, nn.Parameter(value.clone()))
        self.cfg = dict(patch_size=tuple(patch_size), hidden_size=hidden_size, num_heads=num_heads, depth=depth,
                        space_scale=space_scale, time_scale=time_scale,
                        out_channels=in_channels * (2 if pred_sigma else 1))

    def forward(self, x, timestep, y, mask=None):
        state = dict(self.named_parameters()) | dict(self.named_buffers())
        return reference_stdit_forward(state, self.cfg, x, timestep, y, mask)
