"""The degradation that defines the task: bicubic x3 downsampling with antialiasing.

``F.interpolate(mode="bicubic", antialias=True)`` widens the bicubic kernel by the
scale factor when downsampling, which is what MATLAB's ``imresize`` does; it plays
that role here. The LR result is rounded to 8 bits, because real LR input
(a decoded video) is 8-bit too. Frames whose size is not a multiple of 3 are
cropped (bottom/right) to one, so that HR and 3x(LR) have the same size.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vsr_core.archs import SCALE


def crop_to_scale(frame: np.ndarray, scale: int = SCALE) -> np.ndarray:
    """Crop an HxWxC frame (bottom/right) so that H and W are multiples of ``scale``."""
    h, w = frame.shape[:2]
    return frame[: h - h % scale, : w - w % scale]


def quantize(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x.clamp(0, 1) * 255) / 255


def bicubic_downsample(hr: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """[...,3,H,W] float in [0,1] (H, W multiples of ``scale``) -> [...,3,H/s,W/s], 8-bit quantised."""
    lead, (c, h, w) = hr.shape[:-3], hr.shape[-3:]
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not a multiple of {scale}; crop it first (crop_to_scale)")
    lr = F.interpolate(
        hr.reshape(-1, c, h, w), size=(h // scale, w // scale), mode="bicubic", antialias=True, align_corners=False
    )
    return quantize(lr).reshape(*lead, c, h // scale, w // scale)


def bicubic_upsample(lr: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """[N,3,h,w] -> [N,3,s*h,s*w] plain bicubic interpolation: the baseline the model must beat."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)
