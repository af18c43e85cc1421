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
claims a huge image (a decompression bomb) is rejected without allocating it.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from vsr_core.archs import NUM_FRAMES

ALLOWED_FORMATS = ("PNG", "JPEG")
_MAX_NPY_HEADER = 10_000


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
    """A frame has more pixels than the configured limit."""

    code = "frame_too_large"


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


def _not_png_or_jpeg(data: bytes, source: str) -> InvalidImageError:
    """A precise error for data Pillow will not open as PNG/JPEG: another image format, or no image."""
    try:
        with Image.open(io.BytesIO(data)) as other:
            fmt = other.format
    except Exception:
        fmt = None
    if fmt:
        return UnsupportedImageError(f"{source}: {fmt} images are not accepted; send PNG or JPEG")
    return InvalidImageError(f"{source}: not a PNG or JPEG image")


def stack_window(frames: list[np.ndarray]) -> np.ndarray:
    """Five HxWx3 uint8 frames in temporal order -> one [5,H,W,3] window."""
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
