"""The one inference path: used by ``vsr upscale``, ``vsr evaluate``, training
validation and the Serve app.

``Upscaler.upscale_windows`` runs the model on a batch of 5-frame windows
(optionally tile by tile); ``Upscaler.stream`` turns a stream of LR frames into a
stream of 3x frames with one sliding window per output frame, holding only the
frames the current batch of windows needs.

Every frame is read by 5 windows. For a model with per-frame feature extraction
(``extract_features`` + ``reconstruct_frames``, i.e. VSRPPPv2) ``stream`` extracts
each frame's features once and reuses them in those 5 windows; ``upscale_windows``
(independent windows, e.g. Serve requests) and tiled frames run the whole model.
``stream(frames, prefetch=N)`` additionally decodes ahead in a background thread and
runs the model in another, so decoding, the model and the caller's encoding overlap.
"""
from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from vsr_core.archs import CENTER, NUM_FRAMES, SCALE
from vsr_core.backends import BACKEND_PRECISIONS, make_runner
from vsr_core.checkpoint import model_from_checkpoint
from vsr_core.data.degradation import bicubic_upsample
from vsr_core.frames import (
    pick_device,
    resolve_precision,
    subpixels_to_frames,
    to_frames,
    to_tensor,
    to_uint8,
    window_indices,
)
from vsr_core.memory import MemoryPlanner, PassPlan, current_bytes, resolve_budget
from vsr_core.options import InferenceOptions
from vsr_core.overlap import background


# glibc mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
ALLOCATOR_CACHE_BYTES = 256 * 1024**2
_allocator_tuned = False


def tune_cpu_allocator(cache_bytes: int = ALLOCATOR_CACHE_BYTES) -> bool:
    """Let glibc's malloc keep freed blocks of up to ``cache_bytes`` for reuse (process-wide).

    By default glibc returns freed activations (and the top of its heap) to the OS, so the
    next one of that size is page-faulted and zero-filled again: ~1 GB of page faults per
    12 frames of the ``small`` preset at 180x320, which made streaming 1.2x slower (see
    benchmarks/README.md). Called by ``Upscaler`` on CPU; idempotent; a no-op off glibc or
    with the environment variable VSR_MALLOC_TUNING=0. Returns whether the allocator is tuned.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("VSR_MALLOC_TUNING", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        _allocator_tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, cache_bytes)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, cache_bytes))
    except (OSError, AttributeError):  # not glibc
        return False
    return _allocator_tuned


class BicubicBaseline(nn.Module):
    """Bicubic 3x upsampling of the center frame, with the model's interface."""

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return bicubic_upsample(frames[:, CENTER])


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

    def __init__(self, model: nn.Module, options: InferenceOptions | None = None, **overrides: Any):
        """``options`` (default ``InferenceOptions()``) with ``overrides`` (its fields, e.g.
        ``device="cpu", batch_size=8``) applied; ``self.options`` is what it was built with.

        ``memory_budget`` (bytes, or "auto" for a safe default derived from this machine or Ray
        actor, see ``vsr_core.memory``): each call then runs as many windows per pass as fit, in
        tiles when not even one whole frame fits (``tile`` becomes an upper bound)."""
        self.options = replace(options or InferenceOptions(), **overrides)
        self.device = pick_device(self.options.device)
        self.model = model.to(self.device).eval()
        allocator_cache = ALLOCATOR_CACHE_BYTES if self.device.type == "cpu" and tune_cpu_allocator() else 0
        budget_bytes = resolve_budget(self.options.memory_budget, self.device)
        self.memory = None if budget_bytes is None else MemoryPlanner(
            self.model, budget_bytes, current_bytes(self.device), self.options.tile_overlap,
            max_tile=self.options.tile, reserve_bytes=allocator_cache)  # the tuned allocator's cache counts as used
        # precision and backend: what runs in this process (options.precision "auto" is resolved by each
        # process that runs the model, e.g. a chunk worker on another node; the bicubic baseline always
        # runs on torch).
        backend = self.options.backend
        self.precision = resolve_precision(self.options.precision, self.device, allowed=BACKEND_PRECISIONS[backend],
                                           where=f"with the {backend} backend")
        self.runner = make_runner(backend, self.model, self.device, self.precision)
        self.backend = self.runner.name
        self.checkpoint_info: dict | None = None  # set by from_checkpoint

    @classmethod
    def from_checkpoint(cls, path: str | Path, options: InferenceOptions | None = None,
                        **overrides: Any) -> "Upscaler":
        model, checkpoint = model_from_checkpoint(path)
        upscaler = cls(model, options, **overrides)
        # What the file says about itself (no weights), so callers need not load it twice.
        upscaler.checkpoint_info = {k: checkpoint[k] for k in ("step", "epoch", "training_phase", "config")}
        return upscaler

    @classmethod
    def bicubic(cls, options: InferenceOptions | None = None, **overrides: Any) -> "Upscaler":
        """The bicubic baseline through the same pipeline; in fp32 (the exact reference) unless
        ``options`` or ``overrides`` say otherwise."""
        return cls(BicubicBaseline(), options or InferenceOptions(precision="fp32"), **overrides)

    # --- tensors -----------------------------------------------------------------
    def _run_model(self, windows: torch.Tensor) -> torch.Tensor:
        return self.runner(windows)

    @torch.inference_mode()
    def upscale_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """[B,5,3,H,W] float in [0,1] -> [B,3,3H,3W] in [0,1] (on the Upscaler's device)."""
        windows = windows.to(self.device, non_blocking=True)
        b, h, w = windows.shape[0], *windows.shape[-2:]
        plan = self.memory.plan(b, h, w) if self.memory is not None else PassPlan(b, self.options.tile, self.options.tile)
        if plan.windows >= b:
            return self._upscale_pass(windows, plan.tile_height, plan.tile_width)
        out = torch.empty(b, 3, h * SCALE, w * SCALE, device=self.device)
        for i in range(0, b, plan.windows):
            out[i : i + plan.windows] = self._upscale_pass(windows[i : i + plan.windows], plan.tile_height,
                                                           plan.tile_width)
        return out

    def _upscale_pass(self, windows: torch.Tensor, tile_height: int, tile_width: int) -> torch.Tensor:
        h, w = windows.shape[-2:]
        if not tile_height or (h <= tile_height and w <= tile_width):
            return self._run_model(windows).clamp_(0, 1)
        out = torch.zeros(windows.shape[0], 3, h * SCALE, w * SCALE, device=self.device)
        weight_sum = torch.zeros(1, 1, h * SCALE, w * SCALE, device=self.device)
        th, tw = min(tile_height, h), min(tile_width, w)
        for y in _tile_starts(h, th, self.options.tile_overlap):
            for x in _tile_starts(w, tw, self.options.tile_overlap):
                pred = self._run_model(windows[..., y : y + th, x : x + tw])
                wy = _blend_ramp(th, y, h, self.options.tile_overlap, self.device)
                wx = _blend_ramp(tw, x, w, self.options.tile_overlap, self.device)
                weight = wy[:, None] * wx[None, :]
                ys, xs = slice(y * SCALE, (y + th) * SCALE), slice(x * SCALE, (x + tw) * SCALE)
                out[..., ys, xs] += pred.mul_(weight)
                weight_sum[..., ys, xs] += weight
        return out.div_(weight_sum).clamp_(0, 1)  # in place: no second frame-sized tensor

    def upscale_window_uint8(self, frames: np.ndarray) -> np.ndarray:
        """One window as uint8 [5,H,W,3] -> the 3x center frame as uint8 [3H,3W,3]."""
        return to_uint8(self.upscale_windows(to_tensor(frames)[None]))[0]

    # --- streams -----------------------------------------------------------------
    def reuses_features(self, height: int, width: int) -> bool:
        """Whether ``stream`` extracts each frame's features once for frames of this size
        (needs a model with ``extract_features``/``reconstruct_subpixels``, no tiling, and room in the
        memory budget for the cached features of ``batch_size`` + 4 frames)."""
        model_ok = callable(getattr(self.model, "extract_features", None)) and callable(
            getattr(self.model, "reconstruct_subpixels", None))
        batch_size, tile = self.options.batch_size, self.options.tile
        fits = self.memory is None or self.memory.fits_stream(batch_size, height, width)
        return model_ok and fits and self.runner.reuses_features and (not tile or (height <= tile and width <= tile))

    def stream(self, frames: Iterable[np.ndarray], prefetch: int = 0, *, first: int = 0,
               total: int | None = None, start: int | None = None, stop: int | None = None) -> Iterator[np.ndarray]:
        """Upscale a stream of HxWx3 uint8 frames into 3Hx3Wx3 uint8 frames, in order (uint16
        frames, from deep video, give uint16 frames).

        Holds at most ``batch_size + 4`` decoded frames: the ones the next batch of
        windows reads (plus their features, when they are reused). The clip length is
        only known at the end of the stream; it is needed only to reflect the last
        windows, which are built after that.

        A part of a longer clip (a chunk of the video engine): ``frames`` are the clip's
        frames from index ``first`` on, ``total`` is the clip's length and the output is the
        frames ``start`` to ``stop`` - 1; ``frames`` must then include the 2 frames of context
        on each side (``first = max(0, start - 2)``, up to ``min(total, stop + 2)``). The
        windows reflect at the clip's real ends only, and batches are aligned to multiples
        of ``batch_size`` in clip indices, with each frame's features extracted on their own,
        so a chunk's frames are bit-identical to the same frames of a whole-clip stream (in
        the same process settings: CPU kernels may round differently with another number of
        threads).

        ``prefetch`` > 0: iterate ``frames`` (decode) in a background thread up to that
        many frames ahead, and run the model in a second thread up to one batch of
        outputs ahead of the caller, so that decoding, the model and whatever the caller
        does with the outputs (encoding) overlap. Memory stays bounded (prefetch +
        2 x batch_size + 4 frames). Closing the generator stops both threads. It pays off
        when the model leaves CPU cores free (CUDA, many cores); where the model already
        keeps every core busy it measured slower than the plain stream (benchmarks/).
        """
        start = first if start is None else start
        if first < 0 or start < first or (first > 0 and first > start - CENTER):
            raise ValueError(f"frames from {first} do not hold the context of frame {start} "
                             f"(they must start at max(0, start - {CENTER}))")
        windows = self._stream(frames if prefetch <= 0 else background(frames, prefetch, "vsr-decode"),
                               first, total, start, stop)
        # With prefetch the model runs in a thread of its own; closing either generator
        # closes the one it reads from, in that one's thread (see overlap.background).
        yield from windows if prefetch <= 0 else background(windows, self.options.batch_size, "vsr-model")

    def _stream(self, frames: Iterable[np.ndarray], first: int, total: int | None, start: int,
                stop: int | None) -> Iterator[np.ndarray]:
        buffer: dict[int, torch.Tensor] = {}  # LR frames [3,H,W] by clip index
        features: dict[int, torch.Tensor] = {}  # per-frame features [1,C,H,W], when reused
        source = iter(frames)
        batch_size = self.options.batch_size
        total_given = total is not None
        next_read, next_out = first, start
        first_shape = None
        reuse = False
        try:
            while True:
                end = stop if stop is not None else total  # None: until the frames run out
                batch_end = (next_out // batch_size + 1) * batch_size  # aligned batches
                if end is not None:
                    batch_end = min(batch_end, end)
                need = batch_end - 1 + CENTER  # the last frame this batch's windows read
                if total is not None:
                    need = min(need, total - 1)
                while next_read <= need:
                    frame = next(source, None)
                    if frame is None:
                        if total_given:
                            raise ValueError(f"the frames ended at frame {next_read}; frame {need} was expected")
                        total = next_read
                        batch_end = min(batch_end, total)
                        break
                    if first_shape is None:
                        first_shape, first_dtype = frame.shape, frame.dtype
                        reuse = self.reuses_features(frame.shape[0], frame.shape[1])
                    elif frame.shape != first_shape:
                        raise ValueError(f"frame {next_read} has shape {frame.shape}, frame {first} had {first_shape}")
                    buffer[next_read] = to_tensor(frame)
                    next_read += 1
                centers = range(next_out, batch_end)
                if not centers:
                    return
                n = total if total is not None else 2**62  # no reflection at an end not yet seen
                if reuse:
                    yield from self.upscale_reusing_features(centers, n, buffer, features, first_dtype)
                else:  # as many windows at a time as the memory budget holds
                    step = len(centers) if self.memory is None else self.memory.windows_that_fit(
                        first_shape[0], first_shape[1], len(centers))
                    for part in (centers[i : i + step] for i in range(0, len(centers), step)):
                        windows = torch.stack([torch.stack([buffer[j] for j in window_indices(c, n)]) for c in part])
                        yield from to_frames(self.upscale_windows(windows), first_dtype, in_place=True)
                next_out = batch_end
                for j in [j for j in buffer if j < next_out - CENTER]:
                    del buffer[j]
                    features.pop(j, None)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    @torch.inference_mode()
    def upscale_reusing_features(self, centers: Sequence[int], num_frames: int, frames: dict[int, torch.Tensor],
                                  features: dict[int, torch.Tensor], dtype: np.dtype = np.uint8) -> np.ndarray:
        """The 3x frames [B,3H,3W,3] (``dtype``: uint8, or uint16 for deep video) of the windows
        around ``centers``: features of frames not seen yet are extracted and cached in
        ``features``; cached ones are reused. Each frame's features are extracted on their own (a
        batch of 1): CPU convolutions may round differently in batches of another size, and a
        frame must get the same features whichever batch (or chunk of a video) first reads it.

        The model stops before its PixelShuffle (``reconstruct_subpixels``) and the conversion to
        ``dtype`` runs on those 27 channels, then shuffles the bytes (``subpixels_to_frames``):
        the same frames as ``to_frames(model(...))``, without a float pass over the 3x frames."""
        windows = [window_indices(c, num_frames) for c in centers]
        span = sorted({j for window in windows for j in window})
        for j in span:
            if j not in features:
                with self.runner.context():
                    features[j] = self.model.extract_features(frames[j].to(self.device, non_blocking=True)[None, None])[0]
        slots = _window_slots(_stack_features([features[j] for j in span]), span, windows)
        center = torch.stack([frames[c] for c in centers]).to(self.device, non_blocking=True)
        with self.runner.context():
            subpixels = self.model.reconstruct_subpixels(slots, center)
        return subpixels_to_frames(subpixels, dtype)  # clamped there


def _stack_features(features: list[torch.Tensor]) -> torch.Tensor:
    """[1,C,H,W] features -> [N,C,H,W] in their own layout (``torch.cat`` of channels-last tensors of
    batch 1 gives NCHW: the model would then copy every slot back to channels-last)."""
    first = features[0]
    layout = torch.channels_last if first.is_contiguous(memory_format=torch.channels_last) and \
        not first.is_contiguous() else torch.contiguous_format
    stacked = torch.empty((len(features), *first.shape[1:]), dtype=first.dtype, device=first.device,
                          memory_format=layout)
    for row, feature in zip(stacked, features):
        row.copy_(feature[0])
    return stacked


def _window_slots(stacked: torch.Tensor, span: list[int], windows: list[list[int]]) -> list[torch.Tensor]:
    """The model's 5 inputs for a batch of windows: slot k holds frame ``window[k]`` of each
    window, taken from ``stacked`` (the features of the frames ``span``, in that order). Away from
    the clip's ends a slot reads consecutive frames: a view, no copy (each frame's features are
    copied once per batch, into ``stacked``, instead of once per window that reads them)."""
    position = {j: i for i, j in enumerate(span)}
    slots = []
    for k in range(NUM_FRAMES):
        rows = [position[window[k]] for window in windows]
        if rows == list(range(rows[0], rows[0] + len(rows))):
            slots.append(stacked[rows[0] : rows[0] + len(rows)])
        else:  # reflected at an end of the clip
            slots.append(stacked[torch.tensor(rows, device=stacked.device)])
    return slots


def windows_per_pass(height: int, width: int, max_batch_pixels: int, most: int) -> int:
    return max(1, min(most, max_batch_pixels // max(1, height * width)))


class WindowResult(NamedTuple):
    """One window's 3x center frame, and how many windows the forward pass that computed it held."""

    frame: np.ndarray
    batch_size: int


def window_passes(upscaler: Upscaler, windows: Sequence[np.ndarray],
                  max_batch_pixels: int = 2**62) -> list[list[int]]:
    """Which of the [5,H,W,3] ``windows`` (possibly of different sizes) share a forward pass, as
    lists of their indices: windows of the same size, at most ``max_batch_pixels`` LR pixels (and
    what the memory budget holds) per pass; different sizes run separately."""
    groups: dict[tuple, list[int]] = {}
    for i, window in enumerate(windows):
        groups.setdefault(window.shape, []).append(i)
    passes = []
    for shape, indices in groups.items():
        step = windows_per_pass(shape[1], shape[2], max_batch_pixels, len(indices))
        if upscaler.memory is not None:
            step = upscaler.memory.windows_that_fit(shape[1], shape[2], step)
        passes += [indices[k : k + step] for k in range(0, len(indices), step)]
    return passes


def upscale_pass(upscaler: Upscaler, windows: Sequence[np.ndarray]) -> list[WindowResult]:
    """Same-size uint8 windows [5,H,W,3] in one ``upscale_windows`` call -> their results, in order."""
    outputs = to_uint8(upscaler.upscale_windows(to_tensor(np.stack(windows))))
    return [WindowResult(output, len(windows)) for output in outputs]


def upscale_grouped(upscaler: Upscaler, windows: Sequence[np.ndarray],
                    max_batch_pixels: int = 2**62) -> list[WindowResult]:
    """[5,H,W,3] uint8 windows of possibly different sizes -> their results, in order, computed
    pass by pass (``window_passes``). A failing pass raises; the Serve queue (``serve.batching``)
    runs the passes one by one, so that a failure fails only the windows of its pass."""
    results: dict[int, WindowResult] = {}
    for indices in window_passes(upscaler, windows, max_batch_pixels):
        results.update(zip(indices, upscale_pass(upscaler, [windows[i] for i in indices])))
    return [results[i] for i in range(len(windows))]
