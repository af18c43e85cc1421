"""What observers of a run see: the per-step and per-validation metrics, and the hooks
``Trainer.fit`` calls. Hooks observe; to change a running trainer they post a request
(``trainer.request_*``), which ``fit`` takes at the next step boundary."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from vsr_core.engine.trainer import Trainer


@dataclass
class StepMetrics:
    step: int
    epoch: int
    loss_l1: float
    loss_perceptual: float
    loss_total: float
    lr: float
    samples_per_s: float
    skipped: bool  # the loss was NaN/Inf: no update this step
    skipped_steps: int  # total so far in this run


@dataclass
class ValidationMetrics:
    step: int
    psnr: float  # Y channel, crop_border 3
    ssim: float  # Y channel
    l1: float  # mean absolute error of the output, [0,1] units
    bicubic_psnr: float  # the baseline on the same frames
    per_clip: dict[str, dict[str, float]] = field(default_factory=dict)
    image: np.ndarray | None = None  # LR-bicubic | output | GT of the first validation item
    # temporal consistency (metrics.temporal) on a few consecutive frames per validation clip, kept out of
    # the gain; lower is better; None when no validation clip has two frames
    tof: float | None = None  # HR pixels
    flicker: float | None = None  # Y gray levels
    bicubic_tof: float | None = None  # the baseline on the same frames
    bicubic_flicker: float | None = None

    @property
    def gain(self) -> float:
        """Gain over bicubic in dB on the same items (``metrics.gain_over_bicubic``): the number to maximise."""
        return self.psnr - self.bicubic_psnr


class TrainingHooks:
    """Observers of a run. Override what you need; every method is optional."""

    def on_step(self, trainer: "Trainer", metrics: StepMetrics) -> None: ...

    def on_validation(self, trainer: "Trainer", metrics: ValidationMetrics) -> None: ...

    def on_checkpoint(self, trainer: "Trainer", path: Path) -> None: ...

    def should_stop(self, trainer: "Trainer") -> bool:
        return False

    def wait_while_paused(self, trainer: "Trainer", timeout: float) -> None:
        """Called again and again while ``fit`` is paused at a step boundary; may block up to
        ``timeout`` seconds (e.g. waiting for a key). The default sleeps until a request is posted,
        so a paused run uses no CPU."""
        trainer.requests.wait(timeout)
