"""Reading and writing videos and frame folders, one frame at a time.

Videos (mp4/mkv/avi/mov/webm) are decoded with imageio's PyAV plugin; a folder of
PNG/JPEG files (sorted by name) is a video too. Frames are HxWx3 uint8 RGB.
Everything streams: nothing here holds more than one frame.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image

from vsr_core.image_io import InvalidImageError, to_rgb8

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
DEFAULT_FOLDER_FPS = 25.0


class VideoReadError(RuntimeError):
    pass


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    num_frames: int | None  # None when the container does not say
    height: int
    width: int


def _frame_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def _as_rgb(frame: np.ndarray, source: str) -> np.ndarray:
    """Any frame folder image -> HxWx3 uint8, with the same conversions as uploads (image_io)."""
    try:
        return to_rgb8(frame, source)
    except InvalidImageError as exc:
        raise VideoReadError(str(exc)) from exc


def _check_source(path: Path) -> None:
    if not path.exists():
        raise VideoReadError(f"video not found: {path}")
    if path.is_dir():
        if not _frame_files(path):
            raise VideoReadError(f"{path} contains no frames ({'/'.join(IMAGE_EXTENSIONS)} files)")
    elif path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise VideoReadError(f"{path}: unsupported file type; use {', '.join(VIDEO_EXTENSIONS)} or a frame folder")
    elif path.stat().st_size == 0:
        raise VideoReadError(f"{path} is empty (0 bytes)")


def probe_video(path: str | Path) -> VideoInfo:
    path = Path(path)
    _check_source(path)
    if path.is_dir():
        files = _frame_files(path)
        with Image.open(files[0]) as first:
            return VideoInfo(DEFAULT_FOLDER_FPS, len(files), first.height, first.width)
    try:
        meta = iio.immeta(path, plugin="pyav")
        props = iio.improps(path, plugin="pyav")
    except Exception as exc:
        raise VideoReadError(f"cannot read video {path}: it is corrupt or not a video ({exc})") from exc
    num_frames = props.shape[0] if props.n_images else None
    return VideoInfo(float(meta.get("fps") or DEFAULT_FOLDER_FPS), num_frames, props.shape[-3], props.shape[-2])


def iter_frames(path: str | Path, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Yield HxWx3 uint8 frames. Raises VideoReadError for missing, empty or corrupt input."""
    path = Path(path)
    _check_source(path)
    count = 0
    if path.is_dir():
        for file in _frame_files(path):
            if max_frames is not None and count >= max_frames:
                return
            try:
                frame = iio.imread(file)
            except Exception as exc:
                raise VideoReadError(f"cannot read frame {file}: {exc}") from exc
            count += 1
            yield _as_rgb(frame, str(file))
        return
    try:
        for frame in iio.imiter(path, plugin="pyav", format="rgb24"):
            if max_frames is not None and count >= max_frames:
                return
            count += 1
            yield frame
    except Exception as exc:
        raise VideoReadError(f"cannot decode video {path} (after {count} frames): {exc}") from exc
    if count == 0:
        raise VideoReadError(f"video {path} contains no frames")


def read_frames(path: str | Path, max_frames: int | None = None) -> np.ndarray:
    """The whole clip as one [T,H,W,3] uint8 array (for short clips and datasets)."""
    return np.stack(list(iter_frames(path, max_frames)))


class FrameWriter:
    """Write frames to an mp4 (H.264, the input's fps) or, for a path without a video
    extension, to a folder of numbered PNGs. Use as a context manager."""

    def __init__(self, path: str | Path, fps: float):
        self.path = Path(path)
        self.fps = fps
        self.count = 0
        self.is_video = self.path.suffix.lower() in VIDEO_EXTENSIONS
        self._file = None
        if self.is_video:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        else:
            self.path.mkdir(parents=True, exist_ok=True)

    def write(self, frame: np.ndarray) -> None:
        if self.is_video:
            if self._file is None:
                self._file = iio.imopen(self.path, "w", plugin="pyav")
                # H.264 4:2:0 needs even sizes; 3x an odd LR size is odd, so fall back to 4:4:4.
                even = frame.shape[0] % 2 == 0 and frame.shape[1] % 2 == 0
                self._file.init_video_stream("libx264", fps=float(self.fps), pixel_format="yuv420p" if even else "yuv444p")
            self._file.write_frame(frame)
        else:
            iio.imwrite(self.path / f"{self.count:06d}.png", frame)
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "FrameWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
