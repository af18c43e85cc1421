"""The formats a 3x frame is sent back in, and which one a client gets (``Accept``).

``/v1/upscale`` negotiates with the ``Accept`` header; ``WS /v1/stream`` names the format in
its header message (``"output": "png" | "jpeg" | "webp" | "raw"``)::

    image/png           lossless; zlib level 1 with the run-length strategy: on a 1920x1080 frame
                        4-5x faster than Pillow's default (level 6) for ~3% more bytes
    image/webp          lossless, libwebp's fastest method: about as fast as that PNG, ~20% smaller
    image/jpeg          lossy, quality 95: the smallest, and >10x faster than PNG
    application/x-npy   the uint8 [3H,3W,3] array in NumPy's .npy format: no encoding at all
    raw (stream only)   the same bytes without the .npy header (the size is in the header)

The encoding times are measured by benchmarks/bench_serve.py (see benchmarks/README.md).
Without ``Accept`` (or with ``*/*``) the answer is PNG, as before negotiation existed.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

PNG, JPEG, WEBP, NPY = "image/png", "image/jpeg", "image/webp", "application/x-npy"
RAW = "raw"
DEFAULT = PNG
#: media type -> Pillow save options (NPY and RAW are written without Pillow)
Z_RLE = 3  # zlib's run-length strategy (Pillow passes it as compress_type)
_PILLOW = {
    PNG: {"format": "PNG", "compress_level": 1, "compress_type": Z_RLE},
    JPEG: {"format": "JPEG", "quality": 95},
    WEBP: {"format": "WEBP", "lossless": True, "method": 0, "quality": 0},  # quality: effort when lossless
}
HTTP_TYPES = (PNG, JPEG, WEBP, NPY)  # in the order of preference when the client has none
#: the stream's names for its output formats
STREAM_OUTPUTS = {"png": PNG, "jpeg": JPEG, "webp": WEBP, "raw": RAW}


class NotAcceptable(ValueError):
    """No format the client accepts is one we can send."""


def _accepted(header: str) -> list[tuple[float, int, str]]:
    """(q, position, media range) of every entry of an Accept header."""
    entries = []
    for position, part in enumerate(header.split(",")):
        kind, *params = (p.strip() for p in part.split(";"))
        if not kind:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        entries.append((q, position, kind.lower()))
    return entries


def negotiate(accept: str | None) -> str:
    """The media type to answer an ``Accept`` header with: the highest q, then the client's
    order; ``image/*`` and ``*/*`` mean our preference (PNG first). Raises NotAcceptable."""
    if not accept or not accept.strip():
        return DEFAULT
    best: tuple[float, int, int] | None = None
    choice = None
    for q, position, kind in _accepted(accept):
        if q <= 0:
            continue
        if kind in HTTP_TYPES:
            candidates = [kind]
        elif kind in ("*/*", "image/*"):
            candidates = [t for t in HTTP_TYPES if kind == "*/*" or t.startswith("image/")]
        else:
            continue
        for rank, candidate in enumerate(candidates):
            key = (-q, position, rank)
            if best is None or key < best:
                best, choice = key, candidate
    if choice is None:
        raise NotAcceptable(f"cannot answer with any of {accept!r}; available: {', '.join(HTTP_TYPES)}")
    return choice


def npy_header(shape: tuple[int, ...]) -> bytes:
    """The .npy header of a C-ordered uint8 array of ``shape``: with the array's bytes it is a .npy file."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
    return buffer.getvalue()


def encode_frame(frame: np.ndarray, media_type: str) -> bytes:
    """A uint8 HxWx3 frame in ``media_type`` (one of HTTP_TYPES or RAW). Blocking: call it
    off the event loop. NPY and RAW copy the pixels once (into the bytes object sent)."""
    frame = np.ascontiguousarray(frame)
    if media_type == RAW:
        return frame.tobytes()
    if media_type == NPY:
        return b"".join((npy_header(frame.shape), memoryview(frame).cast("B")))
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, **_PILLOW[media_type])
    return buffer.getvalue()
