"""Typed, validated training config.

The JSON form uses the seed's upper-case keys (``LR_EXPONENT``, ``WEIGHT_DECAY``,
``MAX_STEPS``, ...) exactly; in Python they are the lower-case dataclass fields.
An unknown key or a bad value fails at start-up, naming the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from vsr_core.archs import PRESETS
from vsr_core.frames import PRECISIONS

VGG_WEIGHT_CHOICES = ("imagenet", "random")
# The seed's recommended starting point for the fine-tune phase (a pretrained model's weights, a fresh
# optimizer): `vsr train --finetune-from` and `tune/search.py --finetune-from` start here unless overridden.
FINETUNE_DEFAULTS = {"LR_EXPONENT": -5.0, "WEIGHT_DECAY": 0.001}


# keys whose values are paths on the machine that trains (not shown where paths must not be: the Serve API)
PATH_KEYS = ("TRAIN_DATA", "VAL_DATA", "VGG_WEIGHTS_PATH", "OUTPUT_DIR")


class ConfigError(ValueError):
    pass


def _key(default: Any, help: str) -> Any:
    """A config key: its default and the help text docs/config.md shows (docs/generate.py writes that table)."""
    if isinstance(default, list):
        return field(default_factory=list, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # --- the seed's train_config.json keys ---
    lr_exponent: float = _key(-4.0, "learning rate = 10^x (the seed recommends -5 for fine-tuning)")
    weight_decay: float = _key(0.01, "AdamW weight decay (0.001 for fine-tuning)")
    max_steps: int = _key(100_000, "optimizer steps; the cosine schedule's T_max")
    val_step_every: int = _key(250, "validate every N steps")
    save_step_every: int = _key(5_000, "write `latest.pth` every N steps")
    log_tboard_every: int = _key(10, "TensorBoard scalars and layer activity every N steps")
    accumulation_steps: int = _key(3, "micro-batches per optimizer step")
    sort_by_activity: bool = _key(True, "console: layer table by activity (else by position)")
    # --- model and data ---
    preset: str = _key("full", "model size: `full` (96 channels, 15+15 blocks), `small` (32, 4+4), `realtime` "
                       "(16, 1+1), `tiny` (tests); see docs/model.md")
    batch_size: int = _key(4, "windows per micro-batch; effective batch = BATCH_SIZE x ACCUMULATION_STEPS")
    patch_size: int = _key(64, "LR patch side (the HR crop is 3x)")
    num_patches: int = _key(29_000, "distinct training patches (one epoch)")
    train_data: list[str] = _key([], "videos, frame folders or folders of videos; [] = the sample clip")
    val_data: list[str] = _key([], "validation videos, frame folders or folders of videos; [] = the sample "
                               "validation clip")
    max_frames_per_clip: int = _key(0, "use only the first N frames of each training clip (0 = all)")
    val_max_frames: int = _key(8, "validation frames per clip, spread evenly over the clip")
    val_crop: int = _key(0, "HR side of the validation crops (0 = whole frames)")
    val_crops_per_frame: int = _key(1, "with VAL_CROP: the most detailed crops taken per validation frame")
    holdout_frames: int = _key(0, "the last N frames of every trained clip are not trained on and join validation")
    holdout_fraction: float = _key(0.0, "or that fraction of every trained clip, rounded up (0.25: the last "
                                   "quarter); not with HOLDOUT_FRAMES")
    train_on_val_data: bool = _key(False, "also train on the VAL_DATA clips, all but their held-out end, which is "
                                   "then all that is validated of them (needs a hold-out)")
    # --- loss ---
    perceptual_weight: float = _key(0.1, "weight of the VGG19 perceptual term (0 = L1 only, skips VGG)")
    vgg_weights: str = _key("imagenet", "`imagenet` (from torchvision's cache or VGG_WEIGHTS_PATH; never "
                            "downloaded) or `random` (offline smoke tests only)")
    vgg_weights_path: str | None = _key(None, "a VGG19 weights file, used when torchvision's cache has none")
    # --- run ---
    output_dir: str = _key("runs/default", "where checkpoints and TensorBoard logs go")
    milestone_every: int = _key(25_000, "keep `step_XXXXXXX.pth` every N steps (0 = never)")
    max_bad_steps: int = _key(20, "consecutive NaN/Inf-loss steps before the run stops")
    ema_decay: float = _key(0.0, "validate and export an average of the weights, e.g. 0.999 (0 = off)")
    seed: int = _key(0, "model init and the whole data stream")
    device: str = _key("auto", "`auto` (CUDA if available), `cpu`, `cuda`, `cuda:N`")
    precision: str = _key("auto", "`auto` (fp16 autocast + GradScaler on CUDA, fp32 on CPU), `fp32`, `bf16` "
                          "(autocast, no scaler), `fp16`")
    num_workers: int = _key(2, "DataLoader worker processes")
    num_threads: int = _key(0, "torch CPU threads (0 = torch's default)")

    # ------------------------------------------------------------------------------------
    @property
    def learning_rate(self) -> float:
        return 10.0 ** self.lr_exponent

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.accumulation_steps

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name.upper() for f in fields(cls)]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        unknown = [k for k in data if not isinstance(k, str) or k.upper() != k or k.lower() not in _FIELD_TYPES]
        if unknown:
            key = unknown[0]
            hint = difflib.get_close_matches(str(key).upper(), cls.keys(), n=1)
            suggestion = f" (did you mean {hint[0]}?)" if hint else ""
            raise ConfigError(f"unknown config key {key!r}{suggestion}; allowed keys: {', '.join(cls.keys())}")
        values = {k.lower(): _coerce(k, v, _FIELD_TYPES[k.lower()]) for k, v in data.items()}
        config = cls(**values)
        config.validate()
        return config

    @classmethod
    def from_json(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a JSON object of KEY: value pairs")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return {k.upper(): (list(v) if isinstance(v, list) else v) for k, v in dataclasses.asdict(self).items()}

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=4) + "\n")
        os.replace(tmp, path)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A validated copy with some fields changed (lower-case or upper-case names)."""
        return TrainConfig.from_dict({**self.to_dict(), **{k.upper(): v for k, v in changes.items()}})

    def validate(self) -> None:
        positive = ("max_steps", "val_step_every", "save_step_every", "log_tboard_every", "accumulation_steps",
                    "batch_size", "patch_size", "num_patches", "val_max_frames", "val_crops_per_frame", "max_bad_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.upper()} must be >= 1, got {getattr(self, name)}")
        non_negative = ("weight_decay", "perceptual_weight", "max_frames_per_clip", "val_crop", "holdout_frames", "milestone_every",
                        "num_workers", "num_threads", "seed")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name.upper()} must be >= 0, got {getattr(self, name)}")
        if not -12 <= self.lr_exponent <= 0:
            raise ConfigError(f"LR_EXPONENT must be in [-12, 0] (learning rate 1e-12..1), got {self.lr_exponent}")
        if self.preset not in PRESETS:
            raise ConfigError(f"PRESET must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if self.vgg_weights not in VGG_WEIGHT_CHOICES:
            raise ConfigError(f"VGG_WEIGHTS must be one of {list(VGG_WEIGHT_CHOICES)}, got {self.vgg_weights!r}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"DEVICE must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"PRECISION must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.val_crop and self.val_crop % 3:
            raise ConfigError(f"VAL_CROP must be a multiple of 3 (or 0), got {self.val_crop}")
        self._validate_holdout_and_averaging()

    def _validate_holdout_and_averaging(self) -> None:
        for name in ("holdout_fraction", "ema_decay"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name.upper()} must be in [0, 1) (0 = off), got {getattr(self, name)}")
        if self.holdout_frames and self.holdout_fraction:
            raise ConfigError(f"give HOLDOUT_FRAMES ({self.holdout_frames}) or HOLDOUT_FRACTION "
                              f"({self.holdout_fraction}), not both")
        if self.train_on_val_data and not (self.holdout_frames or self.holdout_fraction):
            raise ConfigError("TRAIN_ON_VAL_DATA needs HOLDOUT_FRAMES or HOLDOUT_FRACTION > 0: without a held-out "
                              "range the VAL_DATA clips would be trained on whole")


_FIELD_TYPES = get_type_hints(TrainConfig)


def parse_value(text: str) -> Any:
    """A typed value from text (``--set KEY=VALUE``, the console's setup menu): JSON when it parses
    (numbers, true/false, lists), else the string. ``True``/``False`` are accepted in any case."""
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check one JSON value against its field type; ints are accepted where floats are."""
    text = str(annotation)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}")
    if "list[str]" in text:
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ConfigError(f"{key} must be a path or a list of paths, got {value!r}")
    if "str | None" in text:
        if value is None or isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string or null, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {annotation}")  # pragma: no cover
