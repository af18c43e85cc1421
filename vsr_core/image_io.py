"""Decoding and validating untrusted uploaded frames (PNG/JPEG files, ``.npy`` windows).

Pure helpers with no HTTP in them; the Serve app maps the exceptions to status codes
(``InvalidImageError`` -> 400, ``UnsupportedImageError`` -> 415, ``ImageTooLargeError`` -> 413).

Conversions (every frame ends up HxWx3 uint8 RGB):

- grayscale (L, 1-bit, I;16) -> the gray value copied to R, G and B;
- palette -> RGB via the palette;
- an alpha channel (RGBA, LA, PA) is dropped, not composited;
- 16-bit -> 8-bit keeps the high byte (``v >> 8``), which is what Pillow itself does
  when it opens a 16-bit RGB(A) PNG, so every 16-bit input is reduced the same way;
- CMYK / YCbCr JPEGs -> RGB with Pillow's conversion.

Sizes are checked from the header, before any pixel is decoded, so a small file that
claims a huge image (a decompression bomb) is rejected without allocating it. The file's
structure is checked before Pillow parses it, so that a small file cannot cost much CPU
either (``check_structure``): a JPEG may have at most ``MAX_JPEG_SCANS`` scans (each one is a
pass over every pixel: 2,000 scans of a 960x960 frame fit in 74 KB and took 3 s to decode;
libjpeg's progressive files have 10) and ``MAX_JPEG_SEGMENTS`` segments (Pillow reads the
segments before the first scan one by one in Python), a PNG at most ``MAX_PNG_CHUNKS`` chunks
(likewise). This module imports neither torch nor the model, so a sandboxed child process
(``vsr_core.data.video_probe``) can use it cheaply.
"""
from __future__ import annotations

import io
import re
import struct

import numpy as np
from PIL import Image, UnidentifiedImageError

ALLOWED_FORMATS = ("PNG", "JPEG")
_MAX_NPY_HEADER = 10_000
MAX_JPEG_SCANS = 64  # a scan of a 1280x720 frame costs ~1.5 ms: 64 of them ~0.1 s
MAX_JPEG_SEGMENTS = 1024  # markers in all (a camera JPEG has ~20)
MAX_PNG_CHUNKS = 16_384  # a 1280x720 16-bit RGBA PNG in libpng's 8 KiB IDAT chunks has ~900
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The next marker after a scan's entropy-coded data: 0xFF (after any fill bytes) followed by
# anything but a stuffed zero or a restart marker (which stay inside the scan).
_JPEG_MARKER_AFTER_SCAN = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")
_JPEG_FILL = re.compile(rb"\xff+")
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RST0-7: no length field


class InvalidImageError(ValueError):
    """The input is not a valid frame / window (not an image, truncated, wrong shape ...).

    ``code`` names the problem in a machine-readable way (the Serve app returns it as ``error``).
    """

    code = "invalid_image"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class UnsupportedImageError(InvalidImageError):
    """A valid image, but in a format or pixel type that is not accepted."""

    code = "unsupported_image"


class ImageTooLargeError(InvalidImageError):
    """A frame has more pixels than the configured limit (or, code ``image_too_complex``, more
    scans, segments or chunks than ``check_structure`` allows)."""

    code = "frame_too_large"


def check_structure(data: bytes, source: str = "image") -> None:
    """Refuse a PNG or JPEG whose structure would make decoding it cost more than its pixels
    justify (see the module docstring); anything else is left to Pillow. Linear in the file's
    size, in C for the bulk of the bytes (a scan's data is skipped with one regex search)."""
    if data.startswith(PNG_SIGNATURE):
        _check_png_chunks(data, source)
    elif data.startswith(b"\xff\xd8"):
        _check_jpeg_scans(data, source)


def _too_complex(source: str, what: str) -> ImageTooLargeError:
    return ImageTooLargeError(f"{source}: {what}; such a file costs more to decode than its pixels justify",
                              code="image_too_complex")


def _check_png_chunks(data: bytes, source: str) -> None:
    position, chunks = len(PNG_SIGNATURE), 0
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise _too_complex(source, f"the PNG has more than {MAX_PNG_CHUNKS} chunks")
        if kind == b"IEND":
            return
        position += 12 + length  # length, type, data, CRC
    # truncated: Pillow says so


def _check_jpeg_scans(data: bytes, source: str) -> None:
    position, scans, segments, fill = 2, 0, 0, 0
    while position + 4 <= len(data):
        if data[position] != 0xFF:  # Pillow would skip such junk byte by byte, in Python
            raise InvalidImageError(f"{source}: corrupt JPEG (no marker at byte {position})")
        marker = data[position + 1]
        if marker == 0xFF:  # fill bytes before a marker (Pillow reads them one by one too)
            end = _JPEG_FILL.match(data, position).end() - 1
            fill += end - position
            if fill > MAX_JPEG_SEGMENTS:
                raise _too_complex(source, f"the JPEG has more than {MAX_JPEG_SEGMENTS} fill bytes")
            position = end
            continue
        if marker == 0xD9:  # EOI
            return
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise _too_complex(source, f"the JPEG has more than {MAX_JPEG_SEGMENTS} segments")
        if marker in _JPEG_STANDALONE:
            position += 2
            continue
        position += 2 + struct.unpack_from(">H", data, position + 2)[0]
        if marker == 0xDA:  # SOS: its entropy-coded data runs to the next marker
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise _too_complex(source, f"the JPEG has more than {MAX_JPEG_SCANS} scans")
            following = _JPEG_MARKER_AFTER_SCAN.search(data, position)
            if following is None:
                return  # the last scan without an EOI after it: libjpeg copes, in C
            position = following.end() - 2
    # a truncated file: Pillow says so


def _check_pixels(height: int, width: int, max_pixels: int | None, source: str) -> None:
    if height < 1 or width < 1:
        raise InvalidImageError(f"{source}: empty image ({width}x{height})")
    if max_pixels is not None and height * width > max_pixels:
        raise ImageTooLargeError(
            f"{source}: {width}x{height} = {height * width} pixels exceeds the limit of {max_pixels} pixels per frame"
        )


def to_rgb8(frame: np.ndarray, source: str = "frame") -> np.ndarray:
    """HxW / HxWx1 / HxWx2 (gray+alpha) / HxWx3 / HxWx4 of uint8 or uint16 -> HxWx3 uint8."""
    if frame.dtype == np.uint16 or (frame.dtype.kind == "u" and frame.dtype.itemsize == 2):
        frame = (frame.astype(np.uint16) >> 8).astype(np.uint8)
    elif frame.dtype != np.uint8:
        raise UnsupportedImageError(f"{source}: unsupported pixel type {frame.dtype}; use uint8 (or uint16)")
    if frame.ndim == 2:
        frame = frame[:, :, None]
    if frame.ndim != 3 or frame.shape[2] not in (1, 2, 3, 4):
        raise InvalidImageError(f"{source}: unsupported frame shape {list(frame.shape)}; expected HxWx3")
    channels = frame.shape[2]
    if channels in (1, 2):  # gray (+ alpha)
        frame = np.repeat(frame[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(frame[:, :, :3])


def decode_image(data: bytes, max_pixels: int | None = None, source: str = "image") -> np.ndarray:
    """PNG or JPEG bytes -> HxWx3 uint8 RGB. Raises the errors above, never anything else
    for bad input (``Image.MAX_IMAGE_PIXELS`` may also be set by the caller as a second guard)."""
    if not data:
        raise InvalidImageError(f"{source}: empty file (0 bytes)")
    check_structure(data, source)
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{source}: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise _not_png_or_jpeg(data, source) from exc
    except Exception as exc:  # broken headers raise SyntaxError, ValueError, struct.error ...
        raise InvalidImageError(f"{source}: cannot read the image header ({type(exc).__name__}: {exc})") from exc
    with image:
        _check_pixels(image.height, image.width, max_pixels, source)
        try:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                pixels = np.asarray(image)
                if pixels.dtype != np.uint16:  # mode "I" is int32 holding 16-bit values
                    pixels = np.clip(pixels, 0, 65535).astype(np.uint16)
                return to_rgb8(pixels, source)
            if image.mode == "P" or image.mode == "PA":
                image = image.convert("RGBA")
            if image.mode != "RGB":
                image = image.convert("RGB")  # drops alpha; gray, CMYK, YCbCr -> RGB
            return to_rgb8(np.asarray(image), source)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageTooLargeError(f"{source}: {exc}") from exc
        except InvalidImageError:
            raise
        except Exception as exc:  # truncated or corrupt pixel data: OSError, SyntaxError, zlib.error ...
            raise InvalidImageError(f"{source}: corrupt or truncated {image.format} ({type(exc).__name__}: {exc})") from exc


# Other image formats, known by their first bytes (not by parsing them: some of Pillow's readers
# walk a file's structure in Python, which an upload must not get to make us do).
_OTHER_FORMATS = ((b"GIF8", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"),
                  (b"\x00\x00\x01\x00", "ICO"), (b"8BPS", "PSD"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
                  (b"\xff\x4f\xff\x51", "JPEG 2000"), (b"qoif", "QOI"))


def _not_png_or_jpeg(data: bytes, source: str) -> InvalidImageError:
    """A precise error for data Pillow will not open as PNG/JPEG: another image format, or no image."""
    fmt = next((name for magic, name in _OTHER_FORMATS if data.startswith(magic)), None)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        fmt = "WEBP"
    elif data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"heic", b"heix", b"mif1"):
        fmt = data[8:12].decode().upper()
    if fmt:
        return UnsupportedImageError(f"{source}: {fmt} images are not accepted; send PNG or JPEG")
    return InvalidImageError(f"{source}: not a PNG or JPEG image")


def stack_window(frames: list[np.ndarray]) -> np.ndarray:
    """Five HxWx3 uint8 frames in temporal order -> one [5,H,W,3] window."""
    from vsr_core.archs import NUM_FRAMES  # here: importing the model (torch) costs seconds

    if len(frames) != NUM_FRAMES:
        raise InvalidImageError(f"expected {NUM_FRAMES} frames, got {len(frames)}", code="wrong_frame_count")
    first = frames[0].shape
    for i, frame in enumerate(frames):
        if frame.shape != first:
            sizes = ", ".join(f"{f.shape[1]}x{f.shape[0]}" for f in frames)
            raise InvalidImageError(
                f"all frames must have the same size; frame {i} differs (sizes WxH: {sizes})", code="frame_size_mismatch"
            )
    return np.stack(frames)


def load_npy_window(data: bytes, max_pixels: int | None = None) -> np.ndarray:
    """A ``.npy`` file holding one window [5,H,W,3] (uint8; [5,H,W] gray, 4 channels or
    uint16 are converted as above) -> [5,H,W,3] uint8.

    The header is parsed and validated first (no pickles, a plausible shape, the exact
    byte count), so a header claiming a huge array never allocates it.
    """
    from vsr_core.archs import NUM_FRAMES

    source = "npy"
    if not data:
        raise InvalidImageError("npy: empty body (0 bytes)", code="invalid_npy")
    buffer = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buffer)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(buffer, max_header_size=_MAX_NPY_HEADER)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(buffer, max_header_size=_MAX_NPY_HEADER)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except Exception as exc:
        raise InvalidImageError(f"npy: not a valid .npy file ({exc})", code="invalid_npy") from exc
    if dtype.hasobject:
        raise InvalidImageError("npy: object arrays (pickles) are not accepted; send uint8 pixels", code="invalid_npy")
    if dtype.kind != "u" or dtype.itemsize not in (1, 2):
        raise InvalidImageError(f"npy: unsupported dtype {dtype}; expected uint8", code="invalid_npy")
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3, 4)):
        raise InvalidImageError(f"npy: expected an array of shape [{NUM_FRAMES},H,W,3], got {list(shape)}", code="invalid_npy")
    if shape[0] != NUM_FRAMES:
        raise InvalidImageError(
            f"npy: expected {NUM_FRAMES} frames (shape [{NUM_FRAMES},H,W,3]), got {shape[0]} (shape {list(shape)})",
            code="wrong_frame_count",
        )
    _check_pixels(shape[1], shape[2], max_pixels, source)
    expected = buffer.tell() + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing data"
        raise InvalidImageError(f"npy: file {what}: {len(data)} bytes, the header implies {expected}", code="invalid_npy")
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise InvalidImageError(f"npy: cannot load the array ({exc})", code="invalid_npy") from exc
    return np.stack([to_rgb8(frame, f"npy frame {i}") for i, frame in enumerate(array)])
