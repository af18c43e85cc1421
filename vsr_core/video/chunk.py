"""One chunk of a video: decode its frames (with context), upscale them, encode a segment.

The same code runs in-process (``vsr upscale``) and in a Ray chunk worker. A segment is an mp4
file (for video outputs) or a folder of PNG frames (for frame-folder outputs), which a worker on
another node sends back as bytes (``pack_segment`` / ``unpack_segment``).

The three stages overlap: the decoder runs ahead in a thread of its own, the model in the
calling thread, and the encoder (colour conversion, x264 or PNG) behind it in another thread
(``overlap``; FFmpeg and torch release the GIL), so the encoder uses the CPU time the model
leaves instead of the model waiting for it. x264 keeps its own threads (FFmpeg's default, 1.5
per core): one or two threads measured no faster beside the model's (benchmarks/README.md,
"Overlap"). x264 also keeps its last frames for its lookahead (40 at preset medium) and encodes
them when it is closed, more than half its work on a chunk of 64 frames: ``start_chunk``
returns once the model is done, with the encoder still finishing in its thread, so that an
executor can upscale the next chunk meanwhile (``EncodingChunk.finish`` waits for it). The
frames are the same as a serial run's, in the same order.
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from vsr_core.data.video_io import FrameWriter, iter_timed_frames
from vsr_core.inference import Upscaler
from vsr_core.overlap import BackgroundSink, background
from vsr_core.video.plan import ChunkTask


def run_chunk(upscaler: Upscaler, task: ChunkTask, segment: Path,
              on_frame: Callable[[int], None] | None = None) -> int:
    """Upscale the output frames of ``task.chunk`` into ``segment`` and wait for the encoder;
    returns the frames written (``start_chunk``, then ``finish``)."""
    return start_chunk(upscaler, task, segment, on_frame).finish()


class EncodingChunk:
    """A chunk whose frames are all upscaled and handed to its encoder, which may still be at work."""

    def __init__(self, task: ChunkTask, writer: FrameWriter, encoder: BackgroundSink,
                 on_frame: Callable[[int], None] | None):
        self.task, self.writer, self.encoder, self.on_frame = task, writer, encoder, on_frame

    def finish(self) -> int:
        """Wait for the encoder (its last frames, the file closed); the frames written. Raises what
        the encoder raised, or when the segment lacks frames: a frame is never skipped."""
        self.encoder.close()
        chunk, count = self.task.chunk, self.writer.count
        if self.on_frame is not None:
            self.on_frame(count)
        if count != chunk.frames:
            raise RuntimeError(f"chunk {chunk.index} wrote {count} frames; it has {chunk.frames}")
        return count


def start_chunk(upscaler: Upscaler, task: ChunkTask, segment: Path,
                on_frame: Callable[[int], None] | None = None) -> EncodingChunk:
    """Decode and upscale the frames of ``task.chunk`` and hand them to the encoder of ``segment``;
    returns when the model is done, the encoder possibly still at work (``EncodingChunk.finish``).

    Each output frame keeps the timestamp of its input frame, and the input's colour and bit
    depth (``task.color``), encoded with ``task.encoder``. ``on_frame(n)`` is called (in this
    thread) with the number of frames encoded so far (for progress). Any failure raises."""
    chunk = task.chunk
    timestamps: list[int] = []  # appended by the decoder thread before it hands each frame over

    def frames():
        for pts, frame in iter_timed_frames(task.source, start_pts=chunk.first_pts, count=chunk.last - chunk.first,
                                            deep=True):
            timestamps.append(pts)
            yield frame

    ahead = upscaler.options.batch_size  # a batch of frames waits on each side of the model
    outputs = upscaler.stream(background(frames(), ahead, "vsr-decode"), first=chunk.first,
                              total=task.clip_frames, start=chunk.start, stop=chunk.stop)
    writer = FrameWriter(segment, task.frame_rate, task.time_base, first_index=chunk.start, encoder=task.encoder,
                         color=task.color, png=task.png)
    encoder = BackgroundSink(lambda item: writer.write(*item), ahead, "vsr-encode", finish=writer.close)
    reported = 0
    try:
        with closing(outputs):
            for index, frame in enumerate(outputs):
                encoder.put((frame, timestamps[chunk.start - chunk.first + index]))
                if on_frame is not None and writer.count > reported:
                    reported = writer.count
                    on_frame(reported)
        encoder.end()  # the encoder finishes in its thread
    except BaseException:
        encoder.abandon()
        writer.close()
        raise
    return EncodingChunk(task, writer, encoder, on_frame)


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
