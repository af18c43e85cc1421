"""A live stream's frames, upscaled as they arrive (Serve's ``WS /v1/stream``).

The frames of a live stream come one by one, and each frame's window is computed as soon as
its 2 successors have arrived, in whatever forward pass the server runs next. ``LiveFrames``
keeps the frames those windows read and each frame's features, so that a frame's features
are extracted once and reused by the 5 windows that read it, as ``Upscaler.stream`` (``vsr
upscale``) does; without that every window extracted all 5 of its frames' features again.
Frames are added from the server's event loop and read from its model thread (a lock).
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vsr_core.archs import CENTER
from vsr_core.frames import to_tensor, to_uint8, window_indices
from vsr_core.inference import Upscaler, WindowResult, windows_per_pass


class LiveFrames:
    def __init__(self):
        self._lock = threading.Lock()
        self._frames: dict[int, torch.Tensor] = {}  # LR frames [3,H,W] by stream index
        self._features: dict[int, torch.Tensor] = {}  # their features, extracted by ``_model``
        self._model = None
        self.pixels = 0  # of one frame

    def add(self, index: int, frame: np.ndarray) -> None:
        tensor = to_tensor(frame)
        self.pixels = frame.shape[0] * frame.shape[1]
        with self._lock:
            self._frames[index] = tensor

    def __len__(self) -> int:
        return len(self._frames)

    def upscale(self, upscaler: Upscaler, centers: Sequence[int], length: int,
                max_batch_pixels: int = 2**62) -> list[np.ndarray]:
        """The 3x frames of the windows around ``centers`` (ascending, the stream's next ones;
        ``length``: the stream's length, or a huge number while it is not known), as uint8.
        Frames no later window reads are dropped afterwards."""
        with self._lock:
            if self._model is not upscaler.model:  # a hot-swapped model: its own features
                self._features.clear()
                self._model = upscaler.model
            frames = dict(self._frames)
        height, width = frames[centers[0]].shape[-2:]
        reuse = upscaler.reuses_features(height, width)
        # reused features: at most batch_size windows per pass (the memory budget was checked for that)
        step = windows_per_pass(height, width, max_batch_pixels, upscaler.options.batch_size if reuse else len(centers))
        outputs = []
        for i in range(0, len(centers), step):
            part = centers[i : i + step]
            if reuse:
                outputs += list(upscaler.upscale_reusing_features(part, length, frames, self._features))
            else:  # tiled, ONNX, or a model without separate feature extraction
                out = upscaler.upscale_windows(torch.stack([
                    torch.stack([frames[j] for j in window_indices(c, length)]) for c in part]))
                outputs += list(to_uint8(out, in_place=True))
        with self._lock:  # the next window (centers[-1] + 1) reads from centers[-1] - 1 on
            for j in [j for j in self._frames if j < centers[-1] + 1 - CENTER]:
                del self._frames[j]
                self._features.pop(j, None)
        return outputs


@dataclass(frozen=True)
class LiveWindow:
    """The window around frame ``center`` of a live stream of ``length`` frames (so far unknown: huge)."""

    frames: LiveFrames
    center: int
    length: int

    @property
    def pixels(self) -> int:
        return self.frames.pixels


def live_passes(windows: Sequence[LiveWindow]) -> list[list[int]]:
    """Which of ``windows`` run together, as lists of their indices: the windows of one stream
    (its frames, its length so far), so that they reuse that stream's features."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, window in enumerate(windows):
        groups.setdefault((id(window.frames), window.length), []).append(i)
    return list(groups.values())


def upscale_live_pass(upscaler: Upscaler, windows: Sequence[LiveWindow],
                      max_batch_pixels: int = 2**62) -> list[WindowResult]:
    """Windows of one live stream (``live_passes``) -> their results, in order (raises what the pass raises)."""
    first = windows[0]
    outputs = first.frames.upscale(upscaler, [window.center for window in windows], first.length, max_batch_pixels)
    return [WindowResult(output, len(windows)) for output in outputs]
