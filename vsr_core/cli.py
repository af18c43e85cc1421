"""The ``vsr`` command: upscale, evaluate, train, export; and the apps' sweep, serve, client (``vsr_core.commands``)."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from vsr_core.cli_errors import run_reporting_errors
from vsr_core.commands import CommandUnavailable, add_commands, unavailable_reason
from vsr_core.engine.cli import add_train_parser
from vsr_core.export import FORMATS
from vsr_core.metrics import format_gain
from vsr_core.options import InferenceOptions
from vsr_core.video.plan import DEFAULT_CHUNK_FRAMES

if TYPE_CHECKING:
    import torch

    from vsr_core.video.batch import Batch


def _model_from_args(args: argparse.Namespace) -> torch.nn.Module:
    """The model of --checkpoint, or the bicubic baseline of --bicubic."""
    from vsr_core.checkpoint import model_from_checkpoint
    from vsr_core.inference import BicubicBaseline

    if args.bicubic:
        return BicubicBaseline()
    if not args.checkpoint:
        raise SystemExit("error: give --checkpoint CKPT (a .pth file, run folder or best/ folder), or --bicubic")
    return model_from_checkpoint(args.checkpoint)[0]


def _upscaler_from_args(args: argparse.Namespace):
    from vsr_core.inference import Upscaler

    return Upscaler(_model_from_args(args), InferenceOptions.from_args(args))


def _add_inference_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="checkpoint file, training run folder, or a sweep's best/ folder")
    parser.add_argument("--bicubic", action="store_true", help="bicubic baseline through the same pipeline")
    InferenceOptions.add_arguments(parser)


def _add_encoder_args(parser: argparse.ArgumentParser) -> None:
    from vsr_core.data.video_encoder import CODECS, DEFAULT_CODEC, DEFAULT_CRF, DEFAULT_PNG_LEVEL, DEFAULT_PRESET

    group = parser.add_argument_group("encoder (video outputs; the choice is written into the output's metadata)")
    group.add_argument("--codec", choices=list(CODECS), default=DEFAULT_CODEC, help="default %(default)s")
    group.add_argument("--crf", type=int, default=None, help="quality, lower is better (default: " +
                       ", ".join(f"{c} {q}" for c, q in DEFAULT_CRF.items()) + ")")
    group.add_argument("--preset", default=None, help="speed/size trade-off (default: " +
                       ", ".join(f"{c} {p}" for c, p in DEFAULT_PRESET.items()) + ")")
    group.add_argument("--pix-fmt", default=None, help="e.g. yuv420p, yuv420p10le (default: the input's chroma "
                       "subsampling and bit depth)")
    group.add_argument("--png-level", type=int, default=None, metavar="0-9",
                       help=f"a frame-folder output's PNG compression: zlib level (default {DEFAULT_PNG_LEVEL}, the "
                       "fastest; 6-9: smaller files, several times slower)")


def _chunk_runner(args: argparse.Namespace):
    """What runs the chunks and where, in words: an Upscaler in this process, or (--ray) the
    model and the options on Ray chunk workers (a --device that contradicts their GPUs fails
    here, before Ray starts). Ray is connected to --address, else a local instance is started;
    the third value says whether this command made that connection (and so ends it)."""
    from vsr_core.inference import Upscaler

    options = InferenceOptions.from_args(args)
    if not args.ray:
        upscaler = Upscaler(_model_from_args(args), options)
        return upscaler, f"on {upscaler.device}, {upscaler.precision}, {upscaler.backend}", False
    from vsr_core.ray_connect import connect_ray
    from vsr_core.video.ray_workers import RayExecutor, RayPool

    pool = RayPool(workers=args.workers, num_cpus=args.cpus_per_worker, num_gpus=args.gpus_per_worker)
    executor = RayExecutor(_model_from_args(args), options, pool)
    # Shut Ray down afterwards only when this command connected it (an embedding process keeps its own).
    owns_ray = connect_ray(args.address, log_to_driver=False, configure_logging=False) is not None
    worker = executor.options
    return executor, (f"on {pool.size()} Ray workers ({worker.device}), precision {worker.precision} (as each "
                      f"worker resolves it), {worker.backend}"), owns_ray


def cmd_upscale(args: argparse.Namespace) -> int:
    from vsr_core.data.video_encoder import EncoderSettings, PngSettings
    from vsr_core.video.batch import plan_batch
    from vsr_core.video.pipeline import upscale_file
    from vsr_core.video.plan import default_work_folder

    encoder = EncoderSettings(args.codec, args.crf, args.preset, args.pix_fmt)  # checked before the model loads
    png = None if args.png_level is None else PngSettings(args.png_level)
    batch = plan_batch(args.input, args.output, resume=args.resume, max_frames=args.max_frames,
                       chunk_frames=args.chunk_frames, encoder=encoder, work_folder=args.work_folder,
                       preview=args.preview, png=png)  # None: one clip, a video or a frame folder (rule in video/batch.py)
    if batch is not None:
        return _upscale_batch(args, batch)
    source = args.input[0]
    runner, where, owns_ray = _chunk_runner(args)
    print(f"upscaling {source} {where}", flush=True)
    _say_if_matroska(source, args.output)
    bar = tqdm(total=None, unit="frame", desc="upscale", dynamic_ncols=True)

    def show(progress) -> None:  # frames done across all workers
        bar.total = progress.frames_total
        bar.update(progress.frames_done - bar.n)

    try:
        result = upscale_file(source, args.output, runner, on_progress=show, max_frames=args.max_frames,
                              chunk_frames=args.chunk_frames, work_folder=args.work_folder, resume=args.resume,
                              encoder=encoder, preview=args.preview, png=png)
    except KeyboardInterrupt:
        bar.close()
        folder = args.work_folder or default_work_folder(args.output)
        print(f"interrupted: finished chunks are kept in {folder}; run the same command with --resume to continue",
              file=sys.stderr)
        return 130
    finally:
        bar.close()
        if owns_ray:
            import ray

            ray.shutdown()
    _print_result(result)
    return 0


def _upscale_batch(args: argparse.Namespace, batch: Batch) -> int:
    """Many videos into one folder: one Ray connection (with --ray) for all of them."""
    from vsr_core.batch_console import BatchConsole
    from vsr_core.video.batch import FINISHED, run_batch

    runner, where, owns_ray = _chunk_runner(args)
    print(f"upscaling {len(batch.items)} videos into {batch.out_dir} {where}", flush=True)
    for item in batch.items:
        if item.state != FINISHED and item.output != item.requested:
            _say_if_matroska(item.source, item.requested)
    console = BatchConsole(batch)
    try:
        outcomes = run_batch(batch, runner, console)
    except KeyboardInterrupt:
        console.interrupted()
        return 130
    finally:
        console.close()
        if owns_ray:
            import ray

            ray.shutdown()
    return console.summary(outcomes)


def _print_result(result) -> None:
    resumed = f", {result.resumed_frames} of them from an earlier run" if result.resumed_frames else ""
    print(f"wrote {result.frames} frames ({result.width}x{result.height}, {result.fps:g} fps{resumed}) to "
          f"{result.output} in {result.seconds:.1f}s ({result.frames / result.seconds:.2f} frames/s); {result.encoder}")
    if result.projection is not None:
        p = result.projection
        print(f"preview: {p.fps:.2f} frames/s; the whole video ({p.total_frames} frames) would take about "
              f"{_duration(p.projected_seconds)} and {p.projected_bytes / 1e6:.1f} MB")


def _say_if_matroska(source: str, output: str) -> None:
    """Say at the start, not after hours, when the output will be an .mkv instead of an .mp4."""
    from pathlib import Path

    from vsr_core.video.mux import output_container, streams_mp4_cannot_hold

    if Path(source).is_dir() or (target := output_container(source, output)) == output:
        return
    print(f"note: writing {target} instead of {output}: {Path(output).suffix} cannot hold the input's "
          f"{', '.join(streams_mp4_cannot_hold(source))}", flush=True)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "an unknown time (every previewed frame came from an earlier run)"
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


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
    bicubic_psnr = {clip: s.y_psnr for clip, name, s in rows if name == "bicubic"}
    gains = {clip: s.y_psnr - bicubic_psnr[clip] for clip, name, s in rows if name == "model"}

    def temporal(value: float | None, decimals: int) -> str:  # None: a single frame has no frame pairs
        return f"{'n/a':>7}" if value is None else f"{value:>7.{decimals}f}"

    print(f"{'clip':<24} {'method':<8} {'frames':>6} {'Y-PSNR':>8} {'Y-SSIM':>7} {'RGB-PSNR':>9} {'RGB-SSIM':>9} "
          f"{'tOF':>7} {'flicker':>7} {'gain':>9}")
    for clip, name, s in rows:
        gain = format_gain(gains[clip]) if name == "model" else ""
        print(f"{clip:<24} {name:<8} {s.frames:>6} {s.y_psnr:>8.2f} {s.y_ssim:>7.4f} {s.rgb_psnr:>9.2f} {s.rgb_ssim:>9.4f} "
              f"{temporal(s.tof, 3)} {temporal(s.flicker, 2)} {gain:>9}")
    print("tOF: optical-flow difference to the original's motion (HR pixels); flicker: frame-to-frame change the "
          "original does not have (Y gray levels); both lower is better, n/a for a single frame")
    if args.json:
        Path(args.json).write_text(json.dumps({"checkpoint": args.checkpoint, "max_frames": args.max_frames,
                                               "gain_y_psnr": gains, "rows": [
            {"clip": clip, "method": name, **dataclasses.asdict(s)} for clip, name, s in rows]}, indent=2) + "\n")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from vsr_core.checkpoint import model_from_checkpoint
    from vsr_core.export import checkpoint_metadata, export_file, ort_session

    model, checkpoint = model_from_checkpoint(args.checkpoint)
    metadata = checkpoint_metadata(checkpoint)
    export_file(model, args.output, args.format, metadata)
    # the file against the model it came from, at a size it was not traced with
    windows = torch.rand(2, 5, 3, 17, 31, generator=torch.Generator().manual_seed(0))
    model = model.float().eval()
    model.set_activity_tracking(False)
    with torch.inference_mode():
        expected = model(windows).numpy()
    if args.format == "onnx":
        session = ort_session(args.output)
        got = session.run(None, {session.get_inputs()[0].name: windows.numpy()})[0]
        runtime = "onnxruntime"
    else:
        got = torch.export.load(args.output).module()(windows).detach().numpy()
        runtime = "torch.export.load"
    diff = float(np.abs(got - expected).max())
    print(f"wrote {args.output} ({args.format}; {metadata['preset']} preset, step {metadata['step']}; dynamic batch, "
          f"height and width); {runtime} vs PyTorch at 2x5x3x17x31: max abs difference {diff:.2e}")
    return 0 if diff <= 1e-4 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsr", description="VSR+++ v2 3x video super-resolution")
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error (also after the "
                        "command: vsr train ... --debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upscale", help="upscale a video, a frame folder or many videos 3x")
    up.add_argument("input", nargs="+", metavar="INPUT",
                    help="video file (mp4/mkv/avi/...), or a folder: of PNG/JPEG frames (one clip) or of videos "
                    "(a batch; a folder holding both is refused); several video files are a batch too")
    up.add_argument("output", metavar="OUTPUT", help="output .mp4/.mkv (same timing, audio and subtitles kept) or a "
                    "folder for PNG frames; a path or a storage URI (s3://..., gs://...). For a batch, a folder: "
                    "one output per input, with its name and extension")
    up.add_argument("--max-frames", type=int, default=None, help="only the first N frames (and their audio)")
    up.add_argument("--preview", type=float, nargs=2, metavar=("START", "DURATION"), default=None,
                    help="upscale only DURATION seconds from START, and print the speed and the projected time "
                    "and size of the whole video")
    _add_inference_args(up)
    _add_encoder_args(up)
    video = up.add_argument_group("long videos and clusters")
    video.add_argument("--chunk-frames", type=int, default=None,
                       help=f"frames per chunk: the unit of parallel work and of --resume (default: "
                       f"{DEFAULT_CHUNK_FRAMES}, fewer for a short clip on several workers)")
    video.add_argument("--work-folder", default=None,
                       help="where finished chunks are kept until the output is complete (default OUTPUT.parts)")
    video.add_argument("--resume", action="store_true",
                       help="continue an interrupted run from its finished chunks (same input, model and settings)")
    video.add_argument("--ray", action="store_true", help="run the chunks on Ray workers (a local instance, "
                       "or the cluster given by --address)")
    video.add_argument("--address", default=None, help="Ray cluster address, e.g. 'auto' for the one 'ray start' "
                       "runs on this machine (with --ray; default: start a local instance)")
    video.add_argument("--workers", type=int, default=None,
                       help="chunk workers (with --ray; default: as many as the cluster has room for)")
    video.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs (= torch threads) per worker")
    video.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker (e.g. 1 on GPU nodes); a "
                       "worker with GPUs runs on CUDA, one without on the CPU (an explicit --device must agree)")
    up.set_defaults(func=cmd_upscale)

    ev = sub.add_parser("evaluate", help="Y/RGB PSNR and SSIM of the model and of bicubic on clips, and the "
                        "model's gain over bicubic (Y-PSNR)")
    ev.add_argument("clips", nargs="+", help="HR clips; each is downsampled 3x, upscaled and compared")
    ev.add_argument("--max-frames", type=int, default=None)
    ev.add_argument("--crop", type=int, default=None, help="evaluate a centered HR crop of this size")
    ev.add_argument("--json", help="also write the scores and the model's gain over bicubic (Y-PSNR) to this file")
    _add_inference_args(ev)
    ev.set_defaults(func=cmd_evaluate)

    ex = sub.add_parser("export", help="export the model for ONNX Runtime, TensorRT, ... (dynamic batch, H, W)")
    ex.add_argument("output", help="the file to write, e.g. model.onnx")
    ex.add_argument("--checkpoint", required=True, help="checkpoint file, training run folder, or a best/ folder")
    ex.add_argument("--format", default="onnx", choices=FORMATS, help="onnx, or pt2 (a torch.export program)")
    ex.set_defaults(func=cmd_export)

    add_train_parser(sub)
    add_commands(sub)  # sweep, serve, client: the apps' entry points
    for command in sub.choices.values():  # `vsr train ... --debug` too
        with contextlib.suppress(argparse.ArgumentError):  # a subcommand with a --debug of its own keeps it
            command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a ``vsr`` command: a user error ends in one line (exit code 2), anything else with its traceback."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    reason = unavailable_reason(args)
    if unknown and reason is None:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")

    def command() -> int | None:
        if reason is not None:
            raise CommandUnavailable(reason)
        return args.func(args)

    return run_reporting_errors(command, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
