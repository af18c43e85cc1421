"""TensorBoard logging with the seed's tag names."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from vsr_core.engine.health import layer_name


class TensorBoardLogger:
    def __init__(self, log_dir: str | Path):
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log_training(self, step: int, l1: float, perceptual: float, total: float, lr: float) -> None:
        self.writer.add_scalar("Training/Loss_L1", l1, step)
        self.writer.add_scalar("Training/Loss_Perceptual", perceptual, step)
        self.writer.add_scalar("Training/Loss_Total", total, step)
        self.writer.add_scalar("Training/LearningRate", lr, step)

    def log_layers(self, step: int, activity: list[float]) -> None:
        for i, value in enumerate(activity):
            self.writer.add_scalar(f"Layers/{layer_name(i)}", value, step)
        self.writer.add_histogram("Layers/ActivityDistribution", np.asarray(activity), step)

    def log_validation(self, step: int, psnr: float, ssim: float, l1: float, image: np.ndarray | None,
                       gain: float | None = None, tof: float | None = None, flicker: float | None = None) -> None:
        """``image``: HxWx3 uint8 strip (LR-bicubic | output | GT); ``gain``: dB over bicubic; ``tof``,
        ``flicker``: temporal consistency (``metrics.temporal``)."""
        if gain is not None:
            self.writer.add_scalar("Validation/Gain_over_bicubic_dB", gain, step)
        self.writer.add_scalar("Validation/PSNR", psnr, step)
        self.writer.add_scalar("Validation/SSIM", ssim, step)
        self.writer.add_scalar("Validation/L1", l1, step)
        for tag, value in (("Validation/tOF", tof), ("Validation/Flicker", flicker)):
            if value is not None:
                self.writer.add_scalar(tag, value, step)
        if image is not None:
            self.writer.add_image("Validation/LR_bicubic|Output|GT", torch.from_numpy(image), step, dataformats="HWC")
        self.writer.flush()

    def log_text(self, tag: str, text: str) -> None:
        self.writer.add_text(tag, text, 0)

    def close(self) -> None:
        self.writer.close()


class NullTensorBoard(TensorBoardLogger):
    """Writes nothing: the other workers of a data-parallel group (rank 0 writes the logs)."""

    def __init__(self) -> None:
        pass

    def log_training(self, *args) -> None: ...

    def log_layers(self, *args) -> None: ...

    def log_validation(self, *args, **kwargs) -> None: ...

    def log_text(self, *args) -> None: ...

    def close(self) -> None: ...
