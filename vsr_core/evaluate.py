"""Quality of an upscaler on real clips: downsample (the documented degradation),
upscale through the inference path, compare with the original frames: frame by frame
(PSNR, SSIM, L1) and from frame to frame (tOF, flicker: ``metrics.temporal``).

Used by ``vsr evaluate`` and by validation during training.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vsr_core.archs import SCALE
from vsr_core.data.degradation import bicubic_downsample, crop_to_scale
from vsr_core.frames import to_tensor, to_uint8
from vsr_core.data.video_io import iter_frames
from vsr_core.inference import Upscaler
from vsr_core.metrics import psnr, ssim
from vsr_core.metrics.temporal import flicker, flicker_pair, tof, tof_pair


@dataclass(frozen=True)
class ClipScores:
    clip: str
    frames: int
    y_psnr: float
    y_ssim: float
    rgb_psnr: float
    rgb_ssim: float
    l1: float  # mean absolute error in [0,1] units
    tof: float | None = None  # HR pixels (metrics.temporal); None for a single frame
    flicker: float | None = None  # Y gray levels (metrics.temporal); None for a single frame


def center_crop(frame: np.ndarray, size: int | None) -> np.ndarray:
    if not size:
        return frame
    h, w = frame.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return frame[top : top + size, left : left + size]


def degrade_frame(hr: np.ndarray) -> np.ndarray:
    """HR uint8 frame (size a multiple of 3) -> LR uint8 frame."""
    return to_uint8(bicubic_downsample(to_tensor(hr)))


def evaluate_frames(
    upscaler: Upscaler, hr_frames: Iterator[np.ndarray], name: str = "clip", crop_border: int = SCALE
) -> tuple[ClipScores, list[np.ndarray]]:
    """Score a stream of HR frames. Returns the scores and the first (LR, SR, HR) triple
    (for a validation image). Holds only the HR frames still waiting for their output, and the
    previous (SR, HR) pair for the temporal metrics."""
    waiting: deque[np.ndarray] = deque()
    first: list[np.ndarray] = []

    def lr_stream() -> Iterator[np.ndarray]:
        for hr in hr_frames:
            hr = crop_to_scale(hr)
            waiting.append(hr)
            lr = degrade_frame(hr)
            if not first:
                first.append(lr)
            yield lr

    totals, temporal_totals = np.zeros(5), np.zeros(2)
    count = 0
    previous: tuple[np.ndarray, np.ndarray] | None = None
    for sr in upscaler.stream(lr_stream()):
        hr = waiting.popleft()
        if count == 0:
            first.extend([sr, hr])
        totals += [
            psnr(sr, hr, crop_border, y_channel=True),
            ssim(sr, hr, crop_border, y_channel=True),
            psnr(sr, hr, crop_border),
            ssim(sr, hr, crop_border),
            np.abs(sr.astype(np.float32) - hr.astype(np.float32)).mean() / 255,
        ]
        if previous is not None:
            temporal_totals += [tof_pair(previous[0], sr, previous[1], hr, crop_border),
                                flicker_pair(previous[0], sr, previous[1], hr, crop_border)]
        previous = (sr, hr)
        count += 1
    if count == 0:
        raise ValueError(f"{name}: no frames to evaluate")
    temporal = map(float, temporal_totals / (count - 1)) if count > 1 else (None, None)
    return ClipScores(name, count, *map(float, totals / count), *temporal), first


def evaluate_clip(
    upscaler: Upscaler, path: str | Path, max_frames: int | None = None, crop: int | None = None
) -> ClipScores:
    frames = (center_crop(f, crop) for f in iter_frames(path, max_frames))
    return evaluate_frames(upscaler, frames, Path(path).name)[0]


@dataclass(frozen=True)
class FrameScores:
    """An upscaled clip against its HR frames: Y-PSNR per frame, and its tOF and flicker (None for one frame)."""

    psnr: list[float]
    tof: float | None
    flicker: float | None


def score_frames(outputs: list[np.ndarray], hrs: list[np.ndarray], crop_border: int = SCALE,
                 gt_flows: list[np.ndarray] | None = None) -> FrameScores:
    """Score uint8 outputs against their HR frames (the conventions of ``evaluate_frames``);
    ``gt_flows``: ``metrics.temporal.clip_flows(hrs)`` when several outputs of the same frames are scored."""
    if len(outputs) != len(hrs):
        raise ValueError(f"{len(outputs)} outputs for {len(hrs)} HR frames")
    psnrs = [float(psnr(sr, hr, crop_border, y_channel=True)) for sr, hr in zip(outputs, hrs)]
    if len(hrs) < 2:
        return FrameScores(psnrs, None, None)
    return FrameScores(psnrs, tof(outputs, hrs, crop_border, gt_flows), flicker(outputs, hrs, crop_border))
