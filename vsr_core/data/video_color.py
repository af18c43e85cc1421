"""The colour of a video: its matrix, range, primaries, transfer and bit depth, read from the
input, used for the YUV <-> RGB conversions, and written on the output.

A model sees RGB; a video stores YUV. Converting with the wrong matrix or range (FFmpeg's
default for untagged frames is BT.601 limited range) shifts every colour, so decoding uses
the input's own tags and encoding converts back with the same ones and writes them into the
output. Untagged inputs get the matrix players assume for their size (BT.709 from 1280x720 up,
BT.601 below) and limited range, and the output says so explicitly, so that a player shows the
3x output the way it showed the input.

Primaries and transfer are never converted: the model works on the coded (non-linear) signal,
so they pass through as tags. That includes PQ and HLG (HDR): the output keeps them, in 10 bits,
and HDR10's static metadata (mastering display, content light level) goes to the encoder.
Frames deeper than 8 bits decode to uint16 RGB (full 16-bit scale), so 10-bit input is never
truncated to 8 bits.
"""
from __future__ import annotations

import struct
from dataclasses import asdict, dataclass, replace

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace, Interpolation, VideoReformatter

# Exact conversions: accurate rounding and full chroma interpolation (a flat colour survives
# YUV -> RGB -> YUV within rounding; the default bilinear path is off by up to 2 LSB).
ACCURATE = Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT

# AVColorSpace values (libavutil/pixfmt.h) -> the matrix swscale converts with, by name.
MATRICES = {1: ("bt709", Colorspace.ITU709), 4: ("fcc", Colorspace.FCC), 5: ("bt470bg", Colorspace.ITU601),
            6: ("smpte170m", Colorspace.ITU601), 7: ("smpte240m", Colorspace.SMPTE240M),
            9: ("bt2020nc", Colorspace.BT2020)}
MATRIX_BY_NAME = {name: code for code, (name, _) in MATRICES.items()}
UNSPECIFIED_MATRIX, RGB_MATRIX = 2, 0
LIMITED, FULL = int(ColorRange.MPEG), int(ColorRange.JPEG)
RANGE_NAMES = {LIMITED: "limited", FULL: "full"}
PQ, HLG = 16, 18  # AVColorTransferCharacteristic: SMPTE ST 2084, ARIB STD-B67
HDR_TRANSFERS = {PQ: "PQ (SMPTE ST 2084)", HLG: "HLG (ARIB STD-B67)"}
TRANSFER_NAMES = {1: "bt709", 2: "unspecified", 4: "gamma22", 5: "gamma28", 6: "smpte170m", 7: "smpte240m",
                  8: "linear", 13: "iec61966-2-1", 14: "bt2020-10", 15: "bt2020-12", **{PQ: "smpte2084", HLG: "arib-std-b67"}}
PRIMARY_NAMES = {1: "bt709", 2: "unspecified", 4: "bt470m", 5: "bt470bg", 6: "smpte170m", 7: "smpte240m",
                 8: "film", 9: "bt2020", 11: "smpte431", 12: "smpte432"}
HD_WIDTH, SD_MAX_HEIGHT = 1280, 576  # how players guess the matrix of an untagged video


class UnsupportedColorError(ValueError):
    pass


def guess_matrix(width: int, height: int) -> int:
    """The matrix players assume for an untagged video of this size: BT.709 for HD, else BT.601."""
    return 1 if width >= HD_WIDTH or height > SD_MAX_HEIGHT else 6


@dataclass(frozen=True)
class ColorTags:
    """What the conversions use and the output is tagged with (AVCOL_* codes)."""

    matrix: int = 1  # AVColorSpace
    range: int = LIMITED  # AVColorRange
    primaries: int = 2  # AVColorPrimaries, passed through (2: unspecified)
    transfer: int = 2  # AVColorTransferCharacteristic, passed through
    bit_depth: int = 8
    chroma: str = "420"  # the input's chroma subsampling: 420, 422 or 444
    guessed: bool = False  # the input had no matrix/range tags; these are the players' guess
    # HDR10 static metadata, in x265's syntax: "G(x,y)B(x,y)R(x,y)WP(x,y)L(max,min)" (chromaticity
    # in 0.00002, luminance in 0.0001 cd/m2) and "MaxCLL,MaxFALL" (cd/m2)
    mastering_display: str | None = None
    content_light: str | None = None

    @property
    def wide(self) -> bool:
        """Frames are uint16 RGB (input deeper than 8 bits)."""
        return self.bit_depth > 8

    @property
    def rgb_format(self) -> str:
        return "rgb48le" if self.wide else "rgb24"

    @property
    def hdr(self) -> str | None:
        return HDR_TRANSFERS.get(self.transfer)

    def describe(self) -> dict:
        """Names, for plan.json, metadata and messages."""
        return {"matrix": MATRICES[self.matrix][0] if self.matrix in MATRICES else "rgb",
                "range": RANGE_NAMES[self.range], "primaries": PRIMARY_NAMES.get(self.primaries, str(self.primaries)),
                "transfer": TRANSFER_NAMES.get(self.transfer, str(self.transfer)), "bit_depth": self.bit_depth,
                "guessed": self.guessed}

    def as_dict(self) -> dict:
        return asdict(self)


def _depth_and_chroma(pix_fmt: av.VideoFormat | None) -> tuple[int, str]:
    if pix_fmt is None:  # a stream whose header names no pixel format: a damaged file
        raise UnsupportedColorError("the video stream has no pixel format (the file is damaged)")
    depth = max(component.bits for component in pix_fmt.components)
    name = pix_fmt.name
    chroma = "444" if "444" in name or name.startswith("gbr") or name.startswith("rgb") else \
        "422" if "422" in name else "420"
    return depth, chroma


def tags_of(codec_context, width: int, height: int) -> ColorTags:
    """The colour of a decoded stream (``codec_context`` of its video stream); raises
    UnsupportedColorError for a matrix we cannot convert with."""
    depth, chroma = _depth_and_chroma(codec_context.format)
    matrix, color_range = int(codec_context.colorspace), int(codec_context.color_range)
    guessed = matrix == UNSPECIFIED_MATRIX or color_range not in RANGE_NAMES
    if codec_context.format.name.startswith("yuvj"):  # the old full-range pixel formats (JPEG, phones)
        color_range = FULL
    if matrix == UNSPECIFIED_MATRIX:
        matrix = guess_matrix(width, height)
    if matrix == RGB_MATRIX or codec_context.format.name.startswith("gbr"):
        matrix, color_range, chroma = 1, FULL, "444"  # RGB-coded input: the output is BT.709 full 4:4:4
    if matrix not in MATRICES:
        raise UnsupportedColorError(f"the video's colour matrix (AVColorSpace {matrix}) is not supported; "
                                    f"supported: {', '.join(MATRIX_BY_NAME)}")
    if color_range not in RANGE_NAMES:
        color_range = LIMITED
    return ColorTags(matrix, color_range, int(codec_context.color_primaries), int(codec_context.color_trc),
                     depth, chroma, guessed)


def to_rgb(frame: av.VideoFrame, tags: ColorTags, deep: bool = True,
           reformatter: VideoReformatter | None = None, orientation: "Orientation | None" = None) -> np.ndarray:
    """A decoded frame -> HxWx3 RGB (uint8, or uint16 for deep input when ``deep``), with the
    input's matrix and range (not swscale's BT.601 default), upright (display rotation applied).
    For a whole video pass one ``reformatter`` and the first frame's ``orientation``: a
    conversion context per frame (``frame.to_ndarray``'s) holds ~20 MB per HD frame until garbage
    collection, and reading a frame's side data keeps the frame alive until then too."""
    rgb_format = tags.rgb_format if deep else "rgb24"
    reformatter = reformatter or VideoReformatter()
    if frame.format.name.startswith(("gbr", "rgb")):
        rgb = reformatter.reformat(frame, format=rgb_format, interpolation=ACCURATE)
    else:
        rgb = reformatter.reformat(frame, format=rgb_format, src_colorspace=MATRICES[tags.matrix][1],
                                   src_color_range=ColorRange(tags.range), interpolation=ACCURATE)
    return (orientation or Orientation.of(frame)).apply(rgb.to_ndarray())


@dataclass(frozen=True)
class Orientation:
    """A frame's display matrix as signs: it maps stored (x, y) to shown (a*x + c*y, b*x + d*y)
    plus a shift; quarter turns and mirroring (phones; front cameras). Constant for a video."""

    a: int = 1
    b: int = 0
    c: int = 0
    d: int = 1
    rotation: float = 0.0

    @classmethod
    def of(cls, frame: av.VideoFrame) -> "Orientation":
        matrix = next((bytes(sd) for sd in frame.side_data if str(sd.type).endswith("DISPLAYMATRIX")), None)
        if matrix is None or len(matrix) < 36:
            return cls()
        a, b, _, c, d = (int(np.sign(v)) for v in struct.unpack("<5i", matrix[:20]))
        return cls(a, b, c, d, float(frame.rotation))

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """``rgb`` as the display matrix shows it."""
        a, b, c, d = self.a, self.b, self.c, self.d
        if (a, b, c, d) == (1, 0, 0, 1):
            return rgb
        if a == d == 0 and b and c:  # a quarter turn: x and y swap
            out = np.swapaxes(rgb, 0, 1)
            out = out[:, ::-1] if c < 0 else out
            out = out[::-1] if b < 0 else out
        elif b == c == 0 and a and d:
            out = rgb[:, ::-1] if a < 0 else rgb
            out = out[::-1] if d < 0 else out
        else:  # not a multiple of 90 degrees: the nearest quarter turn
            out = np.rot90(rgb, round(self.rotation / 90) % 4)
        return out if out is rgb else np.ascontiguousarray(out)


def from_rgb(rgb: np.ndarray, tags: ColorTags, pix_fmt: str, reformatter: VideoReformatter | None = None) -> av.VideoFrame:
    """HxWx3 RGB (uint8 or uint16) -> a ``pix_fmt`` frame converted and tagged with ``tags``
    (one ``reformatter`` per video, as in ``to_rgb``)."""
    source = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb48le" if rgb.dtype == np.uint16 else "rgb24")
    frame = (reformatter or VideoReformatter()).reformat(source, format=pix_fmt, dst_colorspace=MATRICES[tags.matrix][1],
                            dst_color_range=ColorRange(tags.range), interpolation=ACCURATE)
    frame.color_primaries, frame.color_trc = tags.primaries, tags.transfer
    return frame


def tag_stream(codec_context, tags: ColorTags) -> None:
    """Write ``tags`` into an encoder's context: they end up in the bitstream and the container."""
    codec_context.colorspace = tags.matrix
    codec_context.color_range = tags.range
    codec_context.color_primaries = tags.primaries
    codec_context.color_trc = tags.transfer


def with_hdr10_metadata(tags: ColorTags, frame: av.VideoFrame) -> ColorTags:
    """``tags`` plus the HDR10 static metadata a decoded frame carries (FFmpeg's
    AVMasteringDisplayMetadata: 10 rationals + 2 flags; AVContentLightMetadata: 2 unsigned)."""
    mastering = light = None
    for side_data in frame.side_data:
        name, data = str(side_data.type).rsplit(".", 1)[-1], bytes(side_data)
        if name == "MASTERING_DISPLAY_METADATA" and len(data) >= 88:
            values = struct.unpack("<20i2i", data[:88])
            ratio = [values[i] / values[i + 1] if values[i + 1] else 0.0 for i in range(0, 20, 2)]
            (rx, ry, gx, gy, bx, by, wx, wy), (low, high) = ratio[:8], ratio[8:]
            if values[20] and values[21]:  # has primaries and luminance
                xy = lambda x, y: f"({round(x * 50000)},{round(y * 50000)})"  # noqa: E731
                mastering = (f"G{xy(gx, gy)}B{xy(bx, by)}R{xy(rx, ry)}WP{xy(wx, wy)}"
                             f"L({round(high * 10000)},{round(low * 10000)})")
        elif name == "CONTENT_LIGHT_LEVEL" and len(data) >= 8:
            light = "{},{}".format(*struct.unpack("<2I", data[:8]))
    return replace(tags, mastering_display=mastering, content_light=light)


def bit_depth_of(pix_fmt: str) -> int:
    return _depth_and_chroma(av.VideoFormat(pix_fmt))[0]
