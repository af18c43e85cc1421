"""Encoder defaults: what each x264 preset costs at the same CRF and what it gives, next to the model.

Two kinds of 960x540 frames, as `vsr upscale` of 320x180 video gives them: "model" is the
trained ``small`` checkpoint of the tests (``tests/data/small_60steps.pth``) on 320x180 LR frames
of ``bikes.mp4`` (camera footage, a center crop), smooth like a lightly trained model's output;
"detail" is ``bigbuckbunny.mp4`` downscaled to 960x540 (what a perfect model would give: all of
the original's detail). Each setting encodes them round-robin with one encoder thread, as
the overlapped pipeline runs it (``vsr_core.video.chunk.encoder_threads``). For each: the
encoder's CPU time per frame (all threads of this process, so a busy machine changes it less
than the wall time) and that as a share of the forward pass's CPU time per frame of the
``realtime`` and ``small`` presets on the same LR frames (same run), the file size relative to
x264's ``slow`` (the old default) and the PSNR of the decoded frames against the frames encoded.
Also the other codecs at their defaults, and the exact colour conversions (the input's matrix
and range, accurate rounding: ``video_color``) against FFmpeg's default.

    python benchmarks/bench_encoders.py [--full]      (quick: 24 frames, 2 repeats; full: 48, 3)
"""
from __future__ import annotations

import resource
import tempfile
from pathlib import Path

import common
import numpy as np
import torch

from common import ROOT, Report, header, measure
from bench_inference import random_model
from vsr_core.data.samples import DEFAULT_VAL_CLIP, sample_clip
from vsr_core.data.video_color import ColorTags, from_rgb
from vsr_core.data.video_encoder import DEFAULT_PRESET, X26X_PRESETS, EncoderSettings, available_codecs
from vsr_core.data.video_io import FrameWriter, read_frames
from vsr_core.frames import to_tensor, window_indices
from vsr_core.inference import Upscaler
from vsr_core.metrics import psnr

CHECKPOINT = ROOT / "tests" / "data" / "small_60steps.pth"
REFERENCE = "h264 crf=18 slow"  # the default before this was measured
H264_PRESETS = X26X_PRESETS[:X26X_PRESETS.index("slow") + 1]  # ultrafast ... slow
OTHER_CODECS = {"h265 crf=20 slow": EncoderSettings("h265", 20, "slow"),
                "h265 crf=20 medium": EncoderSettings("h265", 20, "medium"), "av1 crf=24 preset 6": EncoderSettings("av1")}
LR_HEIGHT, LR_WIDTH = 180, 320


def lr_frames(count: int) -> np.ndarray:
    """``count`` frames of bikes.mp4 (640x272), center-cropped to 320x180."""
    frames = read_frames(sample_clip(DEFAULT_VAL_CLIP), max_frames=count)
    top, left = (frames.shape[1] - LR_HEIGHT) // 2, (frames.shape[2] - LR_WIDTH) // 2
    return np.ascontiguousarray(frames[:, top:top + LR_HEIGHT, left:left + LR_WIDTH])


def detail_frames(count: int) -> np.ndarray:
    """``count`` frames of bigbuckbunny.mp4 (1280x720) downscaled to 960x540 (bicubic, antialiased)."""
    import torch.nn.functional as F

    hr = torch.from_numpy(read_frames(sample_clip("bigbuckbunny.mp4"), max_frames=count)).permute(0, 3, 1, 2)
    small = F.interpolate(hr.float(), size=(3 * LR_HEIGHT, 3 * LR_WIDTH), mode="bicubic", antialias=True)
    return small.clamp(0, 255).round().byte().permute(0, 2, 3, 1).contiguous().numpy()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def encode(frames: np.ndarray, path: Path, settings: EncoderSettings, cpu: list[float]) -> None:
    start = cpu_seconds()
    with FrameWriter(path, 25, encoder=settings, threads=1) as writer:
        for frame in frames:
            writer.write(frame)
    cpu.append(cpu_seconds() - start)


def forward_cpu_per_frame(lr: np.ndarray, presets: tuple[str, ...], repeats: int) -> dict[str, float]:
    """CPU seconds per frame of each preset's forward pass on batches of 4 windows of ``lr``."""
    clip = to_tensor(lr[:8])
    windows = torch.stack([clip[window_indices(i, len(clip))] for i in range(len(clip))])
    upscalers = {p: Upscaler(random_model(p), device="cpu", batch_size=4) for p in presets}
    cpu: dict[str, list[float]] = {p: [] for p in presets}

    def run(preset: str) -> None:
        start = cpu_seconds()
        for i in range(0, len(windows), 4):
            upscalers[preset].upscale_windows(windows[i:i + 4])
        cpu[preset].append((cpu_seconds() - start) / len(windows))

    measure({p: (lambda p=p: run(p)) for p in presets}, repeats=repeats, warmup=1)
    return {p: min(values[1:]) for p, values in cpu.items()}  # best run after the warm-up


def encode_settings(report: Report, content: str, frames: np.ndarray, settings: dict[str, EncoderSettings],
                    folder: Path, model_cpu: dict[str, float], repeats: int) -> dict[str, dict]:
    """Every setting on ``frames``, round-robin: a row each of CPU per frame, size, PSNR."""
    count = len(frames)
    files = {name: folder / f"{content}_{i}.mp4" for i, name in enumerate(settings)}
    cpu: dict[str, list[float]] = {name: [] for name in settings}
    timings = measure({name: (lambda n=name: encode(frames, files[n], settings[n], cpu[n])) for name in settings},
                      repeats=repeats, warmup=0)
    reference_size = files[REFERENCE].stat().st_size
    rows = {}
    for name, s in settings.items():
        per_frame = min(cpu[name]) / count
        size = files[name].stat().st_size
        default = " (default)" if s.codec == "h264" and s.preset == DEFAULT_PRESET["h264"] else ""
        report.add(f"{content}: {name}{default}: CPU per frame", per_frame * 1000, "ms", "realtime forward",
                   per_frame / model_cpu["realtime"],
                   note=f"{per_frame / model_cpu['small']:.2f} of small's; wall {timings[name].median / count * 1e3:.1f} ms")
        quality = float(np.mean([psnr(a, b) for a, b in zip(read_frames(files[name]), frames)]))
        report.add(f"{content}: {name}: size", size / count / 1024, "KiB/frame", REFERENCE, size / reference_size,
                   note=f"PSNR {quality:.2f} dB against the frames encoded")
        rows[name] = {"cpu_ms": per_frame * 1000, "kib": size / count / 1024, "psnr": quality,
                      "size_vs_slow": size / reference_size, "timing": timings[name].to_dict()}
    return rows


def conversions(report: Report, lr: np.ndarray, frames: np.ndarray, repeats: int) -> None:
    """Exact colour conversion (video_color) against FFmpeg's default, both directions."""
    import av

    from vsr_core.data.video_color import to_rgb

    tags = ColorTags()  # BT.709 limited
    yuv = [av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p") for f in lr]
    for frame in yuv:
        frame.colorspace, frame.color_range = tags.matrix, tags.range
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
                   note=f"FFmpeg's default: {default / len(frames) * 1000:.2f} ms")


def main(argv: list[str] | None = None) -> Report:
    args = common.parse_args(__doc__.splitlines()[0], argv)
    mode = "full" if args.full else "quick"
    header("encoders", args.full)
    report = Report("encoders", mode)
    count, repeats = (48, 3) if args.full else (24, 2)
    lr = lr_frames(count)
    frames = np.stack(list(Upscaler.from_checkpoint(CHECKPOINT, device="cpu", batch_size=4).stream(iter(lr))))
    model_cpu = forward_cpu_per_frame(lr, ("realtime", "small"), repeats + 1)
    for preset, seconds in model_cpu.items():
        report.add(f"{preset} forward, CPU per {LR_WIDTH}x{LR_HEIGHT} frame", seconds * 1000, "ms",
                   note="batches of 4 windows, best run")
    settings = {f"h264 crf=18 {p}": EncoderSettings("h264", 18, p) for p in H264_PRESETS}
    settings.update({name: s for name, s in OTHER_CODECS.items() if s.codec in available_codecs()})
    contents = {"model": frames, "detail": detail_frames(count)}
    with tempfile.TemporaryDirectory() as tmp:
        rows: dict[str, dict] = {}
        for content, shown in contents.items():
            rows[content] = encode_settings(report, content, shown, settings, Path(tmp), model_cpu, repeats)
        conversions(report, lr, frames, repeats)
        report.details.update({"frames": count, "size": f"{frames.shape[2]}x{frames.shape[1]}", "repeats": repeats,
                               "model_cpu_s_per_frame": model_cpu, "settings": rows, "encoder_threads": 1})
    print(f"wrote {report.write()}")
    return report


if __name__ == "__main__":
    main()
