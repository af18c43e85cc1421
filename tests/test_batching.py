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


def test_a_pass_takes_one_pass_worth_and_answers_before_the_next():
    """8 windows waiting, room for 3 per pass (max_batch_pixels): passes of 3, 3, 2, and the
    first 3 callers have their answers while the later passes still run."""
    upscaler = SlowUpscaler(random_model("tiny", seed=1), device="cpu", delay=0.2)
    loaded = SimpleNamespace(upscaler=upscaler)
    windows = [make_clip(5, 10, 12, seed=s) for s in range(8)]
    answered: dict[int, float] = {}

    async def scenario():
        queue = ModelQueue(ThreadPoolExecutor(1), max_batch_size=8, batch_wait_timeout_s=0.05,
                           max_batch_pixels=3 * 10 * 12)

        async def ask(i):
            result = await queue.upscale(loaded, windows[i])
            answered[i] = time.perf_counter()
            return result

        return await asyncio.gather(*(ask(i) for i in range(8)))

    results = asyncio.run(scenario())
    assert upscaler.passes == [3, 3, 2]
    assert [batch for _, batch, _, _ in results] == [3, 3, 3, 3, 3, 3, 2, 2]
    assert max(answered[i] for i in range(3)) + upscaler.delay / 2 < min(answered[i] for i in range(3, 8))


def test_a_failing_pass_raises_in_its_own_callers_only():
    """Windows of two sizes run in two passes; the pass that fails raises its error where its
    windows are awaited, and the other pass's callers get their frames."""

    class FailsOnWideWindows(SlowUpscaler):
        def upscale_windows(self, windows):
            if windows.shape[-1] == 14:
                raise MemoryError("the budget cannot hold this frame")
            return super().upscale_windows(windows)

    upscaler = FailsOnWideWindows(random_model("tiny", seed=1), device="cpu", delay=0.0)
    loaded = SimpleNamespace(upscaler=upscaler)
    good = [make_clip(5, 10, 12, seed=s) for s in range(2)]
    wide = make_clip(5, 10, 14, seed=5)

    async def scenario():
        queue = ModelQueue(ThreadPoolExecutor(1), max_batch_size=8, batch_wait_timeout_s=0.05)
        windows = [good[0], wide, good[1]]
        return await asyncio.gather(*(queue.upscale(loaded, w) for w in windows), return_exceptions=True)

    first, failed, last = asyncio.run(scenario())
    assert isinstance(failed, MemoryError) and "cannot hold" in str(failed)
    assert (first.batch_size, last.batch_size) == (2, 2) and first.model is loaded and first.seconds > 0
    for window, result in zip(good, (first, last)):
        assert max_diff(result.frame, upscaler.upscale_window_uint8(window)) <= 1


def test_live_windows_reuse_features_and_equal_the_stream():
    """A live stream's windows (vsr_core.live_stream), computed in passes as its frames arrive, give
    `vsr upscale`'s frames (Upscaler.stream); the frames no later window reads are dropped."""
    from vsr_core.live_stream import LiveFrames, LiveWindow

    upscaler = Upscaler(random_model("tiny", seed=3), device="cpu", batch_size=4)
    clip = make_clip(11, 10, 12, seed=9)
    expected = list(upscaler.stream(iter(clip)))
    loaded = SimpleNamespace(upscaler=upscaler)
    frames = LiveFrames()
    extracted = []
    extract = upscaler.model.extract_features
    upscaler.model.extract_features = lambda x: extracted.append(1) or extract(x)

    async def scenario():
        queue = ModelQueue(ThreadPoolExecutor(1), max_batch_size=4, batch_wait_timeout_s=0.0)
        outputs, held = [], []
        for c in range(0, 11, 4):  # as a stream: 4 windows at a time, the last ones at the end
            for j in range(c, min(c + 4 + 2, 11)):
                frames.add(j, clip[j])
            length = 11 if c + 4 >= 11 else 2**62
            outputs += await asyncio.gather(*(queue.upscale(loaded, LiveWindow(frames, k, length))
                                              for k in range(c, min(c + 4, 11))))
            held.append(len(frames))
        return outputs, held

    outputs, held = asyncio.run(scenario())
    assert len(outputs) == 11
    for got, want in zip(outputs, expected):
        assert got[0].shape == want.shape and max_diff(got[0], want) == 0
    assert len(extracted) == 11  # each frame's features once, not 5 times
    assert max(held) <= 4 + 2  # frames older than the next window's first were dropped
