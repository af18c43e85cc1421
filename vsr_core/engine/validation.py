"""Validation during training: the model's Y-PSNR/SSIM and L1 on the validation set
(``vsr_core.data.validation_set``: frames spread over the validation clips, the most detailed
crops of them, and the held-out end of the training clips) through the inference path, and
its gain over bicubic on the same items (bicubic is scored once: it does not change).
Apart from those items, and never in the gain: tOF and flicker (``metrics.temporal``) of the
model and of bicubic on a short run of consecutive frames per validation clip."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from vsr_core.archs import SCALE
from vsr_core.config import TrainConfig
from vsr_core.data.degradation import bicubic_upsample
from vsr_core.data.validation_set import (ValidationItem, build_validation_set, stack_windows, temporal_runs,
                                          validation_clips)
from vsr_core.engine.hooks import ValidationMetrics
from vsr_core.frames import to_tensor, to_uint8
from vsr_core.inference import Upscaler
from vsr_core.metrics import gain_over_bicubic, psnr, ssim
from vsr_core.metrics.temporal import clip_flows, flicker, tof


def validation_items(config: TrainConfig) -> list[ValidationItem]:
    whole, held_out = validation_clips(config)
    return build_validation_set(whole, held_out, config.val_max_frames, config.val_crop, config.val_crops_per_frame)


def validation_runs(config: TrainConfig) -> list[list[ValidationItem]]:
    """The consecutive frames tOF and flicker are measured on (``temporal_runs``): in each clip validated
    whole and in each held-out range (its frames only, so no window reads a trained frame)."""
    whole, held_out = validation_clips(config)
    return temporal_runs(whole + [(name, frames[first:]) for name, frames, first in held_out], config.val_crop)


def upscale_items(upscaler: Upscaler, items: list[ValidationItem], batch_size: int) -> list[np.ndarray]:
    """The output (uint8) of every item, in order; items of one size batched."""
    by_shape: dict[tuple, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        by_shape[item.lr_window.shape].append(i)
    outputs: list[np.ndarray | None] = [None] * len(items)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            batch = to_uint8(upscaler.upscale_windows(stack_windows([items[i] for i in chunk])), in_place=True)
            for i, sr in zip(chunk, batch):
                outputs[i] = sr
    return outputs


def score_items(upscaler: Upscaler, items: list[ValidationItem], batch_size: int) -> list[dict]:
    """Per item: Y-PSNR, Y-SSIM, L1 ([0,1] units) and the output (uint8)."""
    return [{"psnr": psnr(sr, item.hr, SCALE, y_channel=True), "ssim": ssim(sr, item.hr, SCALE, y_channel=True),
             "l1": float(np.abs(sr.astype(np.float32) - item.hr.astype(np.float32)).mean() / 255), "sr": sr}
            for item, sr in zip(items, upscale_items(upscaler, items, batch_size))]


def temporal_scores(upscaler: Upscaler, runs: list[list[ValidationItem]], gt_flows: list[list[np.ndarray]],
                    batch_size: int) -> dict[str, dict]:
    """Per clip: tOF and flicker of its upscaled run against the ground truth (crop_border 3);
    ``gt_flows``: each run's ``clip_flows`` of its ground truth (they do not change: computed once)."""
    outputs = iter(upscale_items(upscaler, [item for run in runs for item in run], batch_size))
    scores = {}
    for run, flows in zip(runs, gt_flows, strict=True):
        srs, hrs = [next(outputs) for _ in run], [item.hr for item in run]
        scores[run[0].clip] = {"tof": tof(srs, hrs, SCALE, flows), "flicker": flicker(srs, hrs, SCALE)}
    return scores


def per_clip_scores(items: list[ValidationItem], scores: list[dict], bicubic: list[dict],
                    temporal: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Per clip: the mean Y-PSNR, Y-SSIM and L1 of its items, the gain over bicubic on them, and its
    tOF and flicker when it has a temporal run."""
    per_clip: dict[str, dict[str, float]] = {}
    for clip in dict.fromkeys(item.clip for item in items):
        picked = [i for i, item in enumerate(items) if item.clip == clip]
        per_clip[clip] = {k: float(np.mean([scores[i][k] for i in picked])) for k in ("psnr", "ssim", "l1")}
        per_clip[clip]["gain"] = gain_over_bicubic([scores[i]["psnr"] for i in picked],
                                                   [bicubic[i]["psnr"] for i in picked])
        per_clip[clip].update(temporal.get(clip, {}))
    return per_clip


def mean_temporal(temporal: dict[str, dict]) -> tuple[float | None, float | None]:
    """The mean (tOF, flicker) over clips; None without any temporal run."""
    if not temporal:
        return None, None
    return tuple(float(np.mean([s[k] for s in temporal.values()])) for k in ("tof", "flicker"))


class Validator:
    def __init__(self, device: torch.device, precision: str = "fp32"):
        self.device, self.precision = device, precision
        self._items: list[ValidationItem] | None = None
        self._runs: list[list[ValidationItem]] | None = None
        self._gt_flows: list[list[np.ndarray]] | None = None
        self._bicubic: list[dict] | None = None
        self._bicubic_temporal: dict[str, dict] | None = None
        self._key: tuple | None = None

    def _prepare(self, config: TrainConfig) -> None:
        key = (tuple(config.train_data), tuple(config.val_data), config.val_max_frames, config.holdout_frames,
               config.holdout_fraction, config.train_on_val_data, config.val_crop, config.val_crops_per_frame,
               config.max_frames_per_clip)
        if key != self._key:
            self._items, self._runs = validation_items(config), validation_runs(config)
            self._gt_flows = [clip_flows([item.hr for item in run]) for run in self._runs]
            bicubic = Upscaler.bicubic(device=self.device)
            self._bicubic = score_items(bicubic, self._items, config.batch_size)
            self._bicubic_temporal = temporal_scores(bicubic, self._runs, self._gt_flows, config.batch_size)
            self._key = key

    def __call__(self, model: torch.nn.Module, config: TrainConfig, step: int) -> ValidationMetrics:
        """Validate ``model`` (handed back in training mode) as of ``step``."""
        self._prepare(config)
        items, bicubic = self._items, self._bicubic
        upscaler = Upscaler(model, device=self.device, precision=self.precision)
        batch_size = max(config.batch_size, 8)
        scores = score_items(upscaler, items, batch_size)
        temporal = temporal_scores(upscaler, self._runs, self._gt_flows, batch_size)
        model.train()
        mean = {k: float(np.mean([s[k] for s in scores])) for k in ("psnr", "ssim", "l1")}
        first = items[0]
        image = np.concatenate([
            to_uint8(bicubic_upsample(to_tensor(first.lr_window[len(first.lr_window) // 2])[None]))[0],
            scores[0]["sr"], first.hr], axis=1)
        bicubic_psnr = float(np.mean([b["psnr"] for b in bicubic]))
        tof_mean, flicker_mean = mean_temporal(temporal)
        bicubic_tof, bicubic_flicker = mean_temporal(self._bicubic_temporal)
        return ValidationMetrics(step, mean["psnr"], mean["ssim"], mean["l1"], bicubic_psnr,
                                 per_clip_scores(items, scores, bicubic, temporal), image, tof=tof_mean,
                                 flicker=flicker_mean, bicubic_tof=bicubic_tof, bicubic_flicker=bicubic_flicker)
