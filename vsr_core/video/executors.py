"""Who runs a video plan's chunks: ``LocalExecutor`` (one after another, in this process) or
``ray_workers.RayExecutor`` (chunk workers on a Ray cluster), both a ``ChunkExecutor``. Either
writes each finished chunk's segment into the plan's work folder, commits it, and tells the
run's ``ProgressTracker``, which reports progress and says when the run is cancelled.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from vsr_core.inference import Upscaler
from vsr_core.video.chunk import EncodingChunk, start_chunk
from vsr_core.video.plan import Chunk, JobCancelled, ModelIdentity, VideoPlan


@dataclass(frozen=True)
class Progress:
    frames_done: int
    frames_total: int
    fps: float  # frames per second in this run (resumed chunks excluded)
    eta_seconds: float | None

    @property
    def fraction(self) -> float:
        return self.frames_done / max(1, self.frames_total)


@dataclass(frozen=True)
class RunControl:
    """A caller's hold on a run: ``on_progress`` gets a ``Progress`` as frames get done (a few
    times a second at most on Ray), ``should_stop()`` returning True cancels (``JobCancelled``)."""

    on_progress: Callable[[Progress], None] | None = None
    should_stop: Callable[[], bool] | None = None


class ProgressTracker:
    """The frames of one run: resumed, in finished chunks, and written so far by running ones."""

    def __init__(self, control: RunControl, total: int, resumed: int):
        self.control, self.total, self.resumed = control, total, resumed
        self.finished = resumed
        self.started = time.perf_counter()

    def report(self, running_frames: int = 0) -> None:
        """``running_frames``: the frames written so far by the chunks that are still running."""
        if self.control.on_progress is None:
            return
        done = self.finished + running_frames
        elapsed = time.perf_counter() - self.started
        fps = (done - self.resumed) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / fps if fps > 0 else None
        self.control.on_progress(Progress(done, self.total, fps, eta))

    def chunk_done(self, chunk: Chunk, running_frames: int = 0) -> None:
        """``chunk`` is committed; ``running_frames``: as in ``report``, without it."""
        self.finished += chunk.frames
        self.report(running_frames)

    def stop_if_cancelled(self) -> None:
        if self.control.should_stop is not None and self.control.should_stop():
            raise JobCancelled("cancelled")


class ChunkExecutor(Protocol):
    def identity(self) -> ModelIdentity:
        """What the segments' pixels depend on besides the input (``plan.json``)."""

    def parallel_chunks(self) -> int:
        """How many chunks run at once (it sizes the default chunks)."""

    def run(self, plan: VideoPlan, tracker: ProgressTracker) -> set[str]:
        """Run ``plan.todo``, committing each chunk's segment to the work folder as it finishes;
        return the ids of the Ray nodes that ran them (none in-process)."""


class LocalExecutor:
    """The chunks one after another in this process, with this ``Upscaler``: while a chunk's
    encoder finishes (x264 encodes its last frames when it is closed), the next chunk is decoded
    and upscaled; a chunk is committed once its encoder is done."""

    def __init__(self, upscaler: Upscaler):
        self.upscaler = upscaler

    def identity(self) -> ModelIdentity:
        upscaler = self.upscaler
        return ModelIdentity.of(upscaler.model, upscaler.options, upscaler.precision, upscaler.backend)

    def parallel_chunks(self) -> int:
        return 1

    def run(self, plan: VideoPlan, tracker: ProgressTracker) -> set[str]:
        running: dict[int, int] = {}  # frames written so far by the chunks not committed yet
        encoding: list[tuple[Chunk, EncodingChunk]] = []

        def report(chunk: Chunk) -> Callable[[int], None]:
            def on_frame(frames: int) -> None:
                running[chunk.index] = frames
                tracker.report(sum(running.values()))
            return on_frame

        def commit(chunk: Chunk, started: EncodingChunk) -> None:
            started.finish()
            plan.work.commit(chunk)
            running.pop(chunk.index, None)
            tracker.chunk_done(chunk, sum(running.values()))

        try:
            for chunk in plan.todo:
                tracker.stop_if_cancelled()
                encoding.append((chunk, start_chunk(self.upscaler, plan.task(chunk), plan.work.partial_path(chunk),
                                                    on_frame=report(chunk))))
                if len(encoding) > 1:  # the previous chunk's encoder has had this chunk's time to finish
                    commit(*encoding.pop(0))
            while encoding:
                commit(*encoding.pop(0))
        finally:  # a failure: the chunk still encoding is whole, keep it if its encoder gets it done
            for chunk, started in encoding:
                try:
                    commit(chunk, started)
                except Exception:  # noqa: BLE001 - the failure being raised is the one to report
                    pass
        return set()
