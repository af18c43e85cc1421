"""The one whole-video engine: ``upscale_file`` turns a video (or frame folder) of any length
into its 3x version, with the input's timing, audio and subtitles.

Used by ``vsr upscale`` (in-process, or across a Ray cluster with ``--ray``) and by the Serve
job API. The video is cut into chunks (``plan``); each chunk becomes an encoded segment in a
work folder (``chunk``), in this process or on Ray chunk workers (``on_ray``); the segments
are joined without re-encoding and the audio is copied in (``mux``). Memory does not depend
on the length of the video. The work folder keeps finished chunks until the output is
complete, so a killed run continues where it stopped (``resume``).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vsr_core import storage
from vsr_core.data.video_io import VIDEO_EXTENSIONS, frame_timestamps, probe_video
from vsr_core.inference import Upscaler
from vsr_core.video.chunk import run_chunk, unpack_segment
from vsr_core.video.mux import join_frame_folders, join_segments
from vsr_core.video.plan import (
    JobCancelled,
    WorkFolder,
    model_fingerprint,
    plan_chunks,
    plan_record,
    auto_chunk_frames,
    round_chunk_frames,
)

if TYPE_CHECKING:
    from vsr_core.video.on_ray import RayPool

logger = logging.getLogger(__name__)


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
class UpscaleResult:
    frames: int
    width: int
    height: int
    fps: float
    seconds: float
    resumed_frames: int  # frames taken from an earlier, interrupted run
    nodes: tuple[str, ...] = ()  # the Ray nodes whose workers ran chunks (none in-process)


def default_work_folder(output: str | os.PathLike) -> Path | None:
    """``OUTPUT.parts`` next to a local output; None (a temporary folder) for a URI output."""
    return None if storage.is_uri(output) else Path(f"{output}.parts")


def upscale_file(
    source: str | os.PathLike,
    output: str | os.PathLike,
    upscaler: Upscaler,
    *,
    max_frames: int | None = None,
    chunk_frames: int | None = None,
    work_folder: str | os.PathLike | None = None,
    resume: bool = False,
    ray_pool: "RayPool | None" = None,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> UpscaleResult:
    """Upscale ``source`` (video or frame folder; path or URI) into ``output`` (.mp4/.mkv/...
    or a folder for PNG frames; path or URI), in chunks of ``chunk_frames`` (default
    ``auto_chunk_frames``). With ``ray_pool`` the chunks run on Ray workers
    (``ray.init`` must have been called), else one after another in this process; either way
    the frames are identical. ``should_stop()`` returning True cancels (``JobCancelled``) and
    the work folder is kept for ``resume``, as it is when anything fails."""
    started = time.perf_counter()
    source, output = str(source), str(output)
    info = probe_video(source)
    all_timestamps = frame_timestamps(source)
    timestamps = all_timestamps[:max_frames]
    total = len(timestamps)
    end_time = None  # a clipped run (max_frames) copies the audio of its frames only
    if total < len(all_timestamps):
        end_time = float(all_timestamps[total] * info.time_base)
    is_video = Path(output).suffix.lower() in VIDEO_EXTENSIONS
    temporary = work_folder is None and default_work_folder(output) is None
    folder = Path(tempfile.mkdtemp(prefix="vsr-work-")) if temporary else Path(work_folder or default_work_folder(output))
    work = WorkFolder(folder, Path(output).suffix.lower() if is_video else "")
    if chunk_frames is None:  # a resumed run keeps its chunks; a new one sizes them for its workers
        chunk_frames = work.planned().get("chunk_frames") if resume else None
        chunk_frames = chunk_frames or auto_chunk_frames(total, ray_pool.size() if ray_pool else 1)
    chunk_frames = round_chunk_frames(chunk_frames, upscaler.batch_size)
    chunks = plan_chunks(timestamps, chunk_frames)
    options = {"batch_size": upscaler.batch_size, "tile": upscaler.tile, "tile_overlap": upscaler.tile_overlap,
               "precision": upscaler.precision, "backend": upscaler.backend,
               "max_frames": max_frames, "output_kind": work.suffix or "frames"}
    work.open(plan_record(source, storage.size(source) if not Path(source).is_dir() else 0, total, chunk_frames,
                          model_fingerprint(upscaler.model), options), resume)
    todo = [chunk for chunk in chunks if not work.is_done(chunk)]
    resumed = total - sum(chunk.frames for chunk in todo)
    if resumed:
        logger.info("resuming: %d of %d frames are done", resumed, total)
    finished = resumed
    run_started = time.perf_counter()

    def report(running_frames: int) -> None:
        if on_progress is None:
            return
        done = finished + running_frames
        elapsed = time.perf_counter() - run_started
        fps = (done - resumed) / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / fps if fps > 0 else None
        on_progress(Progress(done, total, fps, eta))

    nodes: set[str] = set()

    def chunk_done(chunk, packed=None, node: str | None = None) -> None:
        nonlocal finished
        if packed is not None:
            unpack_segment(packed, work.partial_path(chunk))
            nodes.add(node)
        work.commit(chunk)
        finished += chunk.frames
        report(0)

    report(0)
    run_args = dict(source=source, total=total, rate=info.frame_rate, time_base=info.time_base, suffix=work.suffix)
    if ray_pool is not None:
        from vsr_core.video.on_ray import run_chunks_on_ray  # imports Ray only when it is used

        run_chunks_on_ray(todo, upscaler, ray_pool, run_args, chunk_done, report, should_stop)
    else:
        for chunk in todo:
            if should_stop():
                raise JobCancelled("cancelled")
            run_chunk(upscaler, source, chunk, total, work.partial_path(chunk), info.frame_rate, info.time_base,
                      on_frame=report)
            chunk_done(chunk)
    _join(work, chunks, source, output, is_video, timestamps, info.time_base, end_time)
    shutil.rmtree(folder, ignore_errors=True)
    return UpscaleResult(total, 3 * info.width, 3 * info.height, info.fps, time.perf_counter() - started, resumed,
                         tuple(sorted(nodes)))


def _join(work: WorkFolder, chunks, source: str, output: str, is_video: bool, timestamps: list[int], time_base,
          end_time: float | None) -> None:
    """The segments -> the output, which appears under its name only when it has every frame."""
    segments = [work.segment_path(chunk) for chunk in chunks]
    if not is_video:
        if storage.is_uri(output):
            raise ValueError(f"a frame-folder output must be a local folder, got {output}")
        written = join_frame_folders(segments, Path(output))
        if written != len(timestamps):
            raise RuntimeError(f"{output} has {written} frames, the input {len(timestamps)}")
        return
    local = work.folder / f"joined{work.suffix}"
    audio_source = None if Path(source).is_dir() else source
    written = join_segments(segments, timestamps, time_base, audio_source, local, end_time)
    if written != len(timestamps):
        raise RuntimeError(f"the joined video has {written} frames, the input {len(timestamps)}; nothing was "
                           f"written to {output}, the finished chunks are kept in {work.folder}")
    if storage.is_uri(output):
        storage.put_file(local, output)
    else:
        shutil.move(local, output)
