"""Join encoded segments into one video without re-encoding, and copy the input's audio,
subtitle and attachment streams, chapters and metadata into it, audio and subtitles with
their timing.

Each output frame is presented at its input frame's timestamp, so the audio, copied packet
by packet with its own timestamps, stays in sync (and a 24000/1001 or variable frame rate
stays exact). Decoding timestamps need care: an encoder delays them by its frame
reordering depth, which is smaller in a short segment (x264 with B-frames: 2 frames, but
0 for a 1-frame segment). The joined stream gets one depth D, the largest of any segment:
packet k decodes at the presentation time of frame k - D, which never comes after its own
presentation time. Packets of all streams are merged in decoding-time order, one at a
time, so memory does not grow with the length of the video.

An .mp4 holds only some audio and subtitle codecs and no attachments (fonts of styled
subtitles): for an input with others the output is an .mkv (``output_container``), never an
mp4 without them.
"""
from __future__ import annotations

import heapq
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from vsr_core.data.video_io import open_container

logger = logging.getLogger(__name__)

# What an .mp4 can carry besides the video; an input with other streams gets an .mkv output.
MP4_STREAM_CODECS = {"audio": {"aac", "mp3", "ac3", "eac3", "opus", "flac", "alac"}, "subtitle": {"mov_text"}}
MP4_SUFFIXES = (".mp4", ".mov")
COPIED_STREAM_TYPES = ("audio", "subtitle")
# Metadata the muxer writes itself (or that describes the old encoding), not the film's.
MUXER_KEYS = {"major_brand", "minor_version", "compatible_brands", "encoder", "duration", "number_of_frames",
              "number_of_bytes", "bps", "vendor_id"}
METADATA_PREFIX = "vsr_"  # our own keys in the output's metadata: what made its pixels


def _packets(container: av.container.InputContainer, streams: list) -> Iterator[av.Packet]:
    for packet in container.demux(streams):
        if packet.dts is None and packet.pts is not None and packet.stream.type != "video":
            packet.dts = packet.pts  # Matroska stores no decoding times; audio and subtitles decode in order
        if packet.dts is not None and packet.size:  # skip demuxer flush packets
            yield packet


def _segment_packets(segment: Path) -> Iterator[av.Packet]:
    with av.open(str(segment)) as container:
        yield from _packets(container, [container.streams.video[0]])


def _segment_stamps(segments: list[Path]) -> tuple[list[dict[int, int]], int]:
    """For each segment, {packet pts: rank of that pts in the segment}, and the reordering
    depth D: the largest number of packets any segment decodes before its first frame."""
    ranks, depth = [], 0
    for segment in segments:
        packets = [(p.pts, p.dts) for p in _segment_packets(segment)]
        ordered = sorted(pts for pts, _ in packets)
        ranks.append({pts: rank for rank, pts in enumerate(ordered)})
        depth = max(depth, sum(1 for _, dts in packets if dts < ordered[0]))
    return ranks, depth


def _restamped(segments: list[Path], timestamps: list[int], time_base: Fraction) -> Iterator[av.Packet]:
    """The segments' video packets, stamped from the input's timestamps: the k-th frame (in
    presentation order) gets ``timestamps[k]`` and the k-th packet decodes at frame k - D's time.
    A container may shift a segment's timestamps (an mp4 edit list rounds its start to
    milliseconds); the order of frames within a segment is all that is read from it."""
    ranks, depth = _segment_stamps(segments)
    step = timestamps[1] - timestamps[0] if len(timestamps) > 1 else 1
    k = first_frame = 0
    for segment, rank in zip(segments, ranks):
        for packet in _segment_packets(segment):
            scale = time_base / packet.time_base
            decode_at = timestamps[k - depth] if k >= depth else timestamps[0] - (depth - k) * step
            packet.pts = round(timestamps[first_frame + rank[packet.pts]] * scale)
            packet.dts = round(decode_at * scale)
            k += 1
            yield packet
        first_frame += len(rank)


def _copyable(stream, output_suffix: str) -> bool:
    if output_suffix not in MP4_SUFFIXES:
        return True
    return stream.codec_context.name in MP4_STREAM_CODECS.get(stream.type, set())


def streams_mp4_cannot_hold(source: str) -> list[str]:
    """The input's streams an .mp4 output would lose ("subtitle 2 (subrip)", "attachment 3")."""
    with open_container(source) as container:
        lost = [f"{s.type} {s.index} ({s.codec_context.name})" for s in container.streams
                if s.type in COPIED_STREAM_TYPES and not _copyable(s, ".mp4")]
        return lost + [f"attachment {s.index}" for s in container.streams if s.type == "attachment"]


def output_container(source: str | None, output: str) -> str:
    """``output``, or the same name as .mkv when ``output`` is an .mp4/.mov and the input has
    streams that container cannot hold."""
    suffix = Path(output).suffix
    if source is None or suffix.lower() not in MP4_SUFFIXES:
        return output
    lost = streams_mp4_cannot_hold(source)
    if not lost:
        return output
    matroska = output[: -len(suffix)] + ".mkv"
    logger.info("%s cannot hold the input's %s: writing %s instead", suffix, ", ".join(lost), matroska)
    return matroska


def _film_metadata(metadata: dict) -> dict:
    return {k: v for k, v in metadata.items() if k.lower() not in MUXER_KEYS and not k.startswith("_STATISTICS")}


def _chapters(source_container, start_time: float | None, end_time: float | None) -> list[dict]:
    """The input's chapters that overlap the output's time range, clipped to it."""
    kept = []
    for chapter in source_container.chapters():
        base = chapter["time_base"]
        begin, end = chapter["start"], chapter["end"]
        if end_time is not None:
            if begin >= round(end_time / base):
                continue
            end = min(end, round(end_time / base))
        if start_time is not None:
            if end <= round(start_time / base):
                continue
            begin = max(begin, round(start_time / base))
        kept.append({**chapter, "start": begin, "end": end})
    return kept


@dataclass(frozen=True)
class CopiedStreams:
    """The input whose audio, subtitle and attachment streams, chapters and metadata go into the
    output: those of ``[start_time, end_time)`` seconds (None: from the start / to the end; a
    ``--max-frames`` or ``--preview`` run keeps only the matching audio and chapters)."""

    source: str
    start_time: float | None = None
    end_time: float | None = None


def join_segments(segments: list[Path], timestamps: list[int], time_base: Fraction, output: Path,
                  copied: CopiedStreams | None = None, metadata: dict[str, str] | None = None) -> int:
    """Write ``output`` from the video segments (in order; their frames have ``timestamps`` in
    ``time_base``) plus the ``copied`` streams of the input (a video, or None) and ``metadata``
    (``vsr_`` keys: how the output was made); returns the number of video frames written."""
    output.parent.mkdir(parents=True, exist_ok=True)
    # An mp4 keeps only its standard metadata keys unless told to write them all.
    options = {"movflags": "use_metadata_tags"} if output.suffix.lower() in MP4_SUFFIXES else {}
    with av.open(str(segments[0])) as first, av.open(str(output), "w", options=options) as out:
        # opaque: take the segment's codec as it is (an encoder of that name need not exist: AV1 is
        # written by libsvtav1 and read by another decoder)
        video_out = out.add_stream_from_template(first.streams.video[0], opaque=True)
        source = open_container(copied.source) if copied is not None else None
        try:
            if source is not None:
                _copy_film_metadata(source, out, video_out, copied)
            out.metadata.update({f"{METADATA_PREFIX}{k}": v for k, v in (metadata or {}).items()})
            copies = _add_copied_streams(source, out, output.suffix.lower()) if source is not None else {}
            extra = _packets(source, [source.streams[i] for i in copies]) if copies else iter(())
            return _mux(out, video_out, _restamped(segments, timestamps, time_base), extra, copies, copied)
        finally:
            if source is not None:
                source.close()


def _copy_film_metadata(source, out, video_out, copied: CopiedStreams) -> None:
    out.metadata.update(_film_metadata(source.metadata))
    video_out.metadata.update(_film_metadata(source.streams.video[0].metadata))
    out.set_chapters(_chapters(source, copied.start_time, copied.end_time))


def _add_copied_streams(source, out, suffix: str) -> dict[int, av.stream.Stream]:
    """The output's copies of the input's audio and subtitle streams (by input index), and its
    attachments (Matroska only), for those the output's container (``suffix``) can hold."""
    copies: dict[int, av.stream.Stream] = {}
    for stream in source.streams:
        if stream.type == "attachment" and suffix not in MP4_SUFFIXES:
            out.add_attachment(stream.metadata.get("filename", f"attachment{stream.index}"),
                               stream.mimetype or "application/octet-stream", stream.data)
            continue
        if stream.type not in COPIED_STREAM_TYPES:
            continue
        if not _copyable(stream, suffix):
            logger.warning("not copying %s stream %d (%s): %s cannot hold it", stream.type, stream.index,
                           stream.codec_context.name, suffix)
            continue
        copies[stream.index] = out.add_stream_from_template(stream)
        copies[stream.index].metadata.update(_film_metadata(stream.metadata))
    return copies


def _mux(out, video_out, video: Iterator[av.Packet], extra: Iterator[av.Packet], copies: dict[int, av.stream.Stream],
         copied: CopiedStreams | None) -> int:
    """Packets of all streams merged in decoding-time order, one at a time; copied packets
    outside the kept time range are left out. Returns the video frames written."""
    start_time, end_time = (copied.start_time, copied.end_time) if copied is not None else (None, None)
    merged = heapq.merge(((float(p.dts * p.time_base), 0, p) for p in video),
                         ((float(p.dts * p.time_base), 1, p) for p in extra), key=lambda item: item[:2])
    frames = 0
    for _, kind, packet in merged:
        if kind == 0:
            packet.stream = video_out
            frames += 1
        elif packet.pts is not None and not _within(packet.pts * packet.time_base, start_time, end_time):
            continue
        else:
            packet.stream = copies[packet.stream.index]
        out.mux(packet)
    return frames


def _within(seconds, start_time: float | None, end_time: float | None) -> bool:
    return (start_time is None or seconds >= start_time) and (end_time is None or seconds < end_time)


def join_frame_folders(segments: list[Path], output: Path) -> int:
    """A frame-folder output: move the segments' numbered PNGs into ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    count = 0
    for segment in segments:
        for frame in sorted(segment.iterdir()):
            shutil.move(str(frame), output / frame.name)
            count += 1
    return count
