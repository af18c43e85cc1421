"""The one inference path: used by ``vsr upscale``, ``vsr evaluate``, training
validation and the Serve app.

``Upscaler.upscale_windows`` runs the model on a batch of 5-frame windows
(optionally tile by tile); ``Upscaler.stream`` turns a stream of LR frames into a
stream of 3x frames with one sliding window per output frame, holding only the
frames the current batch of windows needs.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vsr_core.archs import CENTER, NUM_FRAMES, SCALE
from vsr_core.checkpoint import model_from_checkpoint
from vsr_core.data.degradation import bicubic_upsample, to_tensor, to_uint8


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


class BicubicBaseline(nn.Module):
    """Bicubic 3x upsampling of the center frame, with the model's interface."""

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return bicubic_upsample(frames[:, CENTER])


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile - overlap))
    return starts + [size - tile]


def _blend_ramp(length: int, start: int, size: int, overlap: int, device) -> torch.Tensor:
    """1-D weights (in HR pixels) of one tile along one axis.

    Towards an inner tile edge the first overlap/4 LR pixels get weight 0 (they lack
    context), the next overlap/2 ramp linearly to 1. Two tiles overlapping by
    ``overlap`` therefore sum to exactly 1 everywhere: no seams, no brightness steps.
    """
    pos = (torch.arange(length * SCALE, device=device, dtype=torch.float32) + 0.5) / SCALE
    ones = torch.ones_like(pos)
    ramp = max(overlap / 2, 1e-6)
    left = ((pos - overlap / 4) / ramp).clamp(0, 1) if start > 0 else ones
    right = ((length - pos - overlap / 4) / ramp).clamp(0, 1) if start + length < size else ones
    return torch.minimum(left, right)


class Upscaler:
    """Runs a VSR model (or the bicubic baseline) on windows, clips and streams."""

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "auto",
        batch_size: int = 4,
        tile: int = 0,
        tile_overlap: int = 32,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if tile and tile <= tile_overlap:
            raise ValueError(f"tile ({tile}) must be larger than tile_overlap ({tile_overlap}), or 0 for no tiling")
        self.device = pick_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        self.tile = tile
        self.tile_overlap = tile_overlap

    @classmethod
    def from_checkpoint(cls, path: str | Path, **options) -> "Upscaler":
        model, _ = model_from_checkpoint(path)
        return cls(model, **options)

    @classmethod
    def bicubic(cls, **options) -> "Upscaler":
        return cls(BicubicBaseline(), **options)

    # --- tensors -----------------------------------------------------------------
    def _autocast(self):
        # fp16 autocast on CUDA; fp32 on CPU, where bf16 autocast is ~10x slower without native bf16.
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _run_model(self, windows: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.model(windows).float()

    @torch.inference_mode()
    def upscale_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """[B,5,3,H,W] float in [0,1] -> [B,3,3H,3W] in [0,1] (on the Upscaler's device)."""
        windows = windows.to(self.device, non_blocking=True)
        h, w = windows.shape[-2:]
        if not self.tile or (h <= self.tile and w <= self.tile):
            return self._run_model(windows).clamp_(0, 1)
        out = torch.zeros(windows.shape[0], 3, h * SCALE, w * SCALE, device=self.device)
        weight_sum = torch.zeros(1, 1, h * SCALE, w * SCALE, device=self.device)
        for y in _tile_starts(h, self.tile, self.tile_overlap):
            for x in _tile_starts(w, self.tile, self.tile_overlap):
                th, tw = min(self.tile, h), min(self.tile, w)
                pred = self._run_model(windows[..., y : y + th, x : x + tw])
                wy = _blend_ramp(th, y, h, self.tile_overlap, self.device)
                wx = _blend_ramp(tw, x, w, self.tile_overlap, self.device)
                weight = wy[:, None] * wx[None, :]
                ys, xs = slice(y * SCALE, (y + th) * SCALE), slice(x * SCALE, (x + tw) * SCALE)
                out[..., ys, xs] += pred * weight
                weight_sum[..., ys, xs] += weight
        return (out / weight_sum).clamp_(0, 1)

    def upscale_window_uint8(self, frames: np.ndarray) -> np.ndarray:
        """One window as uint8 [5,H,W,3] -> the 3x center frame as uint8 [3H,3W,3]."""
        return to_uint8(self.upscale_windows(to_tensor(frames)[None]))[0]

    # --- streams -----------------------------------------------------------------
    def stream(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Upscale a stream of HxWx3 uint8 frames into 3Hx3Wx3 uint8 frames, in order.

        Holds at most ``batch_size + 4`` decoded frames: the ones the next batch of
        windows reads. The clip length is only known at the end of the stream; it is
        needed only to reflect the last windows, which are built after that.
        """
        buffer: dict[int, torch.Tensor] = {}
        source = iter(frames)
        num_read, next_out, total = 0, 0, None
        first_shape = None
        while True:
            while total is None and num_read < next_out + self.batch_size + CENTER:
                frame = next(source, None)
                if frame is None:
                    total = num_read
                    break
                if first_shape is None:
                    first_shape = frame.shape
                elif frame.shape != first_shape:
                    raise ValueError(f"frame {num_read} has shape {frame.shape}, frame 0 had {first_shape}")
                buffer[num_read] = to_tensor(frame)
                num_read += 1
            ready = total if total is not None else num_read - CENTER
            centers = range(next_out, min(next_out + self.batch_size, ready))
            if not centers:
                return
            n = total if total is not None else 2 ** 62  # no reflection at an end not yet seen
            windows = torch.stack([torch.stack([buffer[j] for j in window_indices(c, n)]) for c in centers])
            yield from to_uint8(self.upscale_windows(windows))
            next_out = centers[-1] + 1
            for j in [j for j in buffer if j < next_out - CENTER]:
                del buffer[j]
