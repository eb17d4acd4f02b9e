"""Exponential moving average of a model's weights (Polyak averaging), the weights sampled from."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class EMA:
    """shadow <- d * shadow + (1 - d) * weights after every optimiser step.

    d = min(decay, (1 + n) / (10 + n)) after n updates, so early shadows are not dominated by the random
    initialisation (the warm-up of TensorFlow's ExponentialMovingAverage with num_updates). Integer buffers
    are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow: dict[str, Tensor] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        for name, value in model.state_dict().items():
            shadow = self.shadow[name]
            if shadow.is_floating_point():
                shadow.lerp_(value, 1.0 - d)
            else:
                shadow.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict[str, Tensor]:
        """The averaged weights, loadable into the model with load_state_dict."""
        return self.shadow

    def load_state_dict(self, state: dict[str, Tensor], updates: int) -> None:
        for name, value in state.items():
            self.shadow[name].copy_(value)
        self.updates = updates
