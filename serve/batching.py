"""The replica's one model thread and the windows waiting for it: every window of every
request and stream (``/v1/upscale``, ``WS /v1/stream``) is batched here with the others.

A forward pass starts when a pass's worth of windows wait (``max_batch_size`` windows or
``max_batch_pixels`` LR pixels), or ``batch_wait_timeout_s`` after the oldest waiting window
arrived, whichever is first, and only once the model thread is free; it takes the waiting
windows, oldest first, up to that much (same model; ``upscale_grouped`` stacks same-size
windows). A stream's windows come as
``LiveWindow``s and reuse their stream's frame features (``vsr_core.live``).

Why not ``@serve.batch``: it closes a batch ``batch_wait_timeout_s`` after its first window
also while the model is still busy with the previous batch, so under steady load it cut the
queue into small batches that then ran one after another (8 HTTP clients: passes of 2-4
windows with 8 waiting; benchmarks/README.md). Here the batch is formed when the model is free.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from vsr_core.inference import Upscaler, upscale_grouped
from vsr_core.live import LiveWindow, upscale_live


def run_pass(upscaler: Upscaler, windows: list[np.ndarray | LiveWindow], max_batch_pixels: int) -> list[tuple]:
    """One pass over the waiting windows: uploaded [5,H,W,3] windows and live-stream windows."""
    results: list = [None] * len(windows)
    live = [isinstance(window, LiveWindow) for window in windows]
    for is_live, upscale in ((False, upscale_grouped), (True, upscale_live)):
        indices = [i for i, flag in enumerate(live) if flag is is_live]
        if indices:
            for i, result in zip(indices, upscale(upscaler, [windows[i] for i in indices], max_batch_pixels)):
                results[i] = result
    return results


def window_pixels(window: np.ndarray | LiveWindow) -> int:
    """LR pixels of one window's frame (what ``max_batch_pixels`` counts)."""
    return window.pixels if isinstance(window, LiveWindow) else window.shape[1] * window.shape[2]


@dataclass
class _Waiting:
    window: np.ndarray | LiveWindow
    loaded: Any  # the LoadedModel the window runs on, even if the replica swaps models meanwhile
    future: asyncio.Future
    arrived: float


class ModelQueue:
    def __init__(self, executor: ThreadPoolExecutor, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.01,
                 max_batch_pixels: int = 2**62):
        self._executor = executor  # one thread: passes never compete for the CPUs
        self.configure(max_batch_size, batch_wait_timeout_s, max_batch_pixels)
        self._waiting: list[_Waiting] = []
        self._arrival = asyncio.Event()
        self._draining = False

    def configure(self, max_batch_size: int, batch_wait_timeout_s: float, max_batch_pixels: int) -> None:
        self.max_batch_size, self.wait_s, self.max_batch_pixels = max_batch_size, batch_wait_timeout_s, max_batch_pixels

    async def upscale(self, loaded: Any, window: np.ndarray | LiveWindow) -> tuple[Any, int, Any, float]:
        """(3x frame or the exception of its pass, windows in that pass, ``loaded``, seconds of the pass)."""
        loop = asyncio.get_running_loop()
        item = _Waiting(window, loaded, loop.create_future(), loop.time())
        self._waiting.append(item)
        self._arrival.set()
        if not self._draining:
            self._draining = True
            loop.create_task(self._drain())
        output, batch, seconds = await item.future  # cancelling this drops the window if not yet running
        return output, batch, loaded, seconds

    def _one_pass(self) -> list[_Waiting]:
        """The waiting windows of the oldest one's model, oldest first, up to one forward pass
        (``max_batch_size`` windows, ``max_batch_pixels``; at least one window). Not more: the
        answers of a pass go out while the next one runs, and their clients' next windows arrive
        in time for the pass after it (taking two passes' worth at once left the model idle while
        all 8 clients of the benchmark sent their next request)."""
        loaded = self._waiting[0].loaded
        take, pixels = [], 0
        for item in self._waiting:
            if item.loaded is not loaded:
                continue
            size = window_pixels(item.window)
            if take and (len(take) >= self.max_batch_size or pixels + size > self.max_batch_pixels):
                break
            take.append(item)
            pixels += size
        return take

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._waiting = [item for item in self._waiting if not item.future.done()]  # callers gone: skip
                if not self._waiting:
                    return
                deadline = self._waiting[0].arrived + self.wait_s
                while len(self._waiting) < self.max_batch_size and loop.time() < deadline and \
                        sum(window_pixels(item.window) for item in self._waiting) < self.max_batch_pixels:
                    self._arrival.clear()
                    try:
                        await asyncio.wait_for(self._arrival.wait(), deadline - loop.time())
                    except asyncio.TimeoutError:
                        break
                self._waiting = [item for item in self._waiting if not item.future.done()]
                if not self._waiting:
                    return
                take = self._one_pass()
                self._waiting = [item for item in self._waiting if all(item is not t for t in take)]
                started = time.perf_counter()
                try:
                    results = await loop.run_in_executor(self._executor, run_pass, take[0].loaded.upscaler,
                                                         [item.window for item in take], self.max_batch_pixels)
                except Exception as exc:  # noqa: BLE001 - upscale_grouped reports per window; never leave callers hanging
                    results = [(exc, len(take))] * len(take)
                seconds = time.perf_counter() - started
                for item, (output, batch) in zip(take, results):
                    if not item.future.done():
                        item.future.set_result((output, batch, seconds))
        finally:
            self._draining = False
