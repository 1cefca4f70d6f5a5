"""Named model sizes: ``build_model("STDiT-XL/2", **overrides)``.

XL/2 is Open-Sora 1.0's STDiT-XL/2 (depth 28, hidden 1152, 16 heads, patch 1x2x2) with its defaults
(4 latent channels, T5-XXL captions: 4096 channels, 120 tokens, latent 16x32x32). The tiny sizes match the
``tiny`` preset of params.yaml (hidden 128, depth 4, 4 heads); pass caption_channels, model_max_length,
in_channels and input_size for the data at hand.
"""

from __future__ import annotations

from opensora_core.models.dit import DiT
from opensora_core.models.stdit import STDiT

XL2 = dict(depth=28, hidden_size=1152, num_heads=16, patch_size=(1, 2, 2), mlp_ratio=4.0,
           in_channels=4, caption_channels=4096, model_max_length=120, input_size=(16, 32, 32))
TINY = dict(depth=4, hidden_size=128, num_heads=4, patch_size=(1, 2, 2), mlp_ratio=4.0,
            in_channels=4, caption_channels=64, model_max_length=48, input_size=(4, 8, 8))

MODELS = {
    "STDiT-XL/2": (STDiT, XL2),
    "DiT-XL/2": (DiT, XL2),
    "STDiT-tiny": (STDiT, TINY),
    "DiT-tiny": (DiT, TINY),
}

# names config.ModelConfig uses for constructor arguments
_ALIASES = {"grad_checkpoint": "enable_grad_checkpoint", "compile": "enable_compile"}


def build_model(name: str, **overrides):
    """Build a named model; ``overrides`` replace any constructor argument (None values are ignored).

    Also accepts ``grad_checkpoint`` / ``compile`` (config names) for ``enable_grad_checkpoint`` /
    ``enable_compile``.
    """
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    cls, defaults = MODELS[name]
    kwargs = dict(defaults)
    for key, value in overrides.items():
        if value is not None:
            kwargs[_ALIASES.get(key, key)] = value
    return cls(**kwargs)
