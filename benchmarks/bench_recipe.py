"""The CPU recipe's gain against training minutes: one run, snapshots at given minutes, each scored.

Runs ``vsr train --config cpu_small`` (plain log lines) with its cosine over ``--max-steps`` (choose
it so that the run ends near the last minute mark on the machine: about 360 steps a minute on 2
idle AVX2 cores), copies ``latest.pth`` at every minute mark (the run saves it every 100 steps, so a
snapshot is at most ~15 s old), and records the step and the load average there. Then scores
every snapshot against bicubic (Y-PSNR, whole frames or the config's crops):

* ``validation``: the config's validation set (the held-out quarters of the two sample clips);
* ``carphone``: ``carphone_pristine.mp4``, 30 whole frames spread over the clip (as
  ``validation_rank.py`` and ``bench_presets.py``), footage no config trains, validates or tunes on;
* ``carphone_first30``: its first 30 frames through the stream (as ``vsr evaluate --max-frames 30``
  in ``make demo``).

The plot shows those gains against minutes, with the run's own validations (every
``VAL_STEP_EVERY`` steps, read from its TensorBoard log) as a line. Not part of ``make bench``:
the run takes the longest minute mark, on a machine left alone.

    python benchmarks/bench_recipe.py --minutes 7 15 30 60 --max-steps 21500 --plot docs/cpu_recipe_gain.png
    python benchmarks/bench_recipe.py --out runs/recipe --score-only      # score the snapshots again
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS_DIR, ROOT, load_average, machine_info
from validation_rank import INDEPENDENT_CLIP, INDEPENDENT_FRAMES

SNAPSHOTS_FILE = "snapshots.json"


def train_with_snapshots(args: argparse.Namespace) -> list[dict]:
    """Run the recipe for the longest minute mark; copy latest.pth at each mark."""
    out, run_dir = Path(args.out), Path(args.out) / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "vsr_core.cli", "train", "--config", args.config, "--plain",
               "--set", f"OUTPUT_DIR={run_dir}", "--set", f"MAX_STEPS={args.max_steps}",
               "--set", f"SAVE_STEP_EVERY={args.save_every}", *sum((["--set", s] for s in args.set), [])]
    print(" ".join(command), flush=True)
    snapshots: list[dict] = []
    start = time.monotonic()
    with open(out / "train.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            for minutes in sorted(args.minutes):
                while process.poll() is None and (time.monotonic() - start < minutes * 60
                                                   or not (run_dir / "latest.pth").exists()):
                    time.sleep(1)
                if not (run_dir / "latest.pth").exists():
                    raise SystemExit(f"the run ended without a checkpoint: see {out / 'train.log'}")
                snapshot = out / f"minute_{minutes:g}.pth"
                shutil.copy(run_dir / "latest.pth", snapshot)  # saved atomically by the run: never half written
                snapshots.append({"minutes": minutes, "seconds": round(time.monotonic() - start, 1),
                                  "checkpoint": snapshot.name, "load_average": load_average(),
                                  "run_ended": process.poll() is not None})
                print(f"minute {minutes:g}: {snapshot}", flush=True)
        finally:
            process.terminate()  # past the last mark: the cosine's tail is not part of the table
            process.wait()
    (out / SNAPSHOTS_FILE).write_text(json.dumps(snapshots, indent=2) + "\n")
    return snapshots


def scoring_sets(config_name: str) -> tuple[dict[str, list], Path]:
    """The scored item sets ({name: items}, as bench_presets scores) and the clip whose first frames are scored whole."""
    from bench_presets import quality_sets

    from vsr_core.configs import config_path
    from vsr_core.data.samples import sample_clip

    return quality_sets(config_path(config_name)), Path(sample_clip(INDEPENDENT_CLIP))


def score_snapshots(out: Path, snapshots: list[dict], config_name: str) -> list[dict]:
    from vsr_core.engine.validation import score_items
    from vsr_core.evaluate import evaluate_clip
    from vsr_core.inference import Upscaler
    from vsr_core.metrics import gain_over_bicubic

    sets, first_frames_clip = scoring_sets(config_name)

    def scores(upscaler: Upscaler) -> tuple[dict[str, list[float]], float]:
        per_set = {name: [s["psnr"] for s in score_items(upscaler, items, 8)] for name, items in sets.items()}
        return per_set, evaluate_clip(upscaler, first_frames_clip, INDEPENDENT_FRAMES).y_psnr

    bicubic, bicubic_first30 = scores(Upscaler.bicubic(device="cpu"))
    rows = []
    for snapshot in snapshots:
        upscaler = Upscaler.from_checkpoint(out / snapshot["checkpoint"], device="cpu")
        model, first30 = scores(upscaler)
        row = {**snapshot, "step": upscaler.checkpoint_info["step"],
               **{f"gain_{name}_db": gain_over_bicubic(model[name], bicubic[name]) for name in sets},
               "gain_carphone_first30_db": first30 - bicubic_first30}
        rows.append(row)
        print(f"minute {row['minutes']:>4g}  step {row['step']:>6}  validation {row['gain_validation_db']:+.2f} dB  "
              f"carphone {row['gain_carphone_db']:+.2f} dB  carphone first 30 {row['gain_carphone_first30_db']:+.2f} dB",
              flush=True)
    return rows


def validation_curve(run_dir: Path) -> list[tuple[int, float, float]]:
    """(step, seconds since the run's first event, gain) of the run's own validations."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    if "Validation/Gain_over_bicubic_dB" not in events.Tags().get("scalars", []):
        return []
    first = min(e.wall_time for tag in events.Tags()["scalars"] for e in events.Scalars(tag)[:1])
    return [(e.step, e.wall_time - first, e.value) for e in events.Scalars("Validation/Gain_over_bicubic_dB")]


SERIES = (("gain_validation_db", "validation set", "#2f6db3", "o"),
          ("gain_carphone_db", "carphone, 30 frames spread (unseen)", "#c0392b", "s"),
          ("gain_carphone_first30_db", "carphone, first 30 frames (unseen)", "#e67e22", "^"))


def plot(rows: list[dict], curve: list[tuple[int, float, float]], path: Path, preset: str,
         others: list[dict] = ()) -> Path:
    """``others``: earlier results of this benchmark (another preset, say), drawn dashed beside this run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    if curve:
        ax.plot([c[1] / 60 for c in curve], [c[2] for c in curve], color="#9bb8dd", lw=1.2,
                label=f"{preset + ' preset: ' if others else ''}the run's own validations (validation set)")
    minutes = [r["seconds"] / 60 for r in rows]
    for key, label, colour, marker in SERIES:
        ax.plot(minutes, [r[key] for r in rows], marker=marker, color=colour,
                label=f"{preset} preset: {label}" if others else label)
    for other in others:
        for key, label, colour, marker in SERIES:
            ax.plot([r["seconds"] / 60 for r in other["rows"]], [r[key] for r in other["rows"]], marker=marker,
                    color=colour, ls="--", mfc="white", alpha=0.8, label=f"{other['preset']} preset: {label}")
    for r in rows:
        ax.annotate(f"step {r['step']}", (r["seconds"] / 60, r["gain_carphone_db"]), textcoords="offset points",
                    xytext=(4, 6), fontsize=8)
    every_mark = minutes + [r["seconds"] / 60 for other in others for r in other["rows"]]
    ax.set_xlim(0, max(every_mark, default=1) * 1.12)  # room for the last label
    ax.set_xlabel("training minutes (one run, 2 CPU cores)")
    ax.set_ylabel("gain over bicubic (dB, Y-PSNR)")
    ax.set_title(f"The CPU recipe ({' and '.join([preset, *(o['preset'] for o in others)])} preset"
                 f"{'s' if others else ''}): gain against training time")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="cpu_small", help="a config file or a shipped config's name")
    p.add_argument("--minutes", type=float, nargs="+", default=[7, 15, 30, 60], help="the minute marks")
    p.add_argument("--max-steps", type=int, default=21500, help="the run's MAX_STEPS (its cosine's length)")
    p.add_argument("--save-every", type=int, default=100,
                   help="the run's SAVE_STEP_EVERY: a snapshot is at most this many steps old")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="another config override")
    p.add_argument("--out", default="runs/recipe", help="the run and its snapshots")
    p.add_argument("--name", default="recipe", help="the results file: results/NAME.json")
    p.add_argument("--compare", nargs="+", default=[], metavar="RESULT.json",
                   help="earlier results of this benchmark (e.g. another preset's) drawn dashed on the same plot")
    p.add_argument("--score-only", action="store_true", help="score the snapshots of an earlier run in --out")
    p.add_argument("--plot", help="where the plot goes (default results/recipe.png)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    machine = machine_info()  # before the run: its load average is the machine's own
    snapshots = (json.loads((out / SNAPSHOTS_FILE).read_text()) if args.score_only
                 else train_with_snapshots(args))
    rows = score_snapshots(out, snapshots, args.config)
    curve = validation_curve(out / "run")
    run_config = json.loads((out / "run" / "train_config.json").read_text())
    plot_path = plot(rows, curve, Path(args.plot) if args.plot else RESULTS_DIR / f"{args.name}.png",
                     run_config["PRESET"],
                     [json.loads(Path(other).read_text()) for other in args.compare])
    result = {"benchmark": args.name, "machine": machine, "config": args.config, "preset": run_config["PRESET"],
              "max_steps": run_config["MAX_STEPS"],
              "sets": {"carphone": f"{INDEPENDENT_CLIP}, {INDEPENDENT_FRAMES} whole frames spread over the clip",
                       "carphone_first30": f"{INDEPENDENT_CLIP}, its first {INDEPENDENT_FRAMES} frames"},
              "rows": rows, "validation_curve": [{"step": s, "seconds": round(t, 1), "gain_db": g} for s, t, g in curve],
              "plot": str(plot_path)}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{args.name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path} and {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
