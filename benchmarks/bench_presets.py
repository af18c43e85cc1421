"""Speed against quality for every preset: a table and a plot to pick a preset by.

For each preset (``tiny``, ``realtime``, ``small``, ``full``): its parameters, and at 320x180
and 640x360 LR its frames/s through the forward pass (``upscale_windows``, batches of 4
windows in memory), through ``Upscaler.stream`` (uint8 frames in memory) and end to end
(``vsr upscale`` of a clip to mp4, defaults), measured round-robin per size. Given trained
checkpoints (paths; each one's preset is read from it), also its gain over bicubic (Y-PSNR) on
the validation set of the ``cpu_small`` config and on ``carphone_pristine.mp4`` (whole frames
spread over the clip, which no config trains or validates on): the same sets as
``validation_rank.py``. A preset without a checkpoint runs with random weights: speed only.

Writes ``results/presets.json`` (``presets.full.json`` with --full) and a plot (matplotlib):
end-to-end frames/s at 320x180 against the gain on carphone_pristine.mp4 (against the parameter
count when no checkpoint was given).

    python benchmarks/bench_presets.py                                  # random weights, quick
    python benchmarks/bench_presets.py runs/*/best --full --plot docs/presets.png
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench_pipeline import BATCH, run_cli, save_model_checkpoint, write_clip
from common import RESULTS_DIR, ROOT, Report, header, measure
from vsr_core.configs import config_path
from vsr_core.archs import PRESETS, count_parameters
from vsr_core.frames import to_tensor, window_indices
from vsr_core.inference import Upscaler

ALL_PRESETS = ("tiny", "realtime", "small", "full")
SIZES = ((180, 320), (360, 640))
# frames per measured run, by preset and LR height (~2-10 s each on 2 idle cores)
FRAMES = {"tiny": (96, 48), "realtime": (48, 16), "small": (16, 8), "full": (4, 4)}
CONFIG = config_path("cpu_small")


def speed_case(preset: str, checkpoint: Path, height: int, width: int, num_frames: int, repeats: int,
               tmp: Path) -> dict[str, float]:
    """frames/s of the forward pass, the stream and vsr upscale for one preset at one size."""
    clip = tmp / f"clip_{height}x{width}_{num_frames}.mp4"
    if not clip.exists():
        write_clip(clip, num_frames, height, width)
    upscaler = Upscaler.from_checkpoint(checkpoint, device="cpu", batch_size=BATCH)
    from vsr_core.data.video_io import read_frames

    decoded = list(read_frames(clip))
    frames = to_tensor(np.stack(decoded))
    windows = torch.stack([frames[window_indices(i, num_frames)] for i in range(num_frames)])
    e2e: list[float] = []
    cli = ["upscale", str(clip), str(tmp / "out.mp4"), "--checkpoint", str(checkpoint), "--device", "cpu"]
    timings = measure({
        "forward": lambda: [upscaler.upscale_windows(windows[i:i + BATCH]) for i in range(0, num_frames, BATCH)],
        "stream": lambda: list(upscaler.stream(iter(decoded))),
        "vsr upscale": lambda: e2e.append(run_cli(cli)),
    }, repeats=repeats, warmup=1)
    fps = {name: num_frames / timing.median for name, timing in timings.items()}
    fps["vsr upscale"] = float(np.median(e2e[1:]))  # its own timer, without loading the model; no warm-up
    return fps


def carphone_items() -> list:
    from validation_rank import INDEPENDENT_CLIP, INDEPENDENT_FRAMES

    from vsr_core.data.datasets import load_clip
    from vsr_core.data.samples import sample_clip
    from vsr_core.data.validation_set import build_validation_set

    return build_validation_set([(INDEPENDENT_CLIP, load_clip(sample_clip(INDEPENDENT_CLIP)))], [],
                                INDEPENDENT_FRAMES)


def quality_sets(config: Path = CONFIG) -> dict[str, list]:
    """The validation set of ``config`` (a config file) and carphone's spread frames."""
    from vsr_core.config import TrainConfig
    from vsr_core.engine.validation import validation_items

    return {"validation": validation_items(TrainConfig.from_json(config)), "carphone": carphone_items()}


def gains(checkpoint: Path, sets: dict[str, list], bicubic: dict[str, list[float]]) -> dict[str, float]:
    from vsr_core.engine.validation import score_items
    from vsr_core.metrics import gain_over_bicubic

    upscaler = Upscaler.from_checkpoint(checkpoint, device="cpu", batch_size=BATCH)
    return {name: gain_over_bicubic([s["psnr"] for s in score_items(upscaler, items, 8)], bicubic[name])
            for name, items in sets.items()}


def checkpoints_by_preset(paths: list[str]) -> dict[str, Path]:
    """{preset: checkpoint} of the given paths (a preset named twice: the last path)."""
    from vsr_core.checkpoint import load_checkpoint, resolve_checkpoint_path

    found = {}
    for path in paths:
        resolved = resolve_checkpoint_path(path)
        found[load_checkpoint(resolved)["config"].get("PRESET", "full")] = Path(resolved)
    return found


def plot(rows: list[dict], path: Path, size: str) -> Path:
    """``size``: the LR size (e.g. "180x320") whose end-to-end frames/s are on the x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trained = [r for r in rows if r.get("gain_carphone_db") is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    shown = trained or rows
    x = [r["fps"][size]["vsr upscale"] for r in shown]
    y = [r["gain_carphone_db"] for r in shown] if trained else [r["parameters"] for r in shown]
    ax.scatter(x, y, s=[30 + 120 * np.log10(r["parameters"]) / 7 for r in shown], color="#2f6db3", zorder=3)
    for r, xi, yi in zip(shown, x, y):
        ax.annotate(f"{r['preset']} ({r['parameters'] / 1e3:,.0f}k params)", (xi, yi), textcoords="offset points",
                    xytext=(6, 6), fontsize=9)
    ax.set_xscale("log")
    height, width = (int(v) for v in size.split("x"))
    ax.set_xlabel(f"vsr upscale, {width}x{height} -> {3 * width}x{3 * height}: frames/s (log scale)")
    if trained:
        ax.set_ylabel("gain over bicubic on carphone_pristine.mp4 (dB, Y-PSNR)")
        ax.set_title("Speed against quality, per preset")
    else:
        ax.set_yscale("log")
        ax.set_ylabel("parameters (untrained: speed only)")
        ax.set_title("Speed per preset (no checkpoints given: random weights)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def run(args: argparse.Namespace) -> Report:
    mode = "full" if args.full else "quick"
    header("presets", args.full)
    report = Report("presets", mode)
    repeats = 3 if args.full else 2
    presets = args.presets or (ALL_PRESETS if args.full else ALL_PRESETS[:3])
    given = checkpoints_by_preset(args.checkpoints)
    sets = quality_sets() if given else {}
    if sets:
        from vsr_core.engine.validation import score_items

        baseline = Upscaler.bicubic(device="cpu")
        bicubic = {name: [s["psnr"] for s in score_items(baseline, items, 8)] for name, items in sets.items()}
    rows = []
    with tempfile.TemporaryDirectory(prefix="vsr-presets-") as tmp:
        tmp = Path(tmp)
        for preset in presets:
            checkpoint = given.get(preset) or save_model_checkpoint(preset, tmp / f"{preset}.pth")
            model = Upscaler.from_checkpoint(checkpoint, device="cpu").model
            row = {"preset": preset, "spec": PRESETS[preset].to_dict(), "parameters": count_parameters(model),
                   "checkpoint": str(given[preset]) if preset in given else None, "fps": {}}
            for (height, width), frames in zip(args.sizes, FRAMES[preset]):
                if preset == "full" and not args.full and (height, width) != args.sizes[0]:
                    continue  # ~20 s a frame at 640x360 on 2 cores: --full measures it
                fps = speed_case(preset, checkpoint, height, width, frames, repeats, tmp)
                row["fps"][f"{height}x{width}"] = fps
                for name, value in fps.items():
                    report.add(f"{preset} {height}x{width}: {name}", value, "frames/s", "forward" if name != "forward"
                               else "", None if name == "forward" else value / fps["forward"])
            if preset in given:
                quality = gains(given[preset], sets, bicubic)
                row.update(gain_validation_db=quality["validation"], gain_carphone_db=quality["carphone"])
                report.add(f"{preset}: gain over bicubic, validation set", quality["validation"], "dB")
                report.add(f"{preset}: gain over bicubic, carphone_pristine.mp4", quality["carphone"], "dB")
            report.add(f"{preset}: parameters", row["parameters"], "")
            rows.append(row)
    first = "x".join(map(str, args.sizes[0]))
    plot_path = plot(rows, Path(args.plot) if args.plot else RESULTS_DIR / f"presets{'' if mode == 'quick' else '.full'}.png",
                     first)
    report.details = {"rows": rows, "plot": str(plot_path), "config": str(CONFIG.relative_to(ROOT)),
                      "sizes": [list(s) for s in args.sizes]}
    print(f"wrote {report.write()} and {plot_path}")
    return report


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="*", help="trained checkpoints (file, run folder or best/); their "
                        "presets get quality figures")
    parser.add_argument("--full", action="store_true", help="every preset (the full one too), 3 repeats")
    parser.add_argument("--presets", nargs="+", choices=ALL_PRESETS, help="only these presets")
    parser.add_argument("--sizes", nargs="+", type=lambda s: tuple(int(v) for v in s.split("x")),
                        default=list(SIZES), metavar="HxW", help="LR sizes (default 180x320 360x640)")
    parser.add_argument("--plot", help="where the plot goes (default results/presets[.full].png)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    run(parse(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
