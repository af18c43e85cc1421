"""One chunk of a video: decode its frames (with context), upscale them, encode a segment.

The same function runs in-process (``vsr upscale``) and in a Ray chunk worker. A segment is
an mp4 file (for video outputs) or a folder of PNG frames (for frame-folder outputs), which
a worker on another node sends back as bytes (``pack_segment`` / ``unpack_segment``).
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from vsr_core.data.video_io import FrameWriter, iter_timed_frames
from vsr_core.inference import Upscaler
from vsr_core.video.plan import ChunkTask


def run_chunk(upscaler: Upscaler, task: ChunkTask, segment: Path,
              on_frame: Callable[[int], None] | None = None) -> int:
    """Upscale the output frames of ``task.chunk`` into ``segment``; returns the frames written.

    Each output frame keeps the timestamp of its input frame, and the input's colour and bit
    depth (``task.color``), encoded with ``task.encoder``. ``on_frame(n)`` is called with the
    number of frames written so far (for progress). Any failure raises: a frame is never skipped."""
    chunk = task.chunk
    timestamps: list[int] = []

    def frames():
        for pts, frame in iter_timed_frames(task.source, start_pts=chunk.first_pts, count=chunk.last - chunk.first,
                                            deep=True):
            timestamps.append(pts)
            yield frame

    outputs = upscaler.stream(frames(), first=chunk.first, total=task.clip_frames, start=chunk.start, stop=chunk.stop)
    with FrameWriter(segment, task.frame_rate, task.time_base, first_index=chunk.start, encoder=task.encoder,
                     color=task.color, png=task.png) as writer:
        for frame in outputs:
            writer.write(frame, pts=timestamps[chunk.start - chunk.first + writer.count])
            if on_frame is not None:
                on_frame(writer.count)
    if writer.count != chunk.frames:
        raise RuntimeError(f"chunk {chunk.index} wrote {writer.count} frames; it has {chunk.frames}")
    return writer.count


def pack_segment(segment: Path) -> bytes | dict[str, bytes]:
    """A finished segment as bytes (an mp4) or {file name: bytes} (a PNG folder)."""
    if segment.is_dir():
        return {p.name: p.read_bytes() for p in sorted(segment.iterdir())}
    return segment.read_bytes()


def unpack_segment(data: bytes | dict[str, bytes], segment: Path) -> None:
    if isinstance(data, bytes):
        segment.write_bytes(data)
        return
    shutil.rmtree(segment, ignore_errors=True)
    segment.mkdir(parents=True)
    for name, blob in data.items():
        (segment / name).write_bytes(blob)
