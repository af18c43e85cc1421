"""Encoder defaults: what each codec/CRF/preset costs next to the model, and what it gives.

3x frames of a real clip (bicubic 3x of ``bikes.mp4``, 1920x816) are encoded with each
setting, measured round-robin. For each: encoding time per frame as a share of the model's
time per frame (the ``small`` preset on the same LR frames, measured in the same run: the
share of a job the encoder costs), the file size relative to the old default (H.264 CRF 18
``medium``) and the PSNR of the decoded frames against the frames that were encoded (what
the encoder loses; left out for a codec this FFmpeg build cannot decode). Also what the exact
colour conversions (the input's matrix and range, accurate rounding: ``video_color``) cost
against FFmpeg's default conversion, per LR frame decoded and per 3x frame encoded.

    python benchmarks/bench_encoders.py [--full]      (quick: 12 frames; full: 36 frames, 3 repeats)
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import common
import numpy as np
import torch

from common import Report, header, measure
from vsr_core.archs import VSRPPPv2
from vsr_core.data.samples import DEFAULT_VAL_CLIP, sample_clip
from vsr_core.data.video_color import ColorTags, from_rgb
from vsr_core.data.video_encoder import EncoderSettings, available_codecs
from vsr_core.data.video_io import FrameWriter, read_frames
from vsr_core.inference import Upscaler
from vsr_core.metrics import psnr

REFERENCE = "h264 crf=18 medium"
SETTINGS = {
    REFERENCE: EncoderSettings("h264", 18, "medium"),  # the default before the encoder became a choice
    "h264 crf=23 medium": EncoderSettings("h264", 23, "medium"),  # x264's own default
    "h264 crf=18 slow (default)": EncoderSettings("h264"),
    "h265 crf=20 slow": EncoderSettings("h265"),
    "av1 crf=24 preset 6": EncoderSettings("av1"),
}


def encode(frames: np.ndarray, path: Path, settings: EncoderSettings) -> None:
    with FrameWriter(path, 25, encoder=settings) as writer:
        for frame in frames:
            writer.write(frame)


def conversions(report: Report, lr: np.ndarray, frames: np.ndarray, model_per_frame: float, repeats: int) -> None:
    """Exact colour conversion (video_color) against FFmpeg's default, both directions."""
    import av

    tags = ColorTags()  # BT.709 limited
    yuv = [av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p") for f in lr]
    for frame in yuv:
        frame.colorspace, frame.color_range = tags.matrix, tags.range
    from vsr_core.data.video_color import to_rgb

    timings = measure({
        "decode default": lambda: [f.to_ndarray(format="rgb24") for f in yuv],
        "decode exact": lambda: [to_rgb(f, tags) for f in yuv],
        "encode default": lambda: [av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p")
                                   for f in frames],
        "encode exact": lambda: [from_rgb(f, tags, "yuv420p") for f in frames],
    }, repeats=max(3, repeats), warmup=1)
    for direction, size in (("decode", "LR"), ("encode", "3x")):
        exact, default = timings[f"{direction} exact"].median, timings[f"{direction} default"].median
        report.add(f"exact colour conversion per {size} frame ({direction})", exact / len(frames) * 1000, "ms",
                   "model per frame", exact / len(frames) / model_per_frame,
                   note=f"FFmpeg's default: {default / len(frames) * 1000:.1f} ms")


def main(argv: list[str] | None = None) -> Report:
    args = common.parse_args(__doc__.splitlines()[0], argv)
    mode = "full" if args.full else "quick"
    header("encoders", args.full)
    report = Report("encoders", mode)
    count, repeats = (36, 3) if args.full else (12, 1)
    lr = read_frames(sample_clip(DEFAULT_VAL_CLIP), max_frames=count)
    bicubic = Upscaler.bicubic(device="cpu", batch_size=4)
    frames = np.stack(list(bicubic.stream(iter(lr))))
    model = Upscaler(VSRPPPv2.from_preset("small"), device="cpu", batch_size=4)
    settings = {name: s for name, s in SETTINGS.items() if s.codec in available_codecs()}
    with tempfile.TemporaryDirectory() as tmp:
        files = {name: Path(tmp) / f"{i}.mp4" for i, name in enumerate(settings)}
        candidates = {"model": lambda: list(model.stream(iter(lr[:8])))}
        candidates.update({name: (lambda n=name: encode(frames, files[n], settings[n])) for name in settings})
        with torch.inference_mode():
            timings = measure(candidates, repeats=repeats, warmup=0)
        model_per_frame = timings["model"].median / 8
        report.add("model (small preset) per LR frame", model_per_frame * 1000, "ms", note=f"{lr.shape[2]}x{lr.shape[1]}")
        reference_size = files[REFERENCE].stat().st_size
        for name, s in settings.items():
            per_frame = timings[name].median / count
            size = files[name].stat().st_size
            report.add(f"{name}: encode per 3x frame", per_frame * 1000, "ms", "model per frame",
                       per_frame / model_per_frame)
            report.add(f"{name}: size", size / count / 1024, "KiB/frame", REFERENCE, size / reference_size)
            try:
                decoded = read_frames(files[name])
            except Exception as exc:  # noqa: BLE001 - no decoder for this codec in this build
                report.details[f"{name} psnr"] = f"not measured: {exc}"
                continue
            quality = float(np.mean([psnr(a, b) for a, b in zip(decoded, frames)]))
            report.add(f"{name}: PSNR vs the frames encoded", quality, "dB")
        conversions(report, lr, frames, model_per_frame, repeats)
        report.details.update({"frames": count, "size": f"{frames.shape[2]}x{frames.shape[1]}", "repeats": repeats,
                               "timings": timings})
    print(f"wrote {report.write()}")
    return report


if __name__ == "__main__":
    main()
