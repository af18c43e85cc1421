"""The one whole-video engine: ``upscale_file`` turns a video (or frame folder) of any length
into its 3x version, with the input's timing, colour, bit depth, orientation, audio, subtitles,
chapters and metadata (README, "What is kept").

Used by ``vsr upscale`` (in-process, or across a Ray cluster with ``--ray``) and by the Serve
job API. The video is cut into chunks (``plan``); each chunk becomes an encoded segment in a
work folder (``chunk``), in this process or on Ray chunk workers (``on_ray``); the segments
are joined without re-encoding and the audio is copied in (``mux``). Memory does not depend
on the length of the video. The work folder keeps finished chunks until the output is
complete and checked (``verify``), so a killed or failed run continues where it stopped
(``resume``); nothing in it is deleted on failure. A preview upscales a short stretch and
projects the time and size of the whole video.
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
from vsr_core.data.video_encoder import EncoderSettings
from vsr_core.data.video_io import VIDEO_EXTENSIONS, frame_timestamps, probe_video
from vsr_core.inference import Upscaler
from vsr_core.video.chunk import run_chunk, unpack_segment
from vsr_core.video.mux import join_frame_folders, join_segments, output_container
from vsr_core.video.verify import check_output, span_seconds
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

SEGMENT_SUFFIX = ".mp4"


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
class Projection:
    """What a preview measured, and what it projects for the whole video."""

    frames: int  # frames in the preview
    fps: float  # frames per second upscaled (and encoded) in the preview
    total_frames: int  # frames of the whole video
    projected_seconds: float | None  # time for the whole video at that speed (None: nothing was measured)
    projected_bytes: int  # size of the whole video at the preview's bytes per second of video


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


def select_frames(timestamps: list[int], time_base, max_frames: int | None,
                  preview: tuple[float, float] | None) -> tuple[int, int]:
    """The frames ``[a, b)`` to upscale: the first ``max_frames``, or those of a preview
    (START, DURATION in seconds from the first frame)."""
    if preview is None:
        return 0, len(timestamps) if max_frames is None else min(max_frames, len(timestamps))
    start, duration = preview
    if start < 0 or duration <= 0:
        raise ValueError(f"preview: START must be >= 0 and DURATION > 0 seconds, got {start} {duration}")
    seconds = [float((t - timestamps[0]) * time_base) for t in timestamps]
    a = next((i for i, t in enumerate(seconds) if t >= start), None)
    if a is None:
        raise ValueError(f"preview: START {start} s is after the end of the video ({seconds[-1]:.2f} s)")
    b = next((i for i, t in enumerate(seconds) if t >= start + duration), len(seconds))
    return a, max(b, a + 1)


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
    encoder: EncoderSettings | None = None,
    preview: tuple[float, float] | None = None,
) -> UpscaleResult:
    """Upscale ``source`` (video or frame folder; path or URI) into ``output`` (.mp4/.mkv/...
    or a folder for PNG frames; path or URI), in chunks of ``chunk_frames`` (default
    ``auto_chunk_frames``). With ``ray_pool`` the chunks run on Ray workers
    (``ray.init`` must have been called), else one after another in this process; either way
    the frames are identical. ``should_stop()`` returning True cancels (``JobCancelled``) and
    the work folder is kept for ``resume``, as it is when anything fails. ``encoder``: codec,
    CRF, preset, pixel format (checked before any work; defaults in ``video_encoder``).
    ``preview=(START, DURATION)``: only that stretch (seconds), and a ``Projection``."""
    started = time.perf_counter()
    source, output = str(source), str(output)
    info = probe_video(source)
    all_timestamps = frame_timestamps(source)
    first, stop = select_frames(all_timestamps, info.time_base, max_frames, preview)
    timestamps = all_timestamps[first:stop]
    total = len(timestamps)
    # a clipped run (max_frames, preview) copies the audio, subtitles and chapters of its frames only
    end_time = float(all_timestamps[stop] * info.time_base) if stop < len(all_timestamps) else None
    start_time = float(all_timestamps[first] * info.time_base) if first > 0 else None
    is_video = Path(output).suffix.lower() in VIDEO_EXTENSIONS
    source_is_video = not Path(source).is_dir()
    settings = None
    if is_video:  # fail before any work on a bad choice, not after hours
        settings = (encoder or EncoderSettings()).resolve(info.color, 3 * info.width, 3 * info.height)
    requested, output = output, output_container(source if source_is_video and is_video else None, output)
    # the work folder is named after the output asked for (what a Ctrl-C message and --resume use)
    temporary = work_folder is None and default_work_folder(requested) is None
    folder = Path(tempfile.mkdtemp(prefix="vsr-work-")) if temporary else Path(work_folder or default_work_folder(requested))
    # Segments are mp4 whatever the output: it stores the decoding timestamps the join needs (mkv does not).
    work = WorkFolder(folder, SEGMENT_SUFFIX if is_video else "")
    if chunk_frames is None:  # a resumed run keeps its chunks; a new one sizes them for its workers
        chunk_frames = work.planned().get("chunk_frames") if resume else None
        chunk_frames = chunk_frames or auto_chunk_frames(total, ray_pool.size() if ray_pool else 1)
    chunk_frames = round_chunk_frames(chunk_frames, upscaler.options.batch_size)
    # A preview's windows read the frames around it, so its frames are the whole run's frames;
    # a --max-frames run is a clip of its own (its last frames reflect, as a cut clip's do).
    clip = all_timestamps if preview is not None else timestamps
    chunks = plan_chunks(clip, chunk_frames, first if preview is not None else 0,
                         stop if preview is not None else total)
    options = {"batch_size": upscaler.options.batch_size, "tile": upscaler.options.tile,
               "tile_overlap": upscaler.options.tile_overlap,
               "precision": upscaler.precision, "backend": upscaler.backend,
               "max_frames": max_frames, "preview": list(preview) if preview else None,
               "output_kind": Path(output).suffix.lower() if is_video else "frames",
               "encoder": settings.as_dict() if settings else None, "color": info.color.as_dict()}
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
    run_args = dict(source=source, total=len(clip), rate=info.frame_rate, time_base=info.time_base, suffix=work.suffix,
                    encoder=settings, color=info.color)
    if ray_pool is not None:
        from vsr_core.video.on_ray import run_chunks_on_ray  # imports Ray only when it is used

        run_chunks_on_ray(todo, upscaler, ray_pool, run_args, chunk_done, report, should_stop)
    else:
        for chunk in todo:
            if should_stop():
                raise JobCancelled("cancelled")
            run_chunk(upscaler, source, chunk, len(clip), work.partial_path(chunk), info.frame_rate, info.time_base,
                      on_frame=report, encoder=settings, color=info.color)
            chunk_done(chunk)
    metadata = {"encoder": settings.describe(), "color": " ".join(f"{k}={v}" for k, v in info.color.describe().items()),
                "frames": str(total)} if settings else {}
    _join(work, chunks, source if source_is_video else None, output, is_video, timestamps, info,
          (start_time, end_time), metadata)
    run_seconds = time.perf_counter() - run_started
    projection = None
    if preview is not None:
        projection = _project(output, total, run_seconds, resumed, all_timestamps, timestamps, info)
    shutil.rmtree(folder, ignore_errors=True)
    return UpscaleResult(total, 3 * info.width, 3 * info.height, info.fps, time.perf_counter() - started, resumed,
                         tuple(sorted(nodes)), output, settings.describe() if settings else "png", projection)


def _project(output: str, frames: int, run_seconds: float, resumed: int, all_timestamps, timestamps,
             info) -> Projection:
    """A preview's speed and size, scaled to the whole video (by frames and by seconds of video)."""
    fps = (frames - resumed) / run_seconds if run_seconds > 0 and frames > resumed else 0.0
    frame_seconds = float(1 / info.frame_rate)
    size = storage.size(output) if Path(output).suffix.lower() in VIDEO_EXTENSIONS else \
        sum(p.stat().st_size for p in Path(output).iterdir())
    scale = span_seconds(all_timestamps, info.time_base, frame_seconds) / \
        span_seconds(timestamps, info.time_base, frame_seconds)
    return Projection(frames, fps, len(all_timestamps), len(all_timestamps) / fps if fps else None,
                      round(size * scale))


def _join(work: WorkFolder, chunks, source: str | None, output: str, is_video: bool, timestamps: list[int], info,
          time_range: tuple[float | None, float | None], metadata: dict[str, str]) -> None:
    """The segments -> the output, which appears under its name only when it has every frame,
    the input's duration and its colour tags (``verify``); else the chunks stay for a resume."""
    segments = [work.segment_path(chunk) for chunk in chunks]
    if not is_video:
        if storage.is_uri(output):
            raise ValueError(f"a frame-folder output must be a local folder, got {output}")
        written = join_frame_folders(segments, Path(output))
        if written != len(timestamps):
            raise RuntimeError(f"{output} has {written} frames, the input {len(timestamps)}")
        return
    local = work.folder / f"joined{Path(output).suffix.lower()}"
    start_time, end_time = time_range
    written = join_segments(segments, timestamps, info.time_base, source, local, end_time, start_time, metadata)
    kept = f"nothing was written to {output}, the finished chunks are kept in {work.folder}"
    if written != len(timestamps):
        raise RuntimeError(f"the joined video has {written} frames, the input {len(timestamps)}; {kept}")
    try:
        check_output(local, timestamps, info.time_base, info.frame_rate, info.color)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; {kept}") from exc
    if storage.is_uri(output):
        storage.put_file(local, output)
    else:
        shutil.move(local, output)
