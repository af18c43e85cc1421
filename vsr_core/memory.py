"""How much memory inference may use, and how to split work so that it stays within it.

A *memory budget* bounds the peak memory of the process (RSS on CPU, allocated device memory
on CUDA) while ``Upscaler`` runs. ``MemoryPlanner`` turns it into a plan for each call: how
many windows run in one forward pass and, when not even one whole frame fits, the size of
the tiles. The cost model is derived from the architecture (the channel count of VSR+++ v2)
and calibrated by measuring peak RSS (docs/reliability.md, "Memory budget"):

- one window in a forward pass keeps about ``ACTIVATION_CHANNEL_FACTOR`` x C float feature
  maps of its (tile's) LR size alive at the peak (the 5 frame features, the other branch's
  output, a HeavyBlock's input, hidden and output tensors), plus ``HR_MAP_FACTOR`` HR maps
  (27 floats per LR pixel: the upsampling conv, PixelShuffle, the anchor, their sum);
- every window of a call also holds frame-sized buffers for the whole call (the float input,
  the 3x output and the tile blending sums, the uint8 frames around it).

Measured (one window, peak RSS minus the process's baseline): the ``full`` preset's peak is about
10 C floats per LR pixel with glibc's default allocator; the factors here leave a margin, and
``benchmarks/bench_memory.py`` checks the peak against the budget (0.78 of it at 1280x720).
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vsr_core.archs import NUM_FRAMES, SCALE

FLOAT_BYTES = 4  # activations are float32 on CPU; fp16 autocast on CUDA needs less, so this is safe there
ACTIVATION_CHANNEL_FACTOR = 11  # C-channel float maps alive at a forward pass's peak, per window
HR_MAP_FACTOR = 5  # 3x-resolution float maps (3*SCALE*SCALE values per LR pixel) alive at the peak
HR_VALUES = 3 * SCALE * SCALE  # output values per LR pixel
# Per window and LR pixel, for the whole call: float input window, float output, blending sums
# (float), the uint8 input window and uint8 output frame that the caller holds.
FRAME_BYTES_PER_PIXEL = FLOAT_BYTES * (NUM_FRAMES * 3 + 2 * HR_VALUES) + NUM_FRAMES * 3 + HR_VALUES
# Kernel workspaces and weight copies in the backend's layout, measured at ~20 MB for the full preset.
FIXED_OVERHEAD_BYTES = 64 * 1024**2
BASELINE_ROUNDING = 64 * 1024**2  # the measured baseline is rounded up, so plans do not jitter
DEFAULT_BUDGET_FRACTION = 0.5  # of the machine's (or container's) memory when nothing else says
MIN_TILE = 16  # LR pixels of a tile beyond its overlap; smaller tiles cost far more than they save


class MemoryBudgetError(MemoryError):
    """The budget cannot hold even the smallest tile of this frame (a MemoryError, so servers
    answer it like running out of memory: 503, send smaller frames)."""


@dataclass(frozen=True)
class PassPlan:
    windows: int  # windows per forward pass
    tile_height: int = 0  # LR pixels of a tile's rows; 0 = whole frames
    tile_width: int = 0

    @property
    def tiled(self) -> bool:
        return self.tile_height > 0


def tile_length(size: int, parts: int, overlap: int) -> int:
    """The tile length that covers ``size`` with ``parts`` tiles overlapping by ``overlap``."""
    return size if parts <= 1 else -(-(size + (parts - 1) * overlap) // parts)


def model_channels(model: nn.Module) -> int | None:
    """The feature channels of a VSR+++ v2 model (its ``spec``); None for a model without
    feature maps worth counting (e.g. the bicubic baseline)."""
    spec = getattr(model, "spec", None)
    return getattr(spec, "channels", None)


def activation_bytes_per_pixel(model: nn.Module) -> int:
    """Peak bytes of one window's forward pass per LR pixel (see the module docstring)."""
    channels = model_channels(model) or 0
    return FLOAT_BYTES * (ACTIVATION_CHANNEL_FACTOR * channels + HR_MAP_FACTOR * HR_VALUES + NUM_FRAMES * 3)


def process_rss_bytes() -> int:
    """This process's resident memory now (Linux /proc; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def machine_memory_bytes() -> int:
    """Physical memory, or the container's (cgroup v2 / v1) limit when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def _ray_actor_share() -> tuple[int | None, float]:
    """(the ``memory`` Ray reserved for this actor, its share of the node's CPUs), or
    (None, 1.0) outside a Ray actor. A Serve replica's ``ray_actor_options.memory`` is the former."""
    ray = sys.modules.get("ray")  # only if this process already uses Ray
    try:
        if ray is not None and ray.is_initialized():
            assigned = ray.get_runtime_context().get_assigned_resources()
            memory = int(assigned["memory"]) if assigned.get("memory") else None
            cpus = assigned.get("CPU") or 0
            return memory, min(1.0, cpus / (os.cpu_count() or 1)) if cpus > 0 else 1.0
    except Exception:  # noqa: BLE001 - a driver, or a Ray without a runtime context here
        pass
    return None, 1.0


def default_memory_budget(device: torch.device | str = "cpu") -> int:
    """A safe budget when none is given. CUDA: 80% of the device's memory. CPU: the memory Ray
    reserved for this actor if any; else half of the machine's (or container's) memory, times
    the actor's share of the CPUs (Ray packs actors by CPUs, so several replicas or chunk
    workers on one node share its memory the same way)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(0.8 * torch.cuda.get_device_properties(device).total_memory)
    memory, cpu_share = _ray_actor_share()
    return memory or int(DEFAULT_BUDGET_FRACTION * machine_memory_bytes() * cpu_share)


def resolve_budget(budget: int | str | None, device: torch.device) -> int | None:
    """A budget setting -> bytes: a number of bytes, "auto" (``default_memory_budget``) or None."""
    if budget is None or budget == "auto":
        return None if budget is None else default_memory_budget(device)
    if isinstance(budget, str) or budget <= 0:
        raise ValueError(f"memory budget must be a number of bytes > 0, 'auto' or None, got {budget!r}")
    return int(budget)


def current_bytes(device: torch.device) -> int:
    """What the budget counts now: device memory on CUDA, the process's RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    return process_rss_bytes()


class MemoryPlanner:
    """Plans forward passes that fit ``budget_bytes``.

    ``baseline_bytes``: what the process already uses (measured when the Upscaler is made:
    the interpreter, the libraries, the weights); ``reserve_bytes``: memory the budget keeps
    free for other things (an allocator's cache of freed blocks, a server's request buffers).
    ``max_tile``: an explicit tile size is an upper bound (0: none)."""

    def __init__(self, model: nn.Module, budget_bytes: int, baseline_bytes: int, tile_overlap: int,
                 max_tile: int = 0, reserve_bytes: int = 0):
        if budget_bytes <= 0:
            raise ValueError(f"memory budget must be > 0 bytes, got {budget_bytes}")
        self.budget_bytes = int(budget_bytes)
        self.baseline_bytes = math.ceil(baseline_bytes / BASELINE_ROUNDING) * BASELINE_ROUNDING
        self.reserve_bytes = int(reserve_bytes) + FIXED_OVERHEAD_BYTES
        self.per_pixel = activation_bytes_per_pixel(model)
        self.channels = model_channels(model) or 0
        self.tile_overlap = tile_overlap
        self.max_tile = max_tile

    @property
    def available_bytes(self) -> int:
        """What one call may allocate: the budget minus the baseline and the reserve."""
        return self.budget_bytes - self.baseline_bytes - self.reserve_bytes

    def _pass_bytes(self, windows: int, height: int, width: int, tile: int) -> int:
        th, tw = (min(tile, height), min(tile, width)) if tile else (height, width)
        return windows * th * tw * self.per_pixel

    def plan(self, windows: int, height: int, width: int) -> PassPlan:
        """How to run ``windows`` windows of ``height`` x ``width`` LR pixels: all in one pass
        if they fit, else as many per pass as fit, else one per pass in tiles. Raises
        MemoryBudgetError if not even the smallest tile fits."""
        free = self.available_bytes - windows * height * width * FRAME_BYTES_PER_PIXEL
        if not (self.max_tile and max(height, width) > self.max_tile):
            fitting = free // (height * width * self.per_pixel) if free > 0 else 0
            if fitting >= 1:
                return PassPlan(int(min(windows, fitting)))
        tiles = self._tiles(height, width, free // self.per_pixel if free > 0 else 0)
        if tiles is None:
            raise MemoryBudgetError(self._too_small(windows, height, width))
        return PassPlan(1, *tiles)

    def _tiles(self, height: int, width: int, max_area: int) -> tuple[int, int] | None:
        """(tile height, tile width) of at most ``max_area`` LR pixels (and ``max_tile`` per side)
        that cover the frame with the least computation: tiles overlap by ``tile_overlap``, so
        fewer, larger tiles in the frame's shape (e.g. two halves of a wide frame) cost least."""
        overlap, cap = self.tile_overlap, self.max_tile or max(height, width)
        smallest = overlap + MIN_TILE
        best = None
        for rows in range(1, max(1, (height - overlap) // MIN_TILE) + 1):
            th = tile_length(height, rows, overlap)
            if th > cap or (rows > 1 and th < smallest):
                continue
            widest = min(max_area // th, cap, width)
            if widest < width and widest < smallest:
                continue
            cols = 1 if widest >= width else -(-(width - overlap) // (widest - overlap))
            tw = tile_length(width, cols, overlap)
            while tw > widest:  # rounding: one more column
                cols += 1
                tw = tile_length(width, cols, overlap)
            cost = rows * cols * th * tw
            if (rows > 1 or cols > 1) and (best is None or cost < best[0]):
                best = (cost, th, tw)
        return None if best is None else (best[1], best[2])

    def windows_that_fit(self, height: int, width: int, most: int) -> int:
        """How many windows (1 to ``most``) a caller should gather into one
        ``Upscaler.upscale_windows`` call: as many as run in one pass as whole frames, with their
        buffers; 1 when even one frame needs tiles (more windows would only shrink the tiles)."""
        if self.max_tile and max(height, width) > self.max_tile:
            return 1
        per_window = height * width * (self.per_pixel + FRAME_BYTES_PER_PIXEL)
        return int(max(1, min(most, self.available_bytes // per_window)))

    def fits_stream(self, batch_size: int, height: int, width: int) -> bool:
        """Whether ``Upscaler.stream``'s feature reuse fits: the features of ``batch_size`` + 4
        frames are cached, and ``batch_size`` windows are reconstructed at once (their features
        gathered into one batch per frame slot, on top of a pass's activations)."""
        cached = (batch_size + NUM_FRAMES - 1) * self.channels * FLOAT_BYTES
        per_window = self.per_pixel + NUM_FRAMES * self.channels * FLOAT_BYTES + FRAME_BYTES_PER_PIXEL
        return height * width * (cached + batch_size * per_window) <= self.available_bytes

    def _too_small(self, windows: int, height: int, width: int) -> str:
        smallest_tile = self.tile_overlap + MIN_TILE
        need = (self.baseline_bytes + self.reserve_bytes + windows * height * width * FRAME_BYTES_PER_PIXEL
                + self._pass_bytes(1, height, width, smallest_tile))
        return (f"memory budget {self.budget_bytes / 2**20:.0f} MiB is too small for {windows} window(s) of "
                f"{width}x{height} LR pixels: at least {math.ceil(need / 2**20)} MiB are needed (this process "
                f"already uses {self.baseline_bytes / 2**20:.0f} MiB); raise the budget or send smaller frames")
