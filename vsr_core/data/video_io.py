"""Reading and writing videos and frame folders, one frame at a time.

Videos (mp4/mkv/avi/mov/webm) are decoded and encoded with PyAV (FFmpeg); a folder of
PNG/JPEG files (sorted by name) is a video too. Frames are HxWx3 RGB: uint8, or uint16 (full
16-bit scale) for videos deeper than 8 bits, converted with the video's own colour matrix and
range and turned upright by its display rotation (``video_color``). A video may be a local path
or a storage URI (``vsr_core.storage``). Everything streams: nothing here holds more than one
decoded frame.

Frames keep their presentation timestamps (``pts``, in the stream's ``time_base``):
``iter_timed_frames`` can start at any frame (a seek to the keyframe before it, then decoding
forward), which is how the video engine gives each chunk its own frames, and ``FrameWriter``
writes frames at the timestamps it is given, so an upscaled video keeps the input's timing,
with the encoder settings (``video_encoder``) and colour tags it is given.

Every decoded frame must have the size the container declares (``check_frame_size``): a video
whose frames grow mid-stream fails with a ``VideoReadError`` at that frame, and FFmpeg's own
decoders are told the size too (``max_pixels``), so they refuse a much larger frame before
allocating it. ``probe_video(path, max_pixels)`` refuses a declared size above the limit before
it decodes anything (``VideoTooLargeError``). Opening an untrusted file at all happens in a
child process with memory and time limits (``vsr_core.data.video_probe``).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from av.video.reformatter import VideoReformatter
import imageio.v3 as iio
import numpy as np
from PIL import Image

from vsr_core import storage
from vsr_core.data.video_color import (
    ColorTags,
    Orientation,
    UnsupportedColorError,
    from_rgb,
    guess_matrix,
    tag_stream,
    tags_of,
    to_rgb,
    with_hdr10_metadata,
)
from vsr_core.data.video_encoder import EncoderSettings, PngSettings
from vsr_core.image_io import InvalidImageError, to_rgb8

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
DEFAULT_FOLDER_FPS = 25
MAX_REORDER_FRAMES = 64  # more than any encoder's frame reordering (x265 at most 16 B-frames)


class VideoReadError(RuntimeError):
    pass


class VideoTooLargeError(VideoReadError):
    """The video's frames have more pixels than allowed."""


# FFmpeg checks a frame's allocation against max_pixels with its coded size (padded to the
# codec's blocks and the stride alignment), so the limit it gets has this much slack per side.
DECODER_SLACK = 128


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    num_frames: int | None  # None when the container does not say
    height: int
    width: int
    time_base: Fraction = Fraction(1, DEFAULT_FOLDER_FPS)  # unit of the frames' timestamps
    frame_rate: Fraction = Fraction(DEFAULT_FOLDER_FPS)  # exact average rate, e.g. 24000/1001
    color: ColorTags = ColorTags()  # a frame folder: 8-bit sRGB-ish PNGs, written as BT.709
    rotation: int = 0  # display rotation (counter-clockwise degrees); height/width are upright
    duration: float | None = None  # seconds, as the container says (None when it does not)


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def _is_folder(path) -> bool:
    return not storage.is_uri(path) and Path(path).is_dir()


def _check_source(path) -> None:
    if storage.is_uri(path):
        if not storage.exists(path):
            raise VideoReadError(f"video not found: {path}")
        return
    path = Path(path)
    if not path.exists():
        raise VideoReadError(f"video not found: {path}")
    if path.is_dir():
        if not _frame_files(path):
            raise VideoReadError(f"{path} contains no frames ({'/'.join(IMAGE_EXTENSIONS)} files)")
    elif path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise VideoReadError(f"{path}: unsupported file type; use {', '.join(VIDEO_EXTENSIONS)} or a frame folder")
    elif path.stat().st_size == 0:
        raise VideoReadError(f"{path} is empty (0 bytes)")


def open_container(path) -> av.container.InputContainer:
    """The input container of a video (path or URI), with a clear error for non-videos."""
    _check_source(path)
    try:
        container = av.open(storage.open_input(path) if storage.is_uri(path) else str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoReadError(f"cannot read video {path}: it is corrupt or not a video ({exc})") from None
    if not container.streams.video or container.streams.video[0].codec_context is None:
        container.close()
        raise VideoReadError(f"{path} has no video stream that can be decoded")
    return container


def _declared_size(stream, path, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) the container declares for the stream's frames, checked against
    ``max_pixels``; the decoder is told to refuse frames much larger than that."""
    width, height = stream.codec_context.width, stream.codec_context.height
    if max_pixels is not None and width * height > max_pixels:
        raise VideoTooLargeError(f"{path}: frames are {width}x{height}; the limit is {max_pixels} pixels per frame")
    if width > 0 and height > 0:
        stream.codec_context.options = {**(stream.codec_context.options or {}),
                                        "max_pixels": str((width + DECODER_SLACK) * (height + DECODER_SLACK))}
    return width, height


def check_frame_size(frame: av.VideoFrame, size: tuple[int, int], path) -> None:
    """Every frame has the size the container declared (0x0: not declared)."""
    if size[0] > 0 and (frame.width, frame.height) != size:
        when = f" at {frame.time:.3f} s" if frame.time is not None else ""
        raise VideoReadError(f"{path}: the frame{when} is {frame.width}x{frame.height}, the video's frames are "
                             f"{size[0]}x{size[1]}; a size change within a video is not supported")


def probe_video(path, max_pixels: int | None = None) -> VideoInfo:
    """What the video is (size upright, timing, colour). With ``max_pixels``, a larger declared
    frame size raises ``VideoTooLargeError`` before any frame is decoded."""
    _check_source(path)
    if _is_folder(path):
        files = _frame_files(Path(path))
        with Image.open(files[0]) as first:
            return VideoInfo(float(DEFAULT_FOLDER_FPS), len(files), first.height, first.width)
    with open_container(path) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(DEFAULT_FOLDER_FPS)
        width, height = _declared_size(stream, path, max_pixels)
        color = _color_of(stream, path)
        rotation = 0
        try:  # the display rotation and HDR10 metadata come with decoded frames: decode the first one
            first = next(container.decode(stream))
            check_frame_size(first, (width, height), path)
            rotation, color = first.rotation, with_hdr10_metadata(color, first)
        except (av.FFmpegError, StopIteration):
            pass  # no frame: iter_timed_frames says so
        if round(rotation / 90) % 2:
            height, width = width, height
        duration = container.duration / av.time_base if container.duration else None
        return VideoInfo(float(rate), stream.frames or None, height, width,
                         stream.time_base or Fraction(1, DEFAULT_FOLDER_FPS), Fraction(rate), color, rotation, duration)


def _color_of(stream, path) -> ColorTags:
    try:
        return tags_of(stream.codec_context, stream.codec_context.width, stream.codec_context.height)
    except UnsupportedColorError as exc:
        raise VideoReadError(f"{path}: {exc}") from None


def frame_timestamps(path) -> list[int]:
    """Every frame's pts in presentation order, read from the container's packets (no decoding:
    a 2-hour film takes seconds). For a frame folder, the frame numbers."""
    _check_source(path)
    if _is_folder(path):
        return list(range(len(_frame_files(Path(path)))))
    with open_container(path) as container:
        stamps = list(_frame_packets(container, path))
    if not stamps:
        raise VideoReadError(f"video {path} contains no frames")
    return sorted(stamps)


def count_frames(path, stop_after: int | None = None) -> int:
    """The frames of a video, counted as ``frame_timestamps`` counts them (its packets, no
    decoding); with ``stop_after``, counting stops one frame past it (enough to say "too many")."""
    if _is_folder(path):
        return len(frame_timestamps(path))
    count = 0
    with open_container(path) as container:
        for _ in _frame_packets(container, path):
            count += 1
            if stop_after is not None and count > stop_after:
                break
    return count


def _frame_packets(container, path) -> Iterator[int]:
    """The pts of the video stream's packets that hold a frame, in file order."""
    stream = container.streams.video[0]
    try:
        for packet in container.demux(stream):
            if packet.size and packet.pts is not None:
                yield packet.pts
    except av.FFmpegError as exc:
        raise VideoReadError(f"cannot read video {path}: {exc}") from None


def _as_rgb(frame: np.ndarray, source: str) -> np.ndarray:
    """Any frame folder image -> HxWx3 uint8, with the same conversions as uploads (image_io)."""
    try:
        return to_rgb8(frame, source)
    except InvalidImageError as exc:
        raise VideoReadError(str(exc)) from exc


def iter_timed_frames(path, start_pts: int | None = None, count: int | None = None,
                      deep: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (pts, HxWx3 RGB frame) from the frame whose pts is ``start_pts`` (default: the first),
    at most ``count`` frames. Frames are uint8, or with ``deep`` uint16 for a video deeper than 8
    bits (the video engine; training and evaluation read 8 bits). Raises VideoReadError for missing, empty or corrupt input,
    or when ``start_pts`` is not a frame of the video."""
    if count is not None and count <= 0:
        return
    if _is_folder(path):
        _check_source(path)
        files = _frame_files(Path(path))
        first = start_pts or 0
        for index, file in enumerate(files[first : None if count is None else first + count], start=first):
            try:
                image = iio.imread(file)
            except Exception as exc:
                raise VideoReadError(f"cannot read frame {file}: {exc}") from exc
            yield index, _as_rgb(image, str(file))
        return
    produced = 0
    with open_container(path) as container:
        stream = container.streams.video[0]
        color = _color_of(stream, path)
        size = _declared_size(stream, path)
        reformatter, orientation = VideoReformatter(), None
        try:
            if start_pts is not None:
                container.seek(start_pts, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                check_frame_size(frame, size, path)  # before converting it, frame by frame
                pts = frame.pts if frame.pts is not None else produced
                if start_pts is not None:
                    if pts < start_pts:
                        continue
                    if produced == 0 and pts != start_pts:
                        raise VideoReadError(f"{path}: no frame at pts {start_pts} (the next is at {pts})")
                orientation = orientation or Orientation.of(frame)  # once: the side data keeps a frame alive
                yield pts, to_rgb(frame, color, deep, reformatter, orientation)
                produced += 1
                if count is not None and produced >= count:
                    return
        except av.FFmpegError as exc:
            raise VideoReadError(f"cannot decode video {path} (after {produced} frames): {exc}") from None
    if produced == 0:
        raise VideoReadError(f"video {path} contains no frames")


def iter_frames(path, max_frames: int | None = None, deep: bool = False) -> Iterator[np.ndarray]:
    """Yield HxWx3 RGB frames (uint8; with ``deep``, uint16 for video deeper than 8 bits).
    Raises VideoReadError for missing, empty or corrupt input."""
    for _, frame in iter_timed_frames(path, count=max_frames, deep=deep):
        yield frame


def read_frames(path, max_frames: int | None = None, deep: bool = False) -> np.ndarray:
    """The whole clip as one [T,H,W,3] array (for short clips and datasets)."""
    return np.stack(list(iter_frames(path, max_frames, deep)))


def as_rate(fps: float | Fraction) -> Fraction:
    """An exact frame rate: 25.0 -> 25, 23.976... -> 24000/1001."""
    return fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)


def png_bytes(frame: np.ndarray, settings: PngSettings | None = None) -> bytes:
    """An RGB PNG of an HxWx3 frame: 8-bit for uint8, 16-bit for uint16, compressed as
    ``settings`` say (``PngSettings``: zlib level 1 by default). FFmpeg's encoder (it releases
    the GIL): at the same zlib level it took half Pillow's time for the same size."""
    settings = settings or PngSettings()
    deep = frame.dtype == np.uint16
    context = av.CodecContext.create("png", "w")
    context.width, context.height, context.pix_fmt = frame.shape[1], frame.shape[0], "rgb48be" if deep else "rgb24"
    context.options = settings.options()
    image = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb48le" if deep else "rgb24")
    if deep:
        image = image.reformat(format="rgb48be")  # PNG stores big-endian samples
    return b"".join(bytes(packet) for packet in [*context.encode(image), *context.encode()])


class FrameWriter:
    """Write frames to a video (``encoder``: codec, CRF, preset, pixel format; default H.264 at
    the quality defaults of ``video_encoder``) or, for a path without a video extension, to a
    folder of numbered PNGs (16-bit for uint16 frames; ``png``: their compression). Use as a
    context manager.

    Frames (uint8 or uint16 RGB) are converted to YUV with ``color``'s matrix and range, and the
    video is tagged with all of ``color`` (default: untagged-input rules for the frame size,
    8 or 16 bits as the frames are). Frames are written at the timestamps given to ``write`` (in
    ``time_base``, default one unit per frame at ``fps``), or one frame apart when none is given.
    ``first_index`` numbers the PNG files of a folder (a chunk of a longer video writes its own
    range). ``threads``: the video encoder's threads (0: FFmpeg's choice, e.g. x264's 1.5 per
    core). ``settings`` holds the encoder settings actually used, once a frame is written."""

    def __init__(self, path: str | Path, fps: float | Fraction, time_base: Fraction | None = None,
                 first_index: int = 0, encoder: EncoderSettings | None = None, color: ColorTags | None = None,
                 png: PngSettings | None = None, threads: int = 0):
        self.path = Path(path)
        self.rate = as_rate(fps)
        self.fps = float(self.rate)
        self.time_base = time_base or 1 / self.rate
        self.count = 0
        self.first_index = first_index
        self.is_video = self.path.suffix.lower() in VIDEO_EXTENSIONS
        self.encoder = encoder or EncoderSettings()
        self.png = png or PngSettings()
        self.threads = threads
        self.color = color
        self.settings: EncoderSettings | None = None
        self._container = None
        self._reformatter = VideoReformatter()  # one conversion context for the whole video
        self._stream = None
        if self.is_video:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        else:
            self.path.mkdir(parents=True, exist_ok=True)

    def _open(self, frame: np.ndarray) -> None:
        height, width = frame.shape[:2]
        if self.color is None:
            self.color = ColorTags(matrix=guess_matrix(width, height), bit_depth=16 if frame.dtype == np.uint16 else 8)
        self.settings = self.encoder.resolve(self.color, width, height)
        self._container = av.open(str(self.path), "w")
        stream = self._container.add_stream(self.settings.encoder, rate=self.rate)
        stream.width, stream.height, stream.pix_fmt = width, height, self.settings.pix_fmt
        stream.codec_context.time_base = self.time_base
        stream.codec_context.thread_count = self.threads
        stream.time_base = self.time_base
        tag_stream(stream.codec_context, self.color)
        stream.options = self.settings.options(self.color)
        self._stream = stream

    def write(self, frame: np.ndarray, pts: int | None = None) -> None:
        if not self.is_video:
            (self.path / f"{self.first_index + self.count:06d}.png").write_bytes(png_bytes(frame, self.png))
            self.count += 1
            return
        if self._container is None:
            self._open(frame)
        video_frame = from_rgb(frame, self.color, self.settings.pix_fmt, self._reformatter)
        video_frame.pts = self.count if pts is None else pts
        video_frame.time_base = self.time_base
        self._mux(self._stream.encode(video_frame))
        self.count += 1

    def _mux(self, packets) -> None:
        # libx265 sometimes gives the first packet of a 1- or 2-frame stream a garbage decoding
        # time (far below its pts), which the mp4 muxer refuses. Any dts before the next packet's
        # will do: the join restamps them all (mux.py).
        frame_ticks = max(1, round(1 / (self.rate * self.time_base)))
        for packet in packets:
            if packet.dts is not None and packet.pts is not None and \
                    packet.pts - packet.dts > MAX_REORDER_FRAMES * frame_ticks:
                packet.dts = packet.pts - MAX_REORDER_FRAMES * frame_ticks
            self._container.mux(packet)

    def close(self) -> None:
        if self._container is not None:
            self._mux(self._stream.encode())  # flush the encoder's delayed frames
            self._container.close()
            self._container = None

    def __enter__(self) -> "FrameWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
