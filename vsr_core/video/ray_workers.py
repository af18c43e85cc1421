"""Chunks on a Ray cluster (``RayExecutor``): a pool of chunk-worker actors, each holding the model.

Why actors and not tasks or Ray Data: the model is loaded once per worker (from the object
store, so nodes need no checkpoint file) and then serves many chunks; a worker killed
mid-chunk is restarted by Ray, which re-runs just that chunk (``max_restarts`` /
``max_task_retries``); cancelling a job is killing its workers. Ray Data would give the same
pool (``map_batches`` with an actor class) but adds a streaming executor between us and
the chunks, which makes exact progress, cancellation and per-chunk retries harder to see.

Each worker receives the model's weights and the ``InferenceOptions`` it runs with, on the
device of its GPU share (``InferenceOptions.for_ray_worker``), builds its own ``Upscaler`` and
gets one ``ChunkTask`` per chunk. It asks for ``num_cpus`` / ``num_gpus`` like a Tune trial
does, and runs torch with that many threads; Ray places the workers on whichever nodes have room.
"""
from __future__ import annotations

import copy
import tempfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import ray
import torch

from vsr_core.inference import Upscaler
from vsr_core.options import InferenceOptions
from vsr_core.video.chunk import pack_segment, run_chunk, unpack_segment
from vsr_core.video.executors import ProgressTracker
from vsr_core.video.plan import Chunk, ChunkTask, ModelIdentity, VideoPlan

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
    def run(self, model: list[ray.ObjectRef], task: ChunkTask, progress) -> tuple[bytes | dict[str, bytes], str]:
        """(the chunk's segment, packed; the id of this worker's node)."""
        # The model travels as a reference inside a list, fetched on the first chunk: a worker
        # that Ray restarts (max_restarts) fetches it again when its chunk is retried.
        if self.upscaler is None:
            self.upscaler = Upscaler(ray.get(model[0]), self.options)

        def report(frames: int) -> None:
            progress.report.remote(task.chunk.index, frames)

        with tempfile.TemporaryDirectory(prefix="vsr-chunk-") as tmp:
            segment = Path(tmp) / f"segment{task.segment_suffix}"
            run_chunk(self.upscaler, task, segment, report)
            return pack_segment(segment), ray.get_runtime_context().get_node_id()


def _portable_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model on the CPU (a copy if it is elsewhere), to send through the object store."""
    if all(p.device.type == "cpu" for p in model.parameters()):
        return model
    return copy.deepcopy(model).cpu()


class RayExecutor:
    """A plan's chunks on a pool of Ray chunk workers (``ray.init`` must have been called).
    ``options`` are put on the device of the workers' GPU share; a device that contradicts it
    raises here, before any work."""

    def __init__(self, model: torch.nn.Module, options: InferenceOptions, pool: RayPool):
        self.options = options.for_ray_worker(pool.num_gpus)
        self.model, self.pool = _portable_model(model), pool

    def identity(self) -> ModelIdentity:
        # "auto" precision is resolved by each worker, on its own device
        return ModelIdentity.of(self.model, self.options, self.options.precision, self.options.backend)

    def parallel_chunks(self) -> int:
        return self.pool.size()

    def run(self, plan: VideoPlan, tracker: ProgressTracker) -> set[str]:
        if not plan.todo:
            return set()
        model_ref = ray.put(self.model)
        worker_class = ray.remote(ChunkWorker).options(
            num_cpus=self.pool.num_cpus, num_gpus=self.pool.num_gpus, max_restarts=self.pool.max_restarts,
            max_task_retries=self.pool.max_restarts)
        threads = max(1, int(self.pool.num_cpus))
        workers = [worker_class.remote(self.options, threads) for _ in range(self.pool.size(len(plan.todo)))]
        progress = ChunkProgress.remote()
        try:
            return _Dispatch(plan, tracker, model_ref, progress).run(workers)
        finally:  # done, failed or cancelled: no worker keeps running
            for actor in [*workers, progress]:
                ray.kill(actor)


class _Dispatch:
    """One run's chunks over its workers: queued to the workers that have started, collected
    as they finish (in any order), progress and cancellation checked a few times a second."""

    def __init__(self, plan: VideoPlan, tracker: ProgressTracker, model_ref: ray.ObjectRef, progress):
        self.plan, self.tracker, self.model_ref, self.progress = plan, tracker, model_ref, progress
        self.todo = deque(plan.todo)
        self.running: dict[ray.ObjectRef, tuple[ray.actor.ActorHandle, Chunk]] = {}
        self.queued: dict[ray.actor.ActorHandle, int] = {}  # chunks queued on each started worker
        self.nodes: set[str] = set()

    def run(self, workers: list[ray.actor.ActorHandle]) -> set[str]:
        # Chunks go only to workers that have started: a worker still waiting for a free CPU/GPU
        # (a busy cluster) gets none queued, and joins the pool when it starts.
        starting = {worker.ready.remote(): worker for worker in workers}
        while self.todo or self.running:
            self._queue_chunks()
            ready, _ = ray.wait([*self.running, *starting], num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:
                if ref in starting:
                    ray.get(ref)  # raises if the worker could not start
                    self.queued[starting.pop(ref)] = 0
                else:
                    self._collect(ref)
            self.tracker.report(ray.get(self.progress.running_frames.remote()))
            self.tracker.stop_if_cancelled()
        return self.nodes

    def _queue_chunks(self) -> None:
        for worker in self.queued:
            # A second chunk waits on a busy worker only while there is plenty left: at the
            # end every chunk goes to whichever worker is free first (they finish together).
            depth = CHUNKS_QUEUED_PER_WORKER if len(self.todo) > len(self.queued) else 1
            while self.todo and self.queued[worker] < depth:
                chunk = self.todo.popleft()
                ref = worker.run.remote([self.model_ref], self.plan.task(chunk), self.progress)
                self.running[ref] = (worker, chunk)
                self.queued[worker] += 1

    def _collect(self, ref: ray.ObjectRef) -> None:
        worker, chunk = self.running.pop(ref)
        self.queued[worker] -= 1
        packed, node = ray.get(ref)
        unpack_segment(packed, self.plan.work.partial_path(chunk))
        self.nodes.add(node)
        self.plan.work.commit(chunk)
        self.tracker.chunk_done(chunk)
        self.progress.finish.remote(chunk.index)
