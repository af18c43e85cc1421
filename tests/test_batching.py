"""serve/batching.py without Ray: windows that arrive while a pass runs share the next pass,
a closed caller's window is not computed, windows of another model run on their own, and the
outputs are the windows' own 3x frames."""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np

from conftest import make_clip, random_model
from serve.batching import ModelQueue
from vsr_core.inference import Upscaler


class SlowUpscaler(Upscaler):
    """Records the windows of each pass; each pass takes at least ``delay`` seconds."""

    def __init__(self, *args, delay: float = 0.3, **kwargs):
        super().__init__(*args, **kwargs)
        self.delay, self.passes, self.lock = delay, [], threading.Lock()

    def upscale_windows(self, windows):
        with self.lock:
            self.passes.append(windows.shape[0])
        time.sleep(self.delay)
        return super().upscale_windows(windows)


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def test_windows_waiting_during_a_pass_share_the_next_one():
    upscaler = SlowUpscaler(random_model("tiny", seed=1), device="cpu")
    other = SlowUpscaler(random_model("tiny", seed=2), device="cpu")
    loaded, loaded_other = SimpleNamespace(upscaler=upscaler), SimpleNamespace(upscaler=other)
    windows = [make_clip(5, 10, 12, seed=s) for s in range(7)]

    async def scenario():
        queue = ModelQueue(ThreadPoolExecutor(1), max_batch_size=8, batch_wait_timeout_s=0.0)
        first = asyncio.create_task(queue.upscale(loaded, windows[0]))
        await asyncio.sleep(0.1)  # the first pass runs; these wait for it to end
        rest = [asyncio.create_task(queue.upscale(loaded, w)) for w in windows[1:5]]
        gone = asyncio.create_task(queue.upscale(loaded, windows[5]))
        swapped = asyncio.create_task(queue.upscale(loaded_other, windows[6]))
        await asyncio.sleep(0)
        gone.cancel()  # e.g. a stream whose client disconnected
        return await asyncio.gather(first, *rest, swapped)

    results = asyncio.run(scenario())
    assert upscaler.passes == [1, 4]  # not 5: the cancelled window was dropped
    assert other.passes == [1]
    assert [batch for _, batch, _, _ in results] == [1, 4, 4, 4, 4, 1]
    for window, (output, _, used, seconds) in zip(windows[:5], results[:5]):
        assert used is loaded and seconds >= upscaler.delay
        assert max_diff(output, upscaler.upscale_window_uint8(window)) <= 1
    assert results[5][2] is loaded_other
    assert max_diff(results[5][0], other.upscale_window_uint8(windows[6])) <= 1


def test_an_idle_model_waits_batch_wait_timeout_for_more_windows():
    upscaler = SlowUpscaler(random_model("tiny", seed=1), device="cpu", delay=0.0)
    loaded = SimpleNamespace(upscaler=upscaler)
    windows = [make_clip(5, 10, 12, seed=s) for s in range(3)]

    async def scenario(wait_s: float):
        queue = ModelQueue(ThreadPoolExecutor(1), max_batch_size=8, batch_wait_timeout_s=wait_s)
        tasks = []
        for window in windows:
            tasks.append(asyncio.create_task(queue.upscale(loaded, window)))
            await asyncio.sleep(0.02)
        return await asyncio.gather(*tasks)

    asyncio.run(scenario(0.5))
    assert upscaler.passes == [3]
    upscaler.passes.clear()
    asyncio.run(scenario(0.0))
    assert upscaler.passes[0] == 1 and sum(upscaler.passes) == 3  # no wait: the first window runs at once
