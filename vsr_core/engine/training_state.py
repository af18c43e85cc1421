"""A ``Trainer``'s state into and out of the 8-key checkpoint (``vsr_core.checkpoint`` owns the
format and where the raw and the averaged weights go): what a save writes, what a resume
restores exactly, and what a fine-tune takes (the weights only)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from vsr_core.checkpoint import split_training_state, with_raw_weights
from vsr_core.engine.schedule import retarget

if TYPE_CHECKING:
    from vsr_core.engine.trainer import Trainer


def checkpoint_of(trainer: Trainer) -> dict:
    """The 8 keys; with EMA the averaged weights are the model's and the raw ones ride in the optimizer's state."""
    weights, optimizer_state = trainer.model.state_dict(), trainer.optimizer.state_dict()
    if trainer.ema:
        weights, optimizer_state = trainer.ema.state_dict(), with_raw_weights(optimizer_state, weights)
    return {"step": trainer.step, "epoch": trainer.epoch, "model_state_dict": weights,
            "optimizer_state_dict": optimizer_state, "scaler_state_dict": trainer.scaler.state_dict(),
            "scheduler_state_dict": trainer.scheduler.state_dict(), "config": trainer.config.to_dict(),
            "training_phase": trainer.training_phase}


def check_preset(trainer: Trainer, checkpoint: dict, action: str) -> None:
    saved_preset = checkpoint["config"].get("PRESET")
    if saved_preset != trainer.config.preset:
        raise ValueError(f"cannot {action}: checkpoint has PRESET {saved_preset!r}, config has "
                         f"{trainer.config.preset!r}")


def load_weights(trainer: Trainer, checkpoint: dict) -> None:
    """Only the model's weights (a fine-tune), the averaged ones if the run averaged: the
    optimizer, schedule, step and any average start afresh."""
    check_preset(trainer, checkpoint, "fine-tune")
    trainer.model.load_state_dict(checkpoint["model_state_dict"])


def restore(trainer: Trainer, checkpoint: dict) -> dict | None:
    """Continue exactly where the checkpoint left off; returns its averaged weights (None if none)."""
    check_preset(trainer, checkpoint, "resume")
    optimizer_state, raw_weights, averaged = split_training_state(checkpoint)
    trainer.model.load_state_dict(raw_weights)
    trainer.optimizer.load_state_dict(optimizer_state)
    trainer.scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
    if trainer.use_amp and checkpoint["scaler_state_dict"]:
        trainer.scaler.load_state_dict(checkpoint["scaler_state_dict"])
    trainer.step = int(checkpoint["step"])
    trainer.training_phase = checkpoint["training_phase"]
    if trainer.step > trainer.config.max_steps:
        raise ValueError(f"cannot resume: the checkpoint is at step {trainer.step}, beyond MAX_STEPS "
                         f"{trainer.config.max_steps}")
    # The loaded states carry the checkpoint's LR, weight decay and T_max: follow this config instead.
    retarget(trainer.optimizer, trainer.scheduler, trainer.config, trainer.step)
    return averaged
