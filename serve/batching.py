"""The replica's one model thread and the windows waiting for it: every window of every
request and stream (``/v1/upscale``, ``WS /v1/stream``) is batched here with the others.

A forward pass starts when a pass's worth of windows wait (``max_batch_size`` windows or
``max_batch_pixels`` LR pixels), or ``batch_wait_timeout_s`` after the oldest waiting window
arrived, whichever is first, and only once the model thread is free; it takes the waiting
windows, oldest first, up to that much (same model), and runs them in forward passes:
same-size uploaded windows together (``vsr_core.inference.window_passes``), a stream's windows
(``LiveWindow``s) together, reusing its frames' features (``vsr_core.live_stream``). Each
window's caller gets a ``PassResult``, or the exception of its own pass, raised where it awaits.

Why not ``@serve.batch``: it closes a batch ``batch_wait_timeout_s`` after its first window
also while the model is still busy with the previous batch, so under steady load it cut the
queue into small batches that then ran one after another (8 HTTP clients: passes of 2-4
windows with 8 waiting; benchmarks/README.md). Here the batch is formed when the model is free.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Generic, NamedTuple, Protocol, TypeVar

import numpy as np

from vsr_core.inference import Upscaler, WindowResult, upscale_pass, window_passes
from vsr_core.live_stream import LiveWindow, live_passes, upscale_live_pass

logger = logging.getLogger("ray.serve")

Window = np.ndarray | LiveWindow  # an uploaded [5,H,W,3] window, or a window of a live stream


class ServedModel(Protocol):
    """What the queue needs of a model a replica serves (``serve.model.LoadedModel``)."""

    @property
    def upscaler(self) -> Upscaler: ...


M = TypeVar("M", bound=ServedModel)


class PassResult(NamedTuple, Generic[M]):
    """A window's answer: its 3x frame, the windows in its forward pass, the model it ran on (a
    replica may have swapped in another meanwhile) and the seconds of that pass."""

    frame: np.ndarray
    batch_size: int
    model: M
    seconds: float


def forward_passes(upscaler: Upscaler, windows: list[Window],
                   max_batch_pixels: int) -> list[tuple[list[int], Callable[[], list[WindowResult]]]]:
    """The forward passes over ``windows``: (indices of its windows, the call that computes them).
    Uploaded windows go by size (``window_passes``), a live stream's windows together, reusing
    its features (``live_passes``)."""
    uploaded = [i for i, window in enumerate(windows) if not isinstance(window, LiveWindow)]
    live = [i for i, window in enumerate(windows) if isinstance(window, LiveWindow)]
    passes = []
    for group in window_passes(upscaler, [windows[i] for i in uploaded], max_batch_pixels):
        indices = [uploaded[k] for k in group]
        passes.append((indices, partial(upscale_pass, upscaler, [windows[i] for i in indices])))
    for group in live_passes([windows[i] for i in live]):
        indices = [live[k] for k in group]
        passes.append((indices, partial(upscale_live_pass, upscaler, [windows[i] for i in indices], max_batch_pixels)))
    return passes


def window_pixels(window: Window) -> int:
    """LR pixels of one window's frame (what ``max_batch_pixels`` counts)."""
    return window.pixels if isinstance(window, LiveWindow) else window.shape[1] * window.shape[2]


@dataclass
class _Waiting(Generic[M]):
    window: Window
    loaded: M  # the model the window runs on, even if the replica swaps models meanwhile
    future: asyncio.Future[PassResult[M]]
    arrived: float


class ModelQueue(Generic[M]):
    def __init__(self, executor: ThreadPoolExecutor, max_batch_size: int = 8, batch_wait_timeout_s: float = 0.01,
                 max_batch_pixels: int = 2**62):
        self._executor = executor  # one thread: passes never compete for the CPUs
        self.configure(max_batch_size, batch_wait_timeout_s, max_batch_pixels)
        self._waiting: list[_Waiting[M]] = []
        self._arrival = asyncio.Event()
        self._draining = False

    def configure(self, max_batch_size: int, batch_wait_timeout_s: float, max_batch_pixels: int) -> None:
        self.max_batch_size, self.wait_s, self.max_batch_pixels = max_batch_size, batch_wait_timeout_s, max_batch_pixels

    async def upscale(self, loaded: M, window: Window) -> PassResult[M]:
        """The window's answer; raises the exception of its forward pass. Cancelling the call
        drops the window if its pass has not started."""
        loop = asyncio.get_running_loop()
        item = _Waiting(window, loaded, loop.create_future(), loop.time())
        self._waiting.append(item)
        self._arrival.set()
        if not self._draining:
            self._draining = True
            loop.create_task(self._drain())
        return await item.future

    def _one_pass(self) -> list[_Waiting[M]]:
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
                await self._run(take)
        finally:
            self._draining = False

    async def _run(self, take: list[_Waiting[M]]) -> None:
        """Compute ``take`` pass by pass on the model thread; each window's future gets its
        result, or the exception of its own pass (the other passes still run)."""
        loop, loaded = asyncio.get_running_loop(), take[0].loaded
        try:
            passes = forward_passes(loaded.upscaler, [item.window for item in take], self.max_batch_pixels)
        except Exception as exc:  # noqa: BLE001 - never leave callers hanging
            _fail([item.future for item in take], exc)
            return
        for indices, compute in passes:
            items = [take[i] for i in indices]
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, compute)
            except Exception as exc:  # noqa: BLE001 - raised in each of this pass's callers
                logger.warning("a forward pass of %d window(s) failed: %r", len(items), exc)
                _fail([item.future for item in items], exc)
                continue
            seconds = time.perf_counter() - started
            for item, result in zip(items, results):
                if not item.future.done():
                    item.future.set_result(PassResult(result.frame, result.batch_size, loaded, seconds))


def _fail(futures: list[asyncio.Future], exc: Exception) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)
