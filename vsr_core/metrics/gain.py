"""Gain over bicubic: how much a model beats plain interpolation on the same frames.

The number Tune maximises and the console shows. Absolute PSNR depends mostly on the footage
(smooth video reaches 41 dB with bicubic alone), so PSNRs of different frame sets cannot be
compared, and a model's PSNR says little without its baseline; the gain can be.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def gain_over_bicubic(model_psnr: Sequence[float], bicubic_psnr: Sequence[float]) -> float:
    """Mean over items of (model PSNR - bicubic PSNR), in dB; the items are the same frames (or
    crops) scored for the model and for bicubic, in the same order. Equal to mean(model) -
    mean(bicubic). An item where both are infinite (identical images) is rejected: its
    difference is undefined."""
    model, bicubic = np.asarray(model_psnr, dtype=np.float64), np.asarray(bicubic_psnr, dtype=np.float64)
    if model.shape != bicubic.shape or model.ndim != 1:
        raise ValueError(f"need two equally long lists of PSNRs, got {model.shape} and {bicubic.shape}")
    if model.size == 0:
        raise ValueError("no items to compare")
    if np.isnan(model).any() or np.isnan(bicubic).any() or np.isinf(bicubic).any():
        raise ValueError("PSNR values must be numbers, and bicubic's finite")
    return float(np.mean(model - bicubic))


def format_gain(gain: float) -> str:
    """``+0.35 dB`` / ``-0.12 dB``; ``n/a`` for a missing value."""
    return "n/a" if gain is None or not math.isfinite(gain) else f"{gain:+.2f} dB"
