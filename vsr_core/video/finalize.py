"""The last step of a video run: the finished segments joined into the output (the input's
audio, subtitles, chapters and metadata copied in, ``mux``), checked (``verify``) and only
then moved to where it belongs; else the chunks stay in the work folder for a resume. A
preview's speed and size, projected to the whole video.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from vsr_core import storage
from vsr_core.data.video_io import VIDEO_EXTENSIONS
from vsr_core.video.mux import CopiedStreams, join_frame_folders, join_segments
from vsr_core.video.plan import VideoPlan
from vsr_core.video.verify import check_output, span_seconds


@dataclass(frozen=True)
class Projection:
    """What a preview measured, and what it projects for the whole video."""

    frames: int  # frames in the preview
    fps: float  # frames per second upscaled (and encoded) in the preview
    total_frames: int  # frames of the whole video
    projected_seconds: float | None  # time for the whole video at that speed (None: nothing was measured)
    projected_bytes: int  # size of the whole video at the preview's bytes per second of video


def finalize(plan: VideoPlan) -> None:
    """The segments -> ``plan.output``, which appears under its name only when it has every frame,
    the input's duration and its colour tags; else the chunks stay for a resume."""
    segments = [plan.work.segment_path(chunk) for chunk in plan.chunks]
    if plan.encoder is None:
        _join_frames(plan, segments)
        return
    local = plan.work.folder / f"joined{Path(plan.output).suffix.lower()}"
    start_time, end_time = plan.time_range()
    copied = CopiedStreams(plan.request.source, start_time, end_time) if plan.source_is_video else None
    written = join_segments(segments, plan.timestamps, plan.info.time_base, local, copied, _metadata(plan))
    kept = f"nothing was written to {plan.output}, the finished chunks are kept in {plan.work.folder}"
    if written != plan.total:
        raise RuntimeError(f"the joined video has {written} frames, the input {plan.total}; {kept}")
    info = plan.info
    try:
        check_output(local, plan.timestamps, info.time_base, info.frame_rate, info.color)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; {kept}") from exc
    if storage.is_uri(plan.output):
        storage.put_file(local, plan.output)
    else:
        shutil.move(local, plan.output)


def _join_frames(plan: VideoPlan, segments: list[Path]) -> None:
    if storage.is_uri(plan.output):
        raise ValueError(f"a frame-folder output must be a local folder, got {plan.output}")
    written = join_frame_folders(segments, Path(plan.output))
    if written != plan.total:
        raise RuntimeError(f"{plan.output} has {written} frames, the input {plan.total}")


def _metadata(plan: VideoPlan) -> dict[str, str]:
    """The output's ``vsr_`` tags: what made its pixels."""
    color = " ".join(f"{k}={v}" for k, v in plan.info.color.describe().items())
    return {"encoder": plan.encoder.describe(), "color": color, "frames": str(plan.total)}


def project(plan: VideoPlan, run_seconds: float) -> Projection:
    """A preview's speed and size, scaled to the whole video (by frames and by seconds of video)."""
    frames, resumed, info = plan.total, plan.resumed_frames, plan.info
    fps = (frames - resumed) / run_seconds if run_seconds > 0 and frames > resumed else 0.0
    frame_seconds = float(1 / info.frame_rate)
    output = plan.output
    size = storage.size(output) if Path(output).suffix.lower() in VIDEO_EXTENSIONS else \
        sum(p.stat().st_size for p in Path(output).iterdir())
    scale = span_seconds(plan.input_timestamps, info.time_base, frame_seconds) / \
        span_seconds(plan.timestamps, info.time_base, frame_seconds)
    total_frames = len(plan.input_timestamps)
    return Projection(frames, fps, total_frames, total_frames / fps if fps else None, round(size * scale))
