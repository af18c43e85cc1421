"""Validation during training: the model's Y-PSNR/SSIM and L1 on the validation set
(``vsr_core.data.validation_set``: frames spread over the validation clips, the most detailed
crops of them, and the held-out end of the training clips) through the inference path, and
its gain over bicubic on the same items (bicubic is scored once: it does not change)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from vsr_core.archs import SCALE
from vsr_core.config import TrainConfig
from vsr_core.data.degradation import bicubic_upsample
from vsr_core.data.validation_set import ValidationItem, build_validation_set, stack_windows, validation_clips
from vsr_core.engine.hooks import ValidationMetrics
from vsr_core.frames import to_tensor, to_uint8
from vsr_core.inference import Upscaler
from vsr_core.metrics import gain_over_bicubic, psnr, ssim


def validation_items(config: TrainConfig) -> list[ValidationItem]:
    whole, held_out = validation_clips(config)
    return build_validation_set(whole, held_out, config.val_max_frames, config.val_crop, config.val_crops_per_frame)


def score_items(upscaler: Upscaler, items: list[ValidationItem], batch_size: int) -> list[dict]:
    """Per item: Y-PSNR, Y-SSIM, L1 ([0,1] units) and the output (uint8), items of one size batched."""
    by_shape: dict[tuple, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        by_shape[item.lr_window.shape].append(i)
    scores: list[dict] = [{} for _ in items]
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            outputs = to_uint8(upscaler.upscale_windows(stack_windows([items[i] for i in chunk])), in_place=True)
            for i, sr in zip(chunk, outputs):
                hr = items[i].hr
                scores[i] = {"psnr": psnr(sr, hr, SCALE, y_channel=True), "ssim": ssim(sr, hr, SCALE, y_channel=True),
                             "l1": float(np.abs(sr.astype(np.float32) - hr.astype(np.float32)).mean() / 255), "sr": sr}
    return scores


class Validator:
    def __init__(self, device: torch.device, precision: str = "fp32"):
        self.device, self.precision = device, precision
        self._items: list[ValidationItem] | None = None
        self._bicubic: list[dict] | None = None
        self._key: tuple | None = None

    def _prepare(self, config: TrainConfig) -> None:
        key = (tuple(config.train_data), tuple(config.val_data), config.val_max_frames, config.holdout_frames,
               config.holdout_fraction, config.train_on_val_data, config.val_crop, config.val_crops_per_frame,
               config.max_frames_per_clip)
        if key != self._key:
            self._items = validation_items(config)
            self._bicubic = score_items(Upscaler.bicubic(device=self.device), self._items, config.batch_size)
            self._key = key

    def __call__(self, model: torch.nn.Module, config: TrainConfig, step: int) -> ValidationMetrics:
        """Validate ``model`` (handed back in training mode) as of ``step``."""
        self._prepare(config)
        items, bicubic = self._items, self._bicubic
        scores = score_items(Upscaler(model, device=self.device, precision=self.precision), items, max(config.batch_size, 8))
        model.train()
        per_clip: dict[str, dict[str, float]] = {}
        for clip in dict.fromkeys(item.clip for item in items):
            picked = [i for i, item in enumerate(items) if item.clip == clip]
            per_clip[clip] = {k: float(np.mean([scores[i][k] for i in picked])) for k in ("psnr", "ssim", "l1")}
            per_clip[clip]["gain"] = gain_over_bicubic([scores[i]["psnr"] for i in picked],
                                                       [bicubic[i]["psnr"] for i in picked])
        mean = {k: float(np.mean([s[k] for s in scores])) for k in ("psnr", "ssim", "l1")}
        first = items[0]
        image = np.concatenate([
            to_uint8(bicubic_upsample(to_tensor(first.lr_window[len(first.lr_window) // 2])[None]))[0],
            scores[0]["sr"], first.hr], axis=1)
        bicubic_psnr = float(np.mean([b["psnr"] for b in bicubic]))
        return ValidationMetrics(step, mean["psnr"], mean["ssim"], mean["l1"], bicubic_psnr, per_clip, image)
