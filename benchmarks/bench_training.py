"""4. Training: optimizer steps/s and samples/s of the small preset on CPU through
``Trainer.train_step`` (the one training loop), with PERCEPTUAL_WEIGHT 0 and with 0.1 +
VGG_WEIGHTS random (the VGG19 cost ratio), and with the model's activations in NCHW
(the layout before the speed work); measured round-robin in one process. Then the
data loader alone (samples/s iterating the DataLoader the Trainer builds) as a multiple
of what training consumes.

Config: the shipped sweep_base (what Tune trials train), default training clip.
"""
from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from common import Report, header, measure, parse_args
from vsr_core.config import TrainConfig
from vsr_core.configs import shipped_path
from vsr_core.data.datasets import ContinuingSampler, WindowPatchDataset, training_clips
from vsr_core.engine.trainer import Trainer


def base_config(tmp: Path, name: str, **changes) -> TrainConfig:
    values = TrainConfig.from_json(shipped_path("sweep_base")).to_dict()
    values.update({"OUTPUT_DIR": str(tmp / name), "DEVICE": "cpu", "MILESTONE_EVERY": 0, "VGG_WEIGHTS": "random"})
    values.update({k.upper(): v for k, v in changes.items()})
    return TrainConfig.from_dict(values)


def loader_throughput(config: TrainConfig, num_workers: int, batches: int) -> float:
    """Samples/s of the Trainer's DataLoader alone (after its first batch: worker start-up)."""
    dataset = WindowPatchDataset(training_clips(config), config.patch_size, config.num_patches, config.seed)
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=ContinuingSampler(0), num_workers=num_workers,
                        persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers > 0 else None)
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    elapsed = time.perf_counter() - start
    del iterator, loader
    gc.collect()
    return batches * config.batch_size / elapsed


def main(argv=None) -> None:
    args = parse_args(__doc__, argv)
    full = args.full
    report = Report("training", "full" if full else "quick")
    header("training", full)
    repeats = 10 if full else 6
    with tempfile.TemporaryDirectory(prefix="vsr-bench-train-") as tmp:
        tmp = Path(tmp)
        trainers = {
            "L1 only (PERCEPTUAL_WEIGHT 0)": Trainer(base_config(tmp, "l1", perceptual_weight=0.0)),
            "L1 + 0.1 VGG19 (random)": Trainer(base_config(tmp, "vgg", perceptual_weight=0.1)),
            "L1 only, NCHW (before)": Trainer(base_config(tmp, "nchw", perceptual_weight=0.0)),
        }
        trainers["L1 only, NCHW (before)"].model.memory_format = torch.contiguous_format
        config = trainers["L1 only (PERCEPTUAL_WEIGHT 0)"].config
        timings = measure({name: trainer.train_step for name, trainer in trainers.items()}, repeats=repeats,
                          warmup=2)
        steps = {name: 1 / t.median for name, t in timings.items()}
        samples = {name: s * config.effective_batch_size for name, s in steps.items()}
        ref = "L1 only (PERCEPTUAL_WEIGHT 0)"
        label = f"small {config.batch_size}x{config.accumulation_steps}x{config.patch_size}px"
        for name in trainers:
            report.add(f"{label}: {name}", steps[name], "steps/s", "" if name == ref else "L1 only",
                       None if name == ref else steps[name] / steps[ref], note=f"{samples[name]:.1f} samples/s")
        vgg = "L1 + 0.1 VGG19 (random)"
        report.add("VGG cost: step time with VGG / without", steps[ref] / steps[vgg], "x",
                   note="(Trainer.train_step; same data)")
        workers = config.num_workers
        del trainers
        gc.collect()

        batches = 60 if full else 30
        loader = {n: loader_throughput(config, n, batches) for n in sorted({workers, 0})}
        consumed = samples[ref]
        for n, value in loader.items():
            report.add(f"data loader alone, NUM_WORKERS={n}", value, "samples/s", "training consumption (L1 only)",
                       value / consumed)
        report.details = {
            "config": config.to_dict(), "timings": {k: t.to_dict() for k, t in timings.items()},
            "steps_per_s": steps, "samples_per_s": samples, "loader_samples_per_s": loader,
        }
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
