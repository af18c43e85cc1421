"""The last part of `make demo`: serve a checkpoint, then use it over HTTP like a client would.

    python serve/demo.py --checkpoint demo_output/tune/demo/best --out demo_output/serve

Starts Ray and the Serve app on 127.0.0.1 with the sweep as its experiments (``--experiments``, default
the folder holding the checkpoint's best/: the page's Experiments view, compare and promote), sends a
5-frame window and a short clip (both made by downsampling the sample clip bikes.mp4 3x; the clip as a
video job), writes the 3x outputs and side_by_side.png (bicubic | model | original) for a person to look
at, prints the model's gain over bicubic (on the sweep's validation frames, from best.json, and on the
clips ``--evaluation`` scored, with their tOF against bicubic's) and ends by printing the web page's
address. In a terminal the app stays up until Ctrl-C, so the page can be tried; without one (CI, a
pipe) it stops at once.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from vsr_core.checkpoint import BEST_DIR, read_best
from vsr_core.data.degradation import bicubic_upsample, crop_to_scale
from vsr_core.data.samples import sample_clip
from vsr_core.data.video_io import FrameWriter, iter_frames, probe_video
from vsr_core.engine import report_keys as keys
from vsr_core.evaluate import degrade_frame
from vsr_core.frames import to_tensor, to_uint8
from vsr_core.metrics import format_gain, psnr
from vsr_core.netutil import free_port
from vsr_core.ray_connect import connect_ray

CLIP_FRAMES = 24


def gain_summary(checkpoint: str, evaluation: str | None) -> list[str]:
    """Lines: the model's gain over bicubic on the validation frames (best.json) and on each clip of
    a ``vsr evaluate --json`` file."""
    lines = []
    info = read_best(checkpoint) if Path(checkpoint).is_dir() else None
    if info is not None and keys.GAIN in info.metrics:
        clips = ", ".join(f"{k[len(keys.CLIP_GAIN_PREFIX):]} {format_gain(v)}" for k, v in info.metrics.items()
                          if k.startswith(keys.CLIP_GAIN_PREFIX))
        lines.append(f"  validation frames (the sweep's metric): {format_gain(info.metrics[keys.GAIN])}"
                     + (f"  ({clips})" if clips else "") + f", step {info.step}")
    if evaluation and Path(evaluation).is_file():
        scored = json.loads(Path(evaluation).read_text())
        frames = scored.get("max_frames") or "all"
        tofs = {(row["clip"], row["method"]): row.get("tof") for row in scored.get("rows", [])}
        for clip, gain in scored["gain_y_psnr"].items():
            model, bicubic = tofs.get((clip, "model")), tofs.get((clip, "bicubic"))
            temporal = f", tOF {model:.3f} (bicubic {bicubic:.3f}; lower is steadier)" if None not in (model, bicubic) \
                else ""
            lines.append(f"  {clip} (first {frames} frames, whole): {format_gain(gain)}{temporal}")
    return lines


def experiments_of(checkpoint: str) -> str | None:
    """The sweep folder a best/ export lies in (its experiment), when it is one."""
    folder = Path(checkpoint).resolve()
    return str(folder.parent) if folder.name == BEST_DIR and any(folder.parent.glob("trial_*")) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", default="demo_output/serve")
    parser.add_argument("--evaluation", help="a `vsr evaluate --json` file whose gains are printed at the end")
    parser.add_argument("--experiments", help="Tune experiment folder(s) for the page (default: the sweep the "
                        "checkpoint's best/ was exported from)", nargs="+")
    args = parser.parse_args(argv)
    experiments = args.experiments or ([found] if (found := experiments_of(args.checkpoint)) else [])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import ray
    from ray import serve as ray_serve

    from serve.app import build_app
    from serve.client import Client, upscale_video, upscale_window

    source = sample_clip("bikes.mp4")
    hr = [crop_to_scale(f) for f in iter_frames(source, CLIP_FRAMES)]
    lr = [degrade_frame(f) for f in hr]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    connect_ray(dashboard=False)
    try:
        ray_serve.start(http_options={"host": "127.0.0.1", "port": port})
        ray_serve.run(build_app({"checkpoint": str(Path(args.checkpoint).resolve()), "num_cpus": 1,
                                 "jobs_dir": str((out / "jobs").resolve()), "models_dir": str((out / "models").resolve()),
                                 "experiments": [str(Path(e).resolve()) for e in experiments]}),
                      name="vsr", route_prefix="/")
        client = Client(url, None, timeout=600)
        print(f"serving {args.checkpoint} at {url} ({requests.get(f'{url}/v1/model', timeout=30).json()['preset']})")

        # A window: 5 LR frames as PNG files -> the 3x center frame.
        center = CLIP_FRAMES // 2
        frame_files = []
        for i in range(center - 2, center + 3):
            frame_files.append(out / f"window_lr_{i:02d}.png")
            Image.fromarray(lr[i]).save(frame_files[-1])
        upscale_window(client, frame_files, out / "window_x3.png")
        model_frame = np.asarray(Image.open(out / "window_x3.png").convert("RGB"))
        bicubic_frame = to_uint8(bicubic_upsample(to_tensor(lr[center])[None]))[0]
        Image.fromarray(np.concatenate([bicubic_frame, model_frame, hr[center]], axis=1)).save(out / "side_by_side.png")
        print(f"side_by_side.png (bicubic | model | original): Y-PSNR bicubic "
              f"{psnr(bicubic_frame, hr[center], 3, y_channel=True):.2f} dB, model "
              f"{psnr(model_frame, hr[center], 3, y_channel=True):.2f} dB")

        # A clip: an LR mp4 -> the 3x mp4 (same fps and frame count).
        fps = probe_video(source).fps
        with FrameWriter(out / "clip_lr.mp4", fps) as writer:
            for frame in lr:
                writer.write(frame)
        upscale_video(client, out / "clip_lr.mp4", out / "clip_x3.mp4")
        info = probe_video(out / "clip_x3.mp4")
        print(f"clip_x3.mp4: {info.num_frames} frames, {info.width}x{info.height}, {info.fps:g} fps")
        summary = gain_summary(args.checkpoint, args.evaluation)
        if summary:
            print("\nthe best model's gain over bicubic (Y-PSNR):\n" + "\n".join(summary))
        print(f"outputs in {out}/")
        stays = sys.stdin.isatty() and sys.stdout.isatty()
        print(page_lines(url, out, experiments, stays), flush=True)  # the demo's last words: the page
        if stays:
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                print("shutting down ...")
    finally:
        ray_serve.shutdown()
        ray.shutdown()
    return 0


def page_lines(url: str, out: Path, experiments: list[str], stays: bool) -> str:
    """The demo's last lines, ending with the page's address."""
    what = ("the sweep's trials and curves under Experiments: compare two models, promote one, roll back; "
            if experiments else "") + f"upload {out / 'clip_lr.mp4'} to compare bicubic and the model"
    until = "it stays up until Ctrl-C" if stays else "it stops now, with no terminal to wait in"
    return f"\n{what} ({until}):\nthe web page: {url}/"


if __name__ == "__main__":
    sys.exit(main())
