"""``vsr train``: one training run with a plain progress display."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from vsr_core.config import ConfigError, TrainConfig
from vsr_core.engine.trainer import StepMetrics, Trainer, TrainingHooks, ValidationMetrics


def parse_overrides(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs; VALUE is parsed as JSON when it can be (numbers, true/false, lists)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value
    return overrides


def load_config(path: str | None, overrides: list[str]) -> TrainConfig:
    base = TrainConfig.from_json(path).to_dict() if path else {}
    return TrainConfig.from_dict({**base, **parse_overrides(overrides)})


class ProgressHooks(TrainingHooks):
    """A progress bar with the loss breakdown; one line per validation and checkpoint."""

    def __init__(self, trainer: Trainer):
        self.bar = tqdm(total=trainer.config.max_steps, initial=trainer.step, unit="step", desc="train")

    def on_step(self, trainer: Trainer, m: StepMetrics) -> None:
        self.bar.update(1)
        self.bar.set_postfix(l1=f"{m.loss_l1:.4f}", perc=f"{m.loss_perceptual:.4f}", total=f"{m.loss_total:.4f}",
                             lr=f"{m.lr:.2e}", sps=f"{m.samples_per_s:.1f}", status=trainer.convergence(),
                             refresh=False)

    def on_validation(self, trainer: Trainer, v: ValidationMetrics) -> None:
        health = trainer.health()
        self.bar.write(f"step {v.step}: val Y-PSNR {v.psnr:.2f} dB (bicubic {v.bicubic_psnr:.2f}), "
                       f"Y-SSIM {v.ssim:.4f}, L1 {v.l1:.5f} | {health['convergence']}, "
                       f"cold layers {health['cold_layers']}")

    def on_checkpoint(self, trainer: Trainer, path: Path) -> None:
        self.bar.write(f"step {trainer.step}: saved {path}")

    def close(self) -> None:
        self.bar.close()


def cmd_train(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set)
    trainer = Trainer(config, resume_from=args.resume, finetune_from=args.finetune_from)
    config.save(trainer.output_dir / "train_config.json")
    print(f"training {config.preset} on {trainer.device} -> {trainer.output_dir} "
          f"(lr {config.learning_rate:.1e}, wd {config.weight_decay}, batch {config.batch_size}x"
          f"{config.accumulation_steps}, phase {trainer.training_phase}, from step {trainer.step})")
    hooks = ProgressHooks(trainer)
    try:
        final = trainer.fit(hooks)
    except KeyboardInterrupt:
        hooks.close()
        print(f"interrupted: saved {trainer.save()} at step {trainer.step}")
        return 130
    hooks.close()
    if final:
        print(f"done: step {trainer.step}, val Y-PSNR {final.psnr:.2f} dB (bicubic {final.bicubic_psnr:.2f}), "
              f"Y-SSIM {final.ssim:.4f}; checkpoint {trainer.output_dir / 'latest.pth'}")
    return 0


def add_train_parser(sub) -> None:
    train = sub.add_parser("train", help="train one run (the Option B loop)")
    train.add_argument("--config", help="train_config.json (the seed's keys plus the rest; see README)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set MAX_STEPS=500 (repeatable)")
    train.add_argument("--resume", help="continue a run from its checkpoint (e.g. runs/x/latest.pth)")
    train.add_argument("--finetune-from", help="start from a checkpoint's weights with a fresh optimizer")
    train.set_defaults(func=cmd_train)
