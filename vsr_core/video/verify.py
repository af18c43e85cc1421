"""The last check before a video job is called done: the joined output, read back from the file,
has as many frames as were read from the input, lasts as long within one frame, and carries
the colour tags it was encoded with. If not, the job fails loudly and the output never
appears under its name (the finished chunks stay in the work folder).
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av

from vsr_core.data.video_color import ColorTags


class OutputCheckError(RuntimeError):
    pass


def span_seconds(timestamps: list[int], time_base: Fraction, frame_seconds: float) -> float:
    """How long frames at ``timestamps`` last: first to last, plus the last frame's duration."""
    return float((timestamps[-1] - timestamps[0]) * time_base) + frame_seconds


def check_output(path: Path, timestamps: list[int], time_base: Fraction, frame_rate: Fraction,
                 color: ColorTags | None) -> None:
    """Raise OutputCheckError unless ``path`` has ``len(timestamps)`` frames, the input's
    duration within one frame, and (for video input) ``color``'s matrix, range and transfer."""
    frame_seconds = float(1 / frame_rate) if frame_rate else 0.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [(p.pts, p.duration or 0) for p in container.demux(stream) if p.size and p.pts is not None]
        context = stream.codec_context
        tags = (int(context.colorspace), int(context.color_range), int(context.color_trc))
        base = stream.time_base
    if len(packets) != len(timestamps):
        raise OutputCheckError(f"the output has {len(packets)} frames, the input {len(timestamps)}")
    first = min(pts for pts, _ in packets)
    last_pts, last_duration = max(packets)
    got = float((last_pts - first) * base) + (float(last_duration * base) or frame_seconds)
    want = span_seconds(timestamps, time_base, frame_seconds)
    if abs(got - want) > frame_seconds + 1e-6:
        raise OutputCheckError(f"the output lasts {got:.4f} s, the input {want:.4f} s (more than one frame apart)")
    if color is not None and tags != (color.matrix, color.range, color.transfer):
        raise OutputCheckError(f"the output's colour tags (matrix, range, transfer) are {tags}, expected "
                               f"{(color.matrix, color.range, color.transfer)}")
