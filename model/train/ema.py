"""Exponential moving average of model weights (the weights that get exported)."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Keeps `shadow = decay * shadow + (1 - decay) * weights` for every trained floating tensor of a model;
    frozen parameters and buffers that are not floats are copied as they are (averaging a constant in
    float32 would still drift it by rounding, e.g. a frozen VAE encoder whose latents must not change)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {name: tensor.detach().clone().float() for name, tensor in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Blend the current weights in; the decay warms up as (1 + step) / (10 + step) early on."""
        decay = min(self.decay, (1 + step) / (10 + step))
        frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
        for name, tensor in model.state_dict().items():
            shadow = self.shadow[name]
            if tensor.dtype.is_floating_point and name not in frozen:
                shadow.mul_(decay).add_(tensor.detach().float(), alpha=1.0 - decay)
            else:
                shadow.copy_(tensor)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights (float32)."""
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore averaged weights written by `state_dict`."""
        self.shadow = {name: tensor.detach().clone().float() for name, tensor in state.items()}

    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into `model` (cast to its dtypes)."""
        current = model.state_dict()
        model.load_state_dict({name: self.shadow[name].to(current[name].dtype) for name in current})
