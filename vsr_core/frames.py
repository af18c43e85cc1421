"""Bottom layer: frame windows, tensor <-> uint8 conversion, device and precision choice.

Everything above (data, inference, the trainer, the video engine, Serve) uses these;
this module imports nothing of the project but the model constants.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from vsr_core.archs import CENTER, NUM_FRAMES


def window_indices(center: int, num_frames: int) -> list[int]:
    """Frame indices of the 5-frame window around ``center``, reflected at the sequence
    borders without repeating the border frame: center 0 -> [2, 1, 0, 1, 2]."""
    if num_frames <= 1:
        return [0] * NUM_FRAMES
    period = 2 * (num_frames - 1)
    indices = []
    for offset in range(-CENTER, CENTER + 1):
        j = (center + offset) % period
        indices.append(period - j if j >= num_frames else j)
    return indices


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (or uint16, deep video) [...,H,W,3] -> float [...,3,H,W] in [0,1]."""
    scale = 65535 if frames.dtype == np.uint16 else 255
    t = torch.from_numpy(np.ascontiguousarray(frames).astype(np.int32) if scale == 65535 else
                         np.ascontiguousarray(frames)).float().div_(scale)
    return t.movedim(-1, -3)


def to_uint8(frames: torch.Tensor, in_place: bool = False) -> np.ndarray:
    """float [...,3,H,W] in [0,1] -> uint8 [...,H,W,3] (clamped, rounded).

    ``in_place=True`` reuses ``frames``' memory for the arithmetic (the caller's tensor is
    overwritten); the result is the same."""
    with torch.inference_mode():
        work = frames.detach() if in_place else frames.detach().clone()
        return work.clamp_(0, 1).mul_(255).round_().to(torch.uint8).movedim(-3, -1).cpu().numpy()


def to_frames(frames: torch.Tensor, dtype: np.dtype, in_place: bool = False) -> np.ndarray:
    """float [...,3,H,W] in [0,1] -> ``dtype`` (uint8, or uint16 for deep video) [...,H,W,3]."""
    if dtype != np.uint16:
        return to_uint8(frames, in_place)
    with torch.inference_mode():
        work = frames.detach() if in_place else frames.detach().clone()
        scaled = work.clamp_(0, 1).mul_(65535).round_().to(torch.int32).movedim(-3, -1).cpu().numpy()
    return scaled.astype(np.uint16)


def pick_device(device: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU; anything else as torch names it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast(device: torch.device):
    """The precision every forward pass runs in: fp16 autocast on CUDA (training adds a
    GradScaler), fp32 on the CPU, where bf16 autocast measured ~10x slower than fp32 on a CPU
    without native bf16 (see README, "A Ray cluster and GPUs")."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()
