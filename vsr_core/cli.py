"""The ``vsr`` command: upscale, evaluate, train."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

from vsr_core.engine.cli import add_train_parser


def _upscaler_from_args(args: argparse.Namespace):
    from vsr_core.inference import Upscaler

    options = dict(device=args.device, batch_size=args.batch_size, tile=args.tile, tile_overlap=args.tile_overlap)
    if args.bicubic:
        return Upscaler.bicubic(**options)
    if not args.checkpoint:
        raise SystemExit("error: give --checkpoint CKPT (a .pth file, run folder or best/ folder), or --bicubic")
    return Upscaler.from_checkpoint(args.checkpoint, **options)


def _add_inference_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="checkpoint file, training run folder, or a sweep's best/ folder")
    parser.add_argument("--bicubic", action="store_true", help="bicubic baseline through the same pipeline")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    parser.add_argument("--tile", type=int, default=0, help="LR tile size for large frames (0 = whole frame)")
    parser.add_argument("--tile-overlap", type=int, default=32, help="tile overlap in LR pixels")


def cmd_upscale(args: argparse.Namespace) -> int:
    from vsr_core.data.video_io import FrameWriter, iter_frames, probe_video

    info = probe_video(args.input)
    upscaler = _upscaler_from_args(args)
    frames = iter_frames(args.input, args.max_frames)
    total = info.num_frames if args.max_frames is None else min(args.max_frames, info.num_frames or args.max_frames)
    start = time.perf_counter()
    with FrameWriter(args.output, fps=info.fps) as writer, tqdm(total=total, unit="frame", desc="upscale") as bar:
        for frame in upscaler.stream(frames):
            writer.write(frame)
            bar.update(1)
    elapsed = time.perf_counter() - start
    print(f"wrote {writer.count} frames ({3 * info.width}x{3 * info.height}, {info.fps:g} fps) to {args.output} "
          f"in {elapsed:.1f}s ({writer.count / elapsed:.2f} frames/s)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from vsr_core.evaluate import evaluate_clip
    from vsr_core.inference import Upscaler

    model_upscaler = None if args.bicubic else _upscaler_from_args(args)
    bicubic = Upscaler.bicubic(device=args.device, batch_size=args.batch_size)
    rows = []
    for clip in args.clips:
        for name, upscaler in (("model", model_upscaler), ("bicubic", bicubic)):
            if upscaler is None:
                continue
            scores = evaluate_clip(upscaler, clip, args.max_frames, args.crop)
            rows.append((scores.clip, name, scores))
    print(f"{'clip':<24} {'method':<8} {'frames':>6} {'Y-PSNR':>8} {'Y-SSIM':>7} {'RGB-PSNR':>9} {'RGB-SSIM':>9}")
    for clip, name, s in rows:
        print(f"{clip:<24} {name:<8} {s.frames:>6} {s.y_psnr:>8.2f} {s.y_ssim:>7.4f} {s.rgb_psnr:>9.2f} {s.rgb_ssim:>9.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsr", description="VSR+++ v2 3x video super-resolution")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upscale", help="upscale a video or frame folder 3x")
    up.add_argument("input", help="video file (mp4/mkv/avi/...) or folder of PNG/JPEG frames")
    up.add_argument("output", help="output .mp4 (same fps) or a folder for PNG frames")
    up.add_argument("--max-frames", type=int, default=None)
    _add_inference_args(up)
    up.set_defaults(func=cmd_upscale)

    ev = sub.add_parser("evaluate", help="Y/RGB PSNR and SSIM of the model and of bicubic on clips")
    ev.add_argument("clips", nargs="+", help="HR clips; each is downsampled 3x, upscaled and compared")
    ev.add_argument("--max-frames", type=int, default=None)
    ev.add_argument("--crop", type=int, default=None, help="evaluate a centered HR crop of this size")
    _add_inference_args(ev)
    ev.set_defaults(func=cmd_evaluate)

    add_train_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
