"""Hostile inputs, made from scratch for the tests (nothing downloaded): files that are small but
cost a decoder much (progressive JPEG bombs, PNGs of many chunks), lie in their headers (an mp4
claiming millions of frames) or change under a check (a video whose frames grow mid-stream)."""
from __future__ import annotations

import io
import re
import struct
import zlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from conftest import make_clip
from vsr_core.data.video_io import FrameWriter


# --- images ----------------------------------------------------------------------------------------
def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment of a well-formed JPEG; a scan includes its data."""
    segments, position = [], 2
    while position < len(data):
        marker = data[position + 1]
        if marker == 0xD9:
            return segments + [(marker, position, position + 2)]
        end = position + 2 + struct.unpack_from(">H", data, position + 2)[0]
        if marker == 0xDA:
            end = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]").search(data, end).start()
        segments.append((marker, position, end))
        position = end
    return segments


def progressive_jpeg_bomb(size: int = 960, extra_scans: int = 2000) -> bytes:
    """A flat-gray progressive JPEG whose last scan (with its Huffman table) is repeated: each
    copy is ~34 bytes and makes the decoder pass over every block again."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    segments = _jpeg_segments(data)
    last = max(i for i, segment in enumerate(segments) if segment[0] == 0xDA)
    first = last - 1 if segments[last - 1][0] == 0xC4 else last
    scan = b"".join(data[start:end] for _, start, end in segments[first : last + 1])
    return data[: segments[first][1]] + scan * extra_scans + b"\xff\xd9"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_of_many_chunks(chunks: int = 1_000_000) -> bytes:
    """An 8x8 PNG header followed by a million empty text chunks (Pillow reads each in Python)."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"tEXt", b"a\x00b") * chunks


# --- videos -----------------------------------------------------------------------------------------
def write_clip(path: Path, frames: int, height: int = 16, width: int = 16, fps: int = 25) -> Path:
    with FrameWriter(path, fps=fps) as writer:
        for frame in make_clip(frames, height, width, seed=frames):
            writer.write(frame)
    return path


def growing_video(path: Path, small: int = 64, big: int = 1920, frames: int = 12, switch: int = 7) -> Path:
    """An MJPEG .mkv whose container says ``small`` x ``small``; frames from ``switch`` on (the 8th
    by default) are ``big`` x ``big``, encoded by a second encoder into the same stream."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=25)
        stream.width = stream.height = small
        stream.pix_fmt = "yuvj420p"
        large = av.CodecContext.create("mjpeg", "w")
        large.width = large.height = big
        large.pix_fmt, large.time_base = "yuvj420p", Fraction(1, 25)
        for i in range(frames):
            side = small if i < switch else big
            frame = av.VideoFrame.from_ndarray(np.full((side, side, 3), 90 + i, np.uint8), format="rgb24")
            frame = frame.reformat(format="yuvj420p")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for packet in (stream.encode(frame) if i < switch else large.encode(frame)):
                packet.stream, packet.pts, packet.dts, packet.time_base = stream, i, i, Fraction(1, 25)
                out.mux(packet)
    return path


_CONTAINER_BOXES = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"dinf", b"edts"}


def _boxes(data: bytes) -> list[list]:
    """[type, payload or children] of each mp4 box (64-bit sizes not needed here)."""
    boxes, position = [], 0
    while position + 8 <= len(data):
        size, kind = struct.unpack_from(">I4s", data, position)
        payload = data[position + 8 : position + size]
        boxes.append([kind, _boxes(payload) if kind in _CONTAINER_BOXES else payload])
        position += size
    return boxes


def _serialize(boxes: list[list]) -> bytes:
    out = b""
    for kind, payload in boxes:
        body = _serialize(payload) if kind in _CONTAINER_BOXES else payload
        out += struct.pack(">I4s", 8 + len(body), kind) + body
    return out


def mp4_claiming_frames(path: Path, claimed: int) -> Path:
    """A one-frame H.264 mp4 whose sample tables claim ``claimed`` frames of one byte each: no
    per-frame table is in the file (constant sample size), so it stays a few hundred bytes, and
    FFmpeg's demuxer builds an index of ``claimed`` entries (24 bytes each) when it opens it."""
    source = write_clip(path.with_suffix(".src.mp4"), 1)
    boxes = _boxes(source.read_bytes())
    mdat_at = source.read_bytes().index(b"mdat") + 4

    def patch(nodes: list[list]) -> None:
        for node in nodes:
            kind, payload = node
            if kind in _CONTAINER_BOXES:
                patch(payload)
            elif kind == b"stts":
                node[1] = struct.pack(">IIII", 0, 1, claimed, 512)
            elif kind == b"stsc":
                node[1] = struct.pack(">IIIII", 0, 1, 1, claimed, 1)
            elif kind == b"stsz":
                node[1] = struct.pack(">III", 0, 1, claimed)
            elif kind == b"stco":
                node[1] = struct.pack(">III", 0, 1, mdat_at)
            elif kind in (b"stss", b"ctts", b"sdtp"):
                node[1] = node[1][:4] + struct.pack(">I", 0)  # no entries

    patch(boxes)
    path.write_bytes(_serialize(boxes))
    source.unlink()
    return path
