"""``vsr train``: one training run, shown by the live console in a terminal, as log lines otherwise."""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

from vsr_core.checkpoint import load_checkpoint
from vsr_core.config import FINETUNE_DEFAULTS, ConfigError, TrainConfig, parse_value
from vsr_core.configs import config_path, is_shipped_name, shipped_names
from vsr_core.engine import report_keys
from vsr_core.engine.console import LiveConsole, PlainConsole
from vsr_core.engine.distributed import add_worker_args, effective_batch_text, scaled_lr_exponent
from vsr_core.engine.hooks import TrainingHooks
from vsr_core.engine.run_start import start_run
from vsr_core.engine.trainer import Trainer
from vsr_core.metrics import format_gain


def parse_overrides(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs; VALUE is parsed as JSON when it can be (numbers, true/false, lists)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = parse_value(value)
    return overrides


def load_config(path: str | None, overrides: list[str], resume: str | None = None,
                finetune_from: str | None = None) -> TrainConfig:
    """The config file's keys (``path``: a file or a shipped config's name; or, resuming or fine-tuning
    without one, the checkpoint's own config) plus ``--set``. A fine-tune starts from the seed's
    LR_EXPONENT and WEIGHT_DECAY for that phase (``FINETUNE_DEFAULTS``) unless ``--set`` gives them."""
    if path:
        base = TrainConfig.from_json(config_path(path)).to_dict()
    elif resume or finetune_from:
        # not the defaults: they would be another run (preset, data...)
        base = load_checkpoint(resume or finetune_from)["config"]
    else:
        base = {}
    phase = FINETUNE_DEFAULTS if finetune_from else {}
    return TrainConfig.from_dict({**base, **phase, **parse_overrides(overrides)})


def make_console(trainer: Trainer, config_path: Path, plain: bool) -> TrainingHooks:
    """The live console in a terminal, plain log lines otherwise (or with --plain)."""
    if not plain and sys.stdin.isatty() and sys.stdout.isatty():
        return LiveConsole(trainer, config_path)
    return PlainConsole(trainer, config_path)


class StopOnInterrupt:
    """Ctrl-C (SIGINT) asks ``fit`` to stop at the next step boundary, where it saves latest.pth: a
    checkpoint taken inside a step would hold an updated model with the step counter not yet moved.
    A second Ctrl-C interrupts at once (KeyboardInterrupt), without saving."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.interrupted = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.interrupted = True
        self.trainer.request_stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> "StopOnInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume and args.finetune_from:
        raise ConfigError("give either --resume (continue a run) or --finetune-from (a new run from its weights)")
    config = load_config(args.config, args.set, args.resume, args.finetune_from)
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.workers > 1:
        return train_on_ray(args, config)
    trainer = start_run(config, resume_from=args.resume, finetune_from=args.finetune_from)
    run_config = trainer.output_dir / "train_config.json"
    config.save(run_config)
    print(f"training {config.preset} on {trainer.device} ({trainer.precision}) -> {trainer.output_dir} "
          f"(lr {config.learning_rate:.1e}, wd {config.weight_decay}, {effective_batch_text(config, 1)}, "
          f"phase {trainer.training_phase}, from step {trainer.step})", flush=True)
    # the live console saves changed keys to the user's config file; a shipped one stays as shipped
    user_file = args.config and not is_shipped_name(args.config)
    console = make_console(trainer, config_path(args.config) if user_file else run_config, args.plain)
    latest = trainer.output_dir / "latest.pth"
    try:
        with StopOnInterrupt(trainer) as interrupt, console:
            final = trainer.fit(console)
    except KeyboardInterrupt:  # the second Ctrl-C: mid-step, so nothing is saved
        print(f"interrupted again: not saved; {latest} holds the last completed checkpoint", flush=True)
        return 130
    if interrupt.interrupted:
        print(f"interrupted: saved {latest} at step {trainer.step}", flush=True)
        return 130
    if trainer.step < trainer.config.max_steps:
        print(f"stopped at step {trainer.step}/{trainer.config.max_steps}; checkpoint {latest}")
    elif final:
        print(f"done: step {trainer.step}, val gain over bicubic {format_gain(final.gain)} "
              f"(Y-PSNR {final.psnr:.2f} dB, bicubic {final.bicubic_psnr:.2f}), "
              f"Y-SSIM {final.ssim:.4f}; checkpoint {latest}")
    return 0


def train_on_ray(args: argparse.Namespace, config: TrainConfig) -> int:
    """``--workers N``: one data-parallel run of N Ray Train workers (see ``engine.ray_train``). Rank 0 prints
    the log lines and writes OUTPUT_DIR (latest.pth, tensorboard/); Ray Train keeps the checkpoint of each
    validation in OUTPUT_DIR/ray_train_<time> and restarts a failed group from the last one."""
    import ray
    import ray.train

    from vsr_core.engine.ray_train import fit_on_ray_train
    from vsr_core.engine.run_start import CHECKPOINT_FILE
    from vsr_core.ray_connect import connect_ray

    if not args.resume:  # a resumed run goes on with its checkpoint's LR (already scaled) unless --set changes it
        config = config.replace(lr_exponent=scaled_lr_exponent(config.lr_exponent, args.workers, args.lr_scaling))
    output = Path(config.output_dir).resolve()  # the workers may run in other folders
    config = config.replace(output_dir=str(output))
    output.mkdir(parents=True, exist_ok=True)
    config.save(output / "train_config.json")
    print(f"training {config.preset} on {args.workers} Ray Train workers -> {output} (lr {config.learning_rate:.1e}, "
          f"wd {config.weight_decay}, {effective_batch_text(config, args.workers)})", flush=True)
    started = connect_ray(args.address) is not None
    try:
        result = fit_on_ray_train(
            # a new name per launch: Ray Train would otherwise continue the previous run found under the same one
            config, args.workers, storage_path=str(output), name=time.strftime("ray_train_%Y%m%d-%H%M%S"),
            cpus_per_worker=args.cpus_per_worker,
            gpus_per_worker=args.gpus_per_worker, max_failures=args.max_failures, console=True,
            resume_from=str(Path(args.resume).resolve()) if args.resume else None,
            finetune_from=str(Path(args.finetune_from).resolve()) if args.finetune_from else None)
    except ray.train.TrainingFailedError as exc:
        print(f"error: the training run failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if started:
            ray.shutdown()
    reported = f"; last reported checkpoint {result.checkpoint.path}/{CHECKPOINT_FILE}" if result.checkpoint else ""
    step = (result.metrics or {}).get(report_keys.STEP)
    print(f"done: step {step}, checkpoint {output / 'latest.pth'}{reported}", flush=True)
    return 0


def add_train_parser(sub) -> None:
    train = sub.add_parser("train", help="train one run (the Option B loop)")
    train.add_argument("--config", help="a train_config.json (the seed's keys plus the rest; see README) or a "
                       f"shipped config's name ({', '.join(shipped_names())}); with --resume and no --config, the "
                       "checkpoint's own config")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set MAX_STEPS=500 (repeatable)")
    train.add_argument("--resume", help="continue a run from its checkpoint (e.g. runs/x/latest.pth); "
                       "changed LR_EXPONENT / WEIGHT_DECAY / MAX_STEPS take effect from its step on")
    train.add_argument("--finetune-from", help="start from a checkpoint's weights (a .pth, run folder or best/) with "
                       "a fresh optimizer, training_phase 'finetune' and the seed's LR_EXPONENT -5 and WEIGHT_DECAY "
                       "0.001 unless --set gives others; without --config, the checkpoint's own config")
    train.add_argument("--plain", action="store_true",
                       help="plain log lines even in a terminal (no live console, no keys)")
    parallel = train.add_argument_group("data-parallel training on Ray Train (see README)")
    parallel.add_argument("--workers", type=int, default=1, metavar="N",
                          help="train on N Ray Train workers (DDP); 1 = this process, no Ray")
    add_worker_args(parallel)
    parallel.add_argument("--max-failures", type=int, default=2,
                          help="restarts of the worker group (after a lost worker) from the last checkpoint")
    parallel.add_argument("--address", help="a running Ray cluster ('auto'); default: start a local Ray")
    train.set_defaults(func=cmd_train)
