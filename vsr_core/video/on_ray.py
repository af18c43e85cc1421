"""Chunks on a Ray cluster: a pool of chunk-worker actors, each holding the model.

Why actors and not tasks or Ray Data: the model is loaded once per worker (from the object
store, so nodes need no checkpoint file) and then serves many chunks; a worker killed
mid-chunk is restarted by Ray, which re-runs just that chunk (``max_restarts`` /
``max_task_retries``); cancelling a job is killing its workers. Ray Data would give the same
pool (``map_batches`` with an actor class) but adds a streaming executor between us and
the chunks, which makes exact progress, cancellation and per-chunk retries harder to see.

Each worker asks for ``num_cpus`` / ``num_gpus`` like a Tune trial does, and runs torch with
that many threads; Ray places the workers on whichever nodes have room.
"""
from __future__ import annotations

import copy
import tempfile
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
import torch

from vsr_core.inference import Upscaler
from vsr_core.options import InferenceOptions
from vsr_core.video.chunk import pack_segment, run_chunk
from vsr_core.video.plan import Chunk, JobCancelled

CHUNKS_QUEUED_PER_WORKER = 2  # one running, one waiting: a worker never idles between chunks
POLL_SECONDS = 0.25


@dataclass(frozen=True)
class RayPool:
    """The chunk workers of one video job."""

    workers: int | None = None  # None: as many as the cluster has room for (at most one per chunk)
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_restarts: int = 3  # a killed worker comes back this many times; its chunk is re-run

    def size(self, num_chunks: int | None = None) -> int:
        """How many workers a job of ``num_chunks`` chunks gets (None: as many as there is room for)."""
        num_chunks = num_chunks or 2**31
        if self.workers:
            return max(1, min(self.workers, num_chunks))
        resources = ray.cluster_resources()
        if self.num_gpus > 0:
            room = resources.get("GPU", 0) // self.num_gpus
        else:
            room = resources.get("CPU", 1) // max(self.num_cpus, 1e-3)
        return int(max(1, min(room, num_chunks)))


@ray.remote(num_cpus=0)
class ChunkProgress:
    """Frames written so far by the chunks that are still running (their workers report)."""

    def __init__(self):
        self.frames: dict[int, int] = {}
        self.finished: set[int] = set()

    def report(self, chunk: int, frames: int) -> None:
        if chunk not in self.finished:  # a late report must not resurrect a finished chunk
            self.frames[chunk] = frames

    def finish(self, chunk: int) -> None:
        self.finished.add(chunk)
        self.frames.pop(chunk, None)

    def running_frames(self) -> int:
        return sum(self.frames.values())


class ChunkWorker:
    """Holds the model (loaded on its first chunk, once) and runs chunks."""

    def __init__(self, options: InferenceOptions, num_threads: int):
        torch.set_num_threads(num_threads)
        self.options = options
        self.upscaler: Upscaler | None = None

    def ready(self) -> bool:
        return True

    @ray.method(retry_exceptions=[OSError])  # transient I/O (storage); bad input fails at once
    def run(self, model: list[ray.ObjectRef], source: str, chunk: Chunk, total: int, rate, time_base, suffix: str,
            progress, encoder=None, color=None) -> Any:
        # The model travels as a reference inside a list, fetched on the first chunk: a worker
        # that Ray restarts (max_restarts) fetches it again when its chunk is retried.
        if self.upscaler is None:
            self.upscaler = Upscaler(ray.get(model[0]), self.options)

        def report(frames: int) -> None:
            progress.report.remote(chunk.index, frames)

        with tempfile.TemporaryDirectory(prefix="vsr-chunk-") as tmp:
            segment = Path(tmp) / f"segment{suffix}"
            run_chunk(self.upscaler, source, chunk, total, segment, rate, time_base, report, encoder, color)
            return pack_segment(segment), ray.get_runtime_context().get_node_id()


def _portable_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model on the CPU (a copy if it is elsewhere), to send through the object store."""
    if all(p.device.type == "cpu" for p in model.parameters()):
        return model
    return copy.deepcopy(model).cpu()


def run_chunks_on_ray(
    chunks: list[Chunk], upscaler: Upscaler, pool: RayPool, run_args: dict[str, Any],
    on_done: Callable[[Chunk, Any, str], None], on_progress: Callable[[int], None],
    should_stop: Callable[[], bool],
) -> None:
    """Run ``chunks`` on a pool of workers; ``on_done(chunk, packed segment, node id)`` as each finishes,
    in any order; ``on_progress(frames written by running chunks)`` a few times a second.
    ``run_args``: source, total, rate, time_base, suffix, encoder, color (see ``ChunkWorker.run``)."""
    if not chunks:
        return
    device = "auto" if pool.num_gpus > 0 else "cpu"
    options = replace(upscaler.options, device=device, backend=upscaler.backend)
    model_ref = ray.put(_portable_model(upscaler.model))
    worker_class = ray.remote(ChunkWorker).options(
        num_cpus=pool.num_cpus, num_gpus=pool.num_gpus, max_restarts=pool.max_restarts,
        max_task_retries=pool.max_restarts)
    threads = max(1, int(pool.num_cpus))
    workers = [worker_class.remote(options, threads) for _ in range(pool.size(len(chunks)))]
    # Chunks go only to workers that have started: a worker still waiting for a free CPU/GPU
    # (a busy cluster) gets none queued, and joins the pool when it starts.
    starting = {worker.ready.remote(): worker for worker in workers}
    queued: dict[Any, int] = {}
    progress = ChunkProgress.remote()
    todo = deque(chunks)
    running: dict[ray.ObjectRef, tuple[Any, Chunk]] = {}
    try:
        while todo or running:
            for worker in queued:
                # A second chunk waits on a busy worker only while there is plenty left: at the
                # end every chunk goes to whichever worker is free first (they finish together).
                depth = CHUNKS_QUEUED_PER_WORKER if len(todo) > len(queued) else 1
                while todo and queued[worker] < depth:
                    chunk = todo.popleft()
                    running[worker.run.remote([model_ref], chunk=chunk, progress=progress, **run_args)] = (worker, chunk)
                    queued[worker] += 1
            ready, _ = ray.wait([*running, *starting], num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:
                if ref in starting:
                    ray.get(ref)  # raises if the worker could not start
                    queued[starting.pop(ref)] = 0
                    continue
                worker, chunk = running.pop(ref)
                queued[worker] -= 1
                on_done(chunk, *ray.get(ref))
                progress.finish.remote(chunk.index)
            on_progress(ray.get(progress.running_frames.remote()))
            if should_stop():
                raise JobCancelled("cancelled")
    finally:  # done, failed or cancelled: no worker keeps running
        for actor in [*workers, progress]:
            ray.kill(actor)
