"""The replica's one model thread and the windows waiting for it: every window of every
request and stream (``/v1/upscale``, ``WS /v1/stream``) is batched here with the others.

A forward pass starts when ``max_batch_size`` windows wait, or ``batch_wait_timeout_s`` after
the oldest waiting window arrived, whichever is first, and only once the model thread is free;
it takes every window waiting then (same model, up to ``max_batch_size``; ``upscale_grouped``
stacks same-size windows and splits by ``max_batch_pixels``).

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

from vsr_core.inference import upscale_grouped


@dataclass
class _Waiting:
    window: np.ndarray
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

    async def upscale(self, loaded: Any, window: np.ndarray) -> tuple[Any, int, Any, float]:
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

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._waiting = [item for item in self._waiting if not item.future.done()]  # callers gone: skip
                if not self._waiting:
                    return
                deadline = self._waiting[0].arrived + self.wait_s
                while len(self._waiting) < self.max_batch_size and loop.time() < deadline:
                    self._arrival.clear()
                    try:
                        await asyncio.wait_for(self._arrival.wait(), deadline - loop.time())
                    except asyncio.TimeoutError:
                        break
                self._waiting = [item for item in self._waiting if not item.future.done()]
                if not self._waiting:
                    return
                loaded = self._waiting[0].loaded
                take = [item for item in self._waiting if item.loaded is loaded][: self.max_batch_size]
                self._waiting = [item for item in self._waiting if all(item is not t for t in take)]
                started = time.perf_counter()
                try:
                    results = await loop.run_in_executor(self._executor, upscale_grouped, loaded.upscaler,
                                                         [item.window for item in take], self.max_batch_pixels)
                except Exception as exc:  # noqa: BLE001 - upscale_grouped reports per window; never leave callers hanging
                    results = [(exc, len(take))] * len(take)
                seconds = time.perf_counter() - started
                for item, (output, batch) in zip(take, results):
                    if not item.future.done():
                        item.future.set_result((output, batch, seconds))
        finally:
            self._draining = False
