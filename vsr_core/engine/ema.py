"""Weight averaging: an exponential moving average (EMA) of the model's weights during training.

BasicSR's ``ema_decay``: after every optimizer step, ``average = d * average + (1 - d) * weights``.
With a warm-up, ``d = min(EMA_DECAY, (1 + step) / (10 + step))`` (``step`` = optimizer steps done
before this one), so the first averages follow the weights closely instead of remembering the
random init for thousands of steps (0.1 at the first step, 0.5 at step 8, 0.9 at step 80, 0.99 at
step 890). Validation, the checkpoint's ``model_state_dict`` and so every consumer of a checkpoint
use the average; training goes on from the raw weights (see ``vsr_core.checkpoint``).

In a data-parallel group every worker holds the same weights after a step and so computes the same
average: nothing is communicated.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def decay_at(decay: float, step: int) -> float:
    """The averaging factor of the update after ``step`` earlier optimizer steps."""
    return min(decay, (1 + step) / (10 + step))


class WeightAverage:
    """The averaged copy of a model (``.model``, no gradients), updated in place by ``update``."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA_DECAY must be in (0, 1) to average, got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move the average towards ``model``'s weights after optimizer step ``step`` + 1."""
        averaged = list(self.model.parameters())
        torch._foreach_lerp_(averaged, [p.detach() for p in model.parameters()], 1.0 - decay_at(self.decay, step))
        for mine, theirs in zip(self.model.buffers(), model.buffers()):  # running statistics are not averaged
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
