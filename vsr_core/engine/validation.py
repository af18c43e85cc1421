"""Validation during training: Y-PSNR/SSIM and L1 of the model on the validation clips
(VAL_MAX_FRAMES each, whole or center-cropped frames) through the inference path, and the
bicubic baseline on the same frames (computed once: it does not change)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vsr_core.config import TrainConfig
from vsr_core.data.datasets import load_clip, validation_sources
from vsr_core.data.degradation import bicubic_upsample
from vsr_core.engine.hooks import ValidationMetrics
from vsr_core.evaluate import center_crop, evaluate_frames
from vsr_core.frames import to_tensor, to_uint8
from vsr_core.inference import Upscaler


def _frames(source: Path, config: TrainConfig):
    clip = load_clip(source, config.val_max_frames)
    return (center_crop(np.array(frame), config.val_crop) for frame in clip)  # copy out of the memmap


class Validator:
    def __init__(self, device: torch.device, precision: str = "fp32"):
        self.device, self.precision = device, precision
        self._bicubic_psnr: float | None = None

    def __call__(self, model: torch.nn.Module, config: TrainConfig, step: int) -> ValidationMetrics:
        """Validate ``model`` (handed back in training mode) as of ``step``."""
        upscaler = Upscaler(model, device=self.device, batch_size=config.batch_size, precision=self.precision)
        sources = validation_sources(config.val_data)
        per_clip, image = {}, None
        for source in sources:
            scores, (lr, sr, hr) = evaluate_frames(upscaler, _frames(source, config), source.name)
            per_clip[source.name] = {"psnr": scores.y_psnr, "ssim": scores.y_ssim, "l1": scores.l1}
            if image is None:
                bicubic = to_uint8(bicubic_upsample(to_tensor(lr)[None]))[0]
                image = np.concatenate([bicubic, sr, hr], axis=1)
        model.train()
        if self._bicubic_psnr is None:
            bicubic = Upscaler.bicubic(device=self.device, batch_size=config.batch_size)
            self._bicubic_psnr = float(np.mean([
                evaluate_frames(bicubic, _frames(s, config), s.name)[0].y_psnr for s in sources
            ]))
        mean = {k: float(np.mean([c[k] for c in per_clip.values()])) for k in ("psnr", "ssim", "l1")}
        return ValidationMetrics(step, mean["psnr"], mean["ssim"], mean["l1"], self._bicubic_psnr, per_clip, image)
