"""How the 3x video is encoded: codec, CRF, preset and pixel format, checked before any work.

The defaults are chosen for quality: the point of the output is detail. CRF 18 (H.264) is
close to visually lossless, where x264's default of 23 visibly loses some of it; H.265 and
AV1 get CRFs of about the same quality on their own scales. The presets were measured at the
same CRF on 3x frames (benchmarks/README.md, "Encoder defaults"): x264 ``medium`` gives
``slow``'s file size (1.02-1.05x) and PSNR (-0.03 to -0.07 dB) for 0.65-0.75x its CPU time; the
faster presets save more time but lose 0.3-1 dB or grow the file at the same CRF (``veryfast``
is the choice for real time). x265 stays ``slow`` (``medium`` lost 0.3 dB) and SVT-AV1 at 6.
The pixel format follows the input (its chroma subsampling and bit depth: 10-bit in, 10-bit
out), so nothing the input had is lost.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass

import av

from vsr_core.cpu import has_avx512
from vsr_core.data.video_color import ColorTags, bit_depth_of

CODECS = {"h264": "libx264", "h265": "libx265", "av1": "libsvtav1"}  # our names -> the FFmpeg encoders
DEFAULT_CODEC = "h264"
DEFAULT_CRF = {"h264": 18, "h265": 20, "av1": 24}
DEFAULT_PRESET = {"h264": "medium", "h265": "slow", "av1": "6"}
CRF_RANGE = {"h264": (0, 51), "h265": (0, 51), "av1": (1, 63)}
X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
PRESETS = {"h264": X26X_PRESETS, "h265": X26X_PRESETS, "av1": tuple(str(p) for p in range(14))}
# x264's AVX-512 kernels make its output vary from run to run on some frames (96x72 noise: 2-3
# different streams in 10 encodes of the same 4 frames; with these flags, one), and a resumed
# video must equal an uninterrupted one. They were no faster: 16 frames of 1280x720 at preset
# slow took 0.36 s either way on an AMD EPYC with AVX-512. Every AVX-512 CPU has all of these.
X264_FLAGS_WITHOUT_AVX512 = "MMX2,SSE,SSE2,SSE3,SSSE3,SSE4.1,SSE4.2,AVX,FMA3,AVX2,LZCNT,BMI1,BMI2"


# PNG frames (a frame-folder output): zlib level 1 by default, 8x faster than Pillow's default (6)
# for ~1.4x the bytes; each row predicted from its left neighbour ("sub"), which measured the
# fastest and, from level 3 on, the smallest of FFmpeg's predictions on 3x video frames
# (benchmarks/README.md, "PNG frames").
PNG_LEVELS = range(0, 10)
DEFAULT_PNG_LEVEL = 1
PNG_PREDICTION = "sub"


class EncoderError(ValueError):
    pass


@dataclass(frozen=True)
class PngSettings:
    """How the frames of a frame-folder output are compressed: ``level`` is zlib's (0: stored,
    1: fastest, 9: smallest). The pixels are the same at every level."""

    level: int = DEFAULT_PNG_LEVEL

    def __post_init__(self):
        if isinstance(self.level, bool) or not isinstance(self.level, int) or self.level not in PNG_LEVELS:
            raise EncoderError(f"png_level: {self.level!r} is not an integer from {PNG_LEVELS.start} to "
                               f"{PNG_LEVELS.stop - 1}")

    def options(self) -> dict[str, str]:
        """The AVOptions of FFmpeg's png encoder."""
        return {"compression_level": str(self.level), "pred": PNG_PREDICTION}

    def describe(self) -> str:
        return f"png (level {self.level})"


def available_codecs() -> list[str]:
    """The codecs this PyAV build can encode."""
    found = []
    for name, encoder in CODECS.items():
        try:
            av.codec.Codec(encoder, "w")
            found.append(name)
        except (av.FFmpegError, ValueError):
            pass
    return found


@dataclass(frozen=True)
class EncoderSettings:
    """What the user asked for; None means the default (which may depend on the input)."""

    codec: str = DEFAULT_CODEC
    crf: int | None = None
    preset: str | None = None
    pix_fmt: str | None = None

    def __post_init__(self):
        if self.codec not in CODECS:
            raise EncoderError(f"codec: {self.codec!r} is not one of {', '.join(CODECS)}")
        if self.codec not in available_codecs():
            raise EncoderError(f"codec: this PyAV build has no {self.codec} encoder ({CODECS[self.codec]}); "
                               f"available: {', '.join(available_codecs()) or 'none'}")
        low, high = CRF_RANGE[self.codec]
        if self.crf is not None and (isinstance(self.crf, bool) or not isinstance(self.crf, int)
                                     or not low <= self.crf <= high):
            raise EncoderError(f"crf: {self.crf!r} is not an integer from {low} to {high} (for {self.codec})")
        if self.preset is not None and str(self.preset) not in PRESETS[self.codec]:
            raise EncoderError(f"preset: {self.preset!r} is not a {self.codec} preset; use one of "
                               f"{', '.join(PRESETS[self.codec])}")
        supported = self.supported_formats()
        if self.pix_fmt is not None and self.pix_fmt not in supported:
            raise EncoderError(f"pix_fmt: {self.pix_fmt!r} cannot be encoded with {self.codec}; use one of "
                               f"{', '.join(supported)}")

    @property
    def encoder(self) -> str:
        return CODECS[self.codec]

    def supported_formats(self) -> list[str]:
        formats = av.codec.Codec(self.encoder, "w").video_formats or []
        return [f.name for f in formats if f.name.startswith("yuv") and not f.name.startswith(("yuvj", "yuva"))]

    def resolve(self, tags: ColorTags, width: int, height: int) -> "EncoderSettings":
        """The concrete settings for an output of ``width`` x ``height`` from an input of this
        colour: defaults filled in, the pixel format checked against the size and the transfer."""
        crf = DEFAULT_CRF[self.codec] if self.crf is None else self.crf
        preset = DEFAULT_PRESET[self.codec] if self.preset is None else str(self.preset)
        even = width % 2 == 0 and height % 2 == 0
        pix_fmt = self.pix_fmt or self._default_format(tags, even)
        if not even and not pix_fmt.startswith("yuv444"):
            raise EncoderError(f"pix_fmt: {pix_fmt} needs even frame sizes and the output is {width}x{height}; "
                               f"use a yuv444p format{' or h264/h265' if self.codec == 'av1' else ''}")
        if (tags.mastering_display or tags.content_light) and self.codec == "h264":
            raise EncoderError("codec: the input has HDR10 mastering-display / content-light metadata, which "
                               "x264 cannot write; use h265 or av1 to keep it")
        if tags.hdr and bit_depth_of(pix_fmt) < 10:
            raise EncoderError(f"pix_fmt: the input is HDR ({tags.hdr}); {pix_fmt} has 8 bits, which would band "
                               "and is not HDR; use a 10-bit format such as yuv420p10le (the default)")
        return EncoderSettings(self.codec, crf, preset, pix_fmt)

    def _default_format(self, tags: ColorTags, even: bool) -> str:
        """The input's chroma subsampling and bit depth, where the encoder has them; 4:4:4 for odd sizes."""
        supported = self.supported_formats()
        depth = "10le" if tags.wide else ""
        chroma = tags.chroma if even else "444"
        for candidate in (f"yuv{chroma}p{depth}", f"yuv444p{depth}", f"yuv420p{depth}", "yuv420p10le"):
            if candidate in supported and (even or candidate.startswith("yuv444")):
                return candidate
        raise EncoderError(f"pix_fmt: {self.codec} cannot encode a {tags.bit_depth}-bit {tags.chroma} output of odd "
                           f"size; use h264 or h265")

    def options(self, tags: ColorTags | None = None) -> dict[str, str]:
        """The encoder's AVOptions (after ``resolve``), with the HDR10 metadata of ``tags``. x265
        and SVT-AV1 print a report per segment on stderr unless told otherwise: errors only.
        The same settings give the same stream in every run (a resumed video is built from two)."""
        options = {"crf": str(self.crf), "preset": str(self.preset)}
        if self.codec == "h264" and has_avx512():
            options["x264-params"] = f"asm={X264_FLAGS_WITHOUT_AVX512}"
        mastering, light = (tags.mastering_display, tags.content_light) if tags else (None, None)
        if self.codec == "h265":
            # (x265 signals HDR10 by itself when given these; its hdr10=1 made the mp4 muxer fail
            # now and then on "not yet implemented")
            params = ["log-level=error"]
            params += ([f"master-display={mastering}"] if mastering else []) + ([f"max-cll={light}"] if light else [])
            options["x265-params"] = ":".join(params)
        if self.codec == "av1":
            os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 reads its log level from the environment only
            params = ([f"mastering-display={_svt_mastering(mastering)}"] if mastering else []) + \
                ([f"content-light={light}"] if light else [])
            if params:
                options["svtav1-params"] = ":".join(params)
        return options

    def describe(self) -> str:
        """One line for the output's metadata: what made these pixels."""
        return f"{self.codec} ({self.encoder}) crf={self.crf} preset={self.preset} pix_fmt={self.pix_fmt}"

    def as_dict(self) -> dict:
        return asdict(self)


def _svt_mastering(x265_syntax: str) -> str:
    """x265's integer mastering-display syntax -> SVT-AV1's, the same values as decimals."""
    numbers = [int(n) for n in re.findall(r"\d+", x265_syntax)]
    xy = [f"{n / 50000:.5f}" for n in numbers[:8]]
    return (f"G({xy[0]},{xy[1]})B({xy[2]},{xy[3]})R({xy[4]},{xy[5]})WP({xy[6]},{xy[7]})"
            f"L({numbers[8] / 10000:.4f},{numbers[9] / 10000:.4f})")
