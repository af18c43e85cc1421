"""The one whole-video engine: ``upscale_file`` turns a video (or frame folder) of any length
into its 3x version, with the input's timing, colour, bit depth, orientation, audio, subtitles,
chapters and metadata (README, "What is kept").

Used by ``vsr upscale`` (in-process, or across a Ray cluster with ``--ray``) and by the Serve
job API, in three steps:

1. ``plan.plan_video``: probe the input, pick the frames, the output's container and encoder
   settings, cut the frames into chunks and open the work folder (a ``VideoPlan``; anything
   wrong with the request fails here, before any work);
2. a ``ChunkExecutor`` runs the chunks not done yet, each into an encoded segment in the work
   folder (``chunk``): ``executors.LocalExecutor`` in this process, ``ray_workers.RayExecutor``
   on Ray chunk workers; progress and cancellation go through one ``RunControl``;
3. ``finalize``: the segments are joined without re-encoding, the audio copied in (``mux``),
   the output checked (``verify``) and moved in place.

Memory does not depend on the length of the video. The work folder keeps finished chunks until
the output is complete and checked, so a killed or failed run continues where it stopped
(``resume``); nothing in it is deleted on failure. A preview upscales a short stretch and
projects the time and size of the whole video.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vsr_core.inference import Upscaler
from vsr_core.video.executors import ChunkExecutor, LocalExecutor, Progress, ProgressTracker, RunControl
from vsr_core.video.finalize import Projection, finalize, project
from vsr_core.video.plan import VideoPlan, VideoRequest, plan_video

if TYPE_CHECKING:
    from vsr_core.video.ray_workers import RayPool

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpscaleResult:
    frames: int
    width: int
    height: int
    fps: float
    seconds: float
    resumed_frames: int  # frames taken from an earlier, interrupted run
    nodes: tuple[str, ...] = ()  # the Ray nodes whose workers ran chunks (none in-process)
    output: str = ""  # where it was written (an .mkv when an .mp4 could not hold the input's streams)
    encoder: str = ""  # the encoder settings used (also in the output's metadata)
    projection: Projection | None = None  # for a preview


def upscale_file(source: str | os.PathLike, output: str | os.PathLike, upscaler: Upscaler | ChunkExecutor, *,
                 ray_pool: RayPool | None = None, on_progress: Callable[[Progress], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, **request: Any) -> UpscaleResult:
    """Upscale ``source`` into ``output`` (see ``VideoRequest``; ``request`` are its other fields:
    max_frames, chunk_frames, work_folder, resume, encoder, preview, png).

    ``upscaler`` runs the chunks one after another in this process, or, with ``ray_pool``, its
    model and options go to Ray chunk workers (``ray.init`` must have been called); either way the
    frames are identical. A ``ChunkExecutor`` instead runs them its own way. ``on_progress`` gets
    a ``Progress`` as frames get done; ``should_stop()`` returning True cancels (``JobCancelled``),
    and the work folder is kept for ``resume``, as it is when anything fails."""
    started = time.perf_counter()
    executor = _executor(upscaler, ray_pool)
    plan = plan_video(VideoRequest(source, output, **request), executor)
    return run_plan(plan, executor, RunControl(on_progress, should_stop), started)


def _executor(upscaler: Upscaler | ChunkExecutor, ray_pool: RayPool | None) -> ChunkExecutor:
    if not isinstance(upscaler, Upscaler):
        if ray_pool is not None:
            raise ValueError("ray_pool goes with an Upscaler; an executor brings its own workers")
        return upscaler
    if ray_pool is None:
        return LocalExecutor(upscaler)
    from vsr_core.video.ray_workers import RayExecutor  # imports Ray only when it is used

    return RayExecutor(upscaler.model, upscaler.options, ray_pool)


def run_plan(plan: VideoPlan, executor: ChunkExecutor, control: RunControl, started: float) -> UpscaleResult:
    """Execute ``plan`` (its chunks not done yet), then finalize it: the output in place, the work
    folder gone. ``started``: when the run began (``time.perf_counter``), for its duration."""
    if plan.resumed_frames:
        logger.info("resuming: %d of %d frames are done", plan.resumed_frames, plan.total)
    tracker = ProgressTracker(control, plan.total, plan.resumed_frames)
    tracker.report()
    nodes = executor.run(plan, tracker)
    finalize(plan)
    projection = project(plan, time.perf_counter() - tracker.started) if plan.request.preview is not None else None
    shutil.rmtree(plan.work.folder, ignore_errors=True)
    info = plan.info
    return UpscaleResult(plan.total, 3 * info.width, 3 * info.height, info.fps, time.perf_counter() - started,
                         plan.resumed_frames, tuple(sorted(nodes)), plan.output,
                         plan.describe_output(), projection)
