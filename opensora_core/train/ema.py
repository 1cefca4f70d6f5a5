"""Exponential moving average of the weights, kept in fp32 whatever the training precision (Open-Sora 1.0)."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """`shadow = decay * shadow + (1 - decay) * weights` after each optimizer step.

    Floating-point parameters and buffers are tracked (buffers such as the null caption `y_embedding` are
    copied, not averaged). `state_dict()` has the model's keys, so EMA weights load into a fresh model.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {
            k: v.detach().to(torch.float32).clone() for k, v in model.state_dict().items() if v.is_floating_point()
        }
        self._param_names = {n for n, _ in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, value in model.state_dict().items():
            if name not in self.shadow:
                continue
            if name in self._param_names:
                self.shadow[name].lerp_(value.detach().to(torch.float32), 1.0 - self.decay)
            else:
                self.shadow[name].copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.contiguous() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:5]}")
        for k in self.shadow:
            self.shadow[k].copy_(state[k].to(torch.float32))
