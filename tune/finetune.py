"""The fine-tune phase as a sweep: ``tune/search.py --finetune-from <best/ or .pth>``.

Every trial starts from the given checkpoint's weights (a fresh optimizer, ``training_phase``
``finetune``); the first trial is the seed's recommended point (``FINETUNE_DEFAULTS``:
LR_EXPONENT -5, WEIGHT_DECAY 0.001) and the searched ranges lie around it.
"""
from __future__ import annotations

from typing import Any

from vsr_core.checkpoint import load_checkpoint, resolve_checkpoint_path
from vsr_core.config import FINETUNE_DEFAULTS

LR_RANGE = (1e-6, 1e-4)  # a decade either side of the seed's 1e-5
WD_RANGE = (1e-4, 1e-2)  # likewise around 0.001
# A fresh model: the best used to sit at the top of 1e-5..1e-3; at 1e-2 the small preset ends far below
# bicubic (-1.2 dB at step 200, against +0.5 dB at 1e-3), and below 1e-4 a demo-length trial learns little.
PRETRAIN_LR_RANGE = (1e-4, 3e-3)
PRETRAIN_WD_RANGE = (1e-4, 1e-1)
EXPERIMENT_NAME = "vsr_finetune"


def search_ranges(finetune: bool) -> tuple[tuple[float, float], tuple[float, float]]:
    """(LR range, WD range) searched by default in each phase."""
    return (LR_RANGE, WD_RANGE) if finetune else (PRETRAIN_LR_RANGE, PRETRAIN_WD_RANGE)


def finetune_base(values: dict[str, Any], checkpoint: str) -> tuple[dict[str, Any], str]:
    """The base config for a fine-tune sweep from ``checkpoint`` and the checkpoint file's absolute path
    (trials run in their own folders). The checkpoint's preset replaces the base config's (the weights
    only fit their own architecture); LR and WD start at the seed's fine-tune point."""
    path = resolve_checkpoint_path(checkpoint).resolve()
    saved = load_checkpoint(path)["config"]
    return {**values, "PRESET": saved.get("PRESET", values.get("PRESET")), **FINETUNE_DEFAULTS}, str(path)
