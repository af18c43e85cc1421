"""One chunk of a video: decode its frames (with context), upscale them, encode a segment.

The same function runs in-process (``vsr upscale``) and in a Ray chunk worker. A segment is
an mp4 file (for video outputs) or a folder of PNG frames (for frame-folder outputs), which
a worker on another node sends back as bytes (``pack_segment`` / ``unpack_segment``).

The three stages overlap: the decoder runs ahead in a thread of its own, the model in the
calling thread, and the encoder (colour conversion, x264 or PNG) behind it in another thread
(``overlap``; FFmpeg and torch release the GIL). So the model never waits for a whole encode,
and the encoder uses the CPU time the model leaves. On a CPU the video encoder gets one thread:
beside the model's own threads, which take every core, x264's default of 1.5 threads per core
only made the stages take the cores from each other in turns (benchmarks/README.md, "Overlap").
The frames are the same as a serial run's, in the same order.
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
    """Upscale the output frames of ``task.chunk`` into ``segment``; returns the frames written.

    Each output frame keeps the timestamp of its input frame, and the input's colour and bit
    depth (``task.color``), encoded with ``task.encoder``. ``on_frame(n)`` is called (in this
    thread) with the number of frames encoded so far (for progress). Any failure raises: a frame
    is never skipped."""
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
    with closing(outputs), FrameWriter(segment, task.frame_rate, task.time_base, first_index=chunk.start,
                                       encoder=task.encoder, color=task.color, png=task.png,
                                       threads=encoder_threads(upscaler)) as writer:
        reported = 0

        def report() -> None:
            nonlocal reported
            if on_frame is not None and writer.count > reported:
                reported = writer.count
                on_frame(reported)

        with BackgroundSink(lambda item: writer.write(*item), ahead, "vsr-encode") as encoder:
            for index, frame in enumerate(outputs):
                encoder.put((frame, timestamps[chunk.start - chunk.first + index]))
                report()
        report()
    if writer.count != chunk.frames:
        raise RuntimeError(f"chunk {chunk.index} wrote {writer.count} frames; it has {chunk.frames}")
    return writer.count


def encoder_threads(upscaler: Upscaler) -> int:
    """The video encoder's threads beside this model: one when the model runs on the CPU (its
    threads take the cores), FFmpeg's choice when it runs elsewhere (the cores are free)."""
    return 1 if upscaler.device.type == "cpu" else 0


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
