"""The learning-rate schedule: a cosine from 10**LR_EXPONENT down to ETA_MIN over MAX_STEPS.

One owner for it, because three places set it up: a new run, a live config change and a
resume (whose checkpoint carries the optimizer and scheduler state of the *old* config)."""
from __future__ import annotations

import math

import torch

from vsr_core.config import TrainConfig

ETA_MIN = 1e-7


def cosine_lr(base_lr: float, step: int, max_steps: int) -> float:
    """The LR after ``step`` optimizer steps."""
    progress = math.pi * min(step, max_steps) / max_steps
    return ETA_MIN + (base_lr - ETA_MIN) * (1 + math.cos(progress)) / 2


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.max_steps, eta_min=ETA_MIN)


def retarget(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.CosineAnnealingLR,
             config: TrainConfig, step: int) -> None:
    """Make the optimizer and scheduler follow ``config`` from ``step`` on: the cosine from the
    config's LR to ETA_MIN over its MAX_STEPS, evaluated at ``step``, and its weight decay.

    Needed after loading a checkpoint's state too: ``load_state_dict`` brings back the old
    T_max (the LR would climb again after the old MAX_STEPS), the old base LR and weight decay."""
    scheduler.T_max = config.max_steps
    scheduler.base_lrs = [config.learning_rate for _ in optimizer.param_groups]
    lr = cosine_lr(config.learning_rate, step, config.max_steps)
    for group in optimizer.param_groups:
        group["initial_lr"] = config.learning_rate
        group["lr"] = lr
        group["weight_decay"] = config.weight_decay
    scheduler._last_lr = [lr for _ in optimizer.param_groups]  # what get_last_lr() reports


def is_due(step: int, every: int, max_steps: int) -> bool:
    """Whether a periodic task (validation, checkpoint) runs at this step: a multiple of
    ``every``, or the last step."""
    return step % every == 0 or step >= max_steps


def next_due(step: int, every: int, max_steps: int) -> int:
    """The next step after ``step`` at which it runs; the last step at the latest."""
    return min((step // every + 1) * every, max_steps)
