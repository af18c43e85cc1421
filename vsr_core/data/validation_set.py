"""The frames a model is validated on: windows chosen to tell models apart.

Why not the first frames of the validation clip, whole: on smooth footage (the sample
``bikes.mp4`` is mostly flat road) bicubic already reaches 41-42 dB and every model lands
within a few tenths of a dB of it, so the ranking of checkpoints is mostly noise. Here:

* **Spread in time.** ``VAL_MAX_FRAMES`` center frames per clip, evenly spaced over the
  whole clip (its first ``VAL_SCAN_FRAMES`` for a long one), each with its real 5-frame window.
* **Detailed crops** (``VAL_CROP`` > 0). In each of those frames the ``VAL_CROPS_PER_FRAME``
  non-overlapping ``VAL_CROP`` x ``VAL_CROP`` HR crops where bicubic misses the most (largest
  mean |HR - bicubic(LR)| on the Y channel): that is where super-resolution can gain, and
  where better models differ. Chosen from the HR frame and the fixed degradation only, so
  they are the same for every model.
* **A held-out time range of the trained clips** (``HOLDOUT_FRAMES`` or ``HOLDOUT_FRACTION``
  > 0): the last frames of every trained clip are kept out of training (``trained_clips``) and
  validated on, so the signal also covers the kind of footage the model trains on. With
  ``TRAIN_ON_VAL_DATA`` the validation clips are trained on too, all but their held-out end,
  which is then all that is validated of them.

Every item is a (LR window, HR center) pair; the validator scores them all and reports the
mean gain over bicubic on the same items.

Apart from them, and never in the gain: a **temporal run** per validation clip (not the held-out
ranges), ``TEMPORAL_FRAMES`` consecutive frames of one detailed crop, for tOF and flicker
(``metrics.temporal``): how the output changes from frame to frame, which no single item shows.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vsr_core.archs import CENTER, SCALE
from vsr_core.config import TrainConfig
from vsr_core.data.datasets import load_clip, trained_clips, validation_sources
from vsr_core.data.degradation import bicubic_downsample, bicubic_upsample, crop_to_scale
from vsr_core.frames import to_tensor, to_uint8, window_indices
from vsr_core.metrics import rgb_to_y

HOLDOUT_GAP = CENTER  # the first held-out frames only serve as window context: no GT center next to training
VAL_SCAN_FRAMES = 600  # validation frames are spread over at most this many first frames of a validation clip
# (a clip is decoded into the frame cache whole: a long video would fill the disk for 8 frames)
TEMPORAL_FRAMES = 4  # consecutive frames per validation clip for tOF and flicker (3 frame pairs)


@dataclass(frozen=True)
class ValidationItem:
    clip: str  # display name of the source (a held-out range is marked)
    frame: int  # index of the center frame in its clip
    top: int  # HR crop origin (0, 0 for whole frames)
    left: int
    lr_window: np.ndarray  # [5,h,w,3] uint8: the degraded window the model sees
    hr: np.ndarray  # [3h,3w,3] uint8: the ground-truth center


def spread_indices(count: int, first: int, last: int) -> list[int]:
    """``count`` distinct frame indices evenly spaced over ``first..last`` (inclusive); fewer when
    the range is shorter. The midpoints of equal parts, so neither end is favoured."""
    if last < first or count < 1:
        return []
    span = last - first + 1
    count = min(count, span)
    return [first + int((2 * i + 1) * span // (2 * count)) for i in range(count)]


def bicubic_miss(hr: np.ndarray) -> np.ndarray:
    """|Y(HR) - Y(bicubic(LR))| per HR pixel for one uint8 frame (size a multiple of 3): where plain
    interpolation loses detail after the fixed degradation."""
    hr_t = to_tensor(hr)[None]
    restored = to_uint8(bicubic_upsample(bicubic_downsample(hr_t)))[0]
    return np.abs(rgb_to_y(hr.astype(np.float64)) - rgb_to_y(restored.astype(np.float64)))


def detailed_crops(hr: np.ndarray, size: int, count: int) -> list[tuple[int, int]]:
    """(top, left) of the ``count`` cells of a ``size`` grid (non-overlapping, centered in the frame)
    with the largest mean bicubic miss, most detailed first; the whole frame's center crop when the
    frame is smaller than one cell."""
    h, w = hr.shape[:2]
    if size >= h or size >= w:
        return [(max(0, (h - size) // 2 // SCALE * SCALE), max(0, (w - size) // 2 // SCALE * SCALE))]
    miss = bicubic_miss(hr)
    rows, cols = h // size, w // size
    top0, left0 = (h - rows * size) // 2 // SCALE * SCALE, (w - cols * size) // 2 // SCALE * SCALE
    grid = miss[top0 : top0 + rows * size, left0 : left0 + cols * size].reshape(rows, size, cols, size).mean(axis=(1, 3))
    order = np.argsort(-grid, axis=None, kind="stable")[:count]
    return [(top0 + int(i) // cols * size, left0 + int(i) % cols * size) for i in order]


def _boxes(hr_center: np.ndarray, crop: int, count: int) -> list[tuple[int, int]]:
    return detailed_crops(hr_center, crop, count) if crop else [(0, 0)]


def _items_at(clip: np.ndarray, name: str, center: int, first: int, crop: int,
              boxes: Sequence[tuple[int, int]]) -> list[ValidationItem]:
    """One item per (top, left) box around ``center``; the window reflects inside ``first..T-1``."""
    indices = window_indices(center - first, len(clip) - first)
    frames = np.stack([crop_to_scale(np.asarray(clip[first + i])) for i in indices])
    h, w = (crop, crop) if crop else frames.shape[1:3]
    items = []
    for top, left in boxes:
        hr_window = frames[:, top : top + h, left : left + w]
        lr_window = to_uint8(bicubic_downsample(to_tensor(hr_window)))
        items.append(ValidationItem(name, center, top, left, lr_window, hr_window[CENTER].copy()))
    return items


def clip_items(clip: np.ndarray, name: str, centers: Sequence[int], first: int, crop: int,
               crops_per_frame: int) -> list[ValidationItem]:
    """Items for ``centers`` of ``clip`` [T,H,W,3]; windows reflect inside ``first..T-1`` (a held-out
    range never reaches into the frames before it)."""
    items = []
    for center in centers:
        hr_center = crop_to_scale(np.array(clip[center]))  # a copy: the clip is a read-only memmap
        items += _items_at(clip, name, center, first, crop, _boxes(hr_center, crop, crops_per_frame))
    return items


def temporal_run(clip: np.ndarray, name: str, crop: int, frames: int = TEMPORAL_FRAMES) -> list[ValidationItem]:
    """``frames`` consecutive items (fewer for a shorter clip; none for a single frame) from the middle
    of ``clip``, all of one box: the most detailed ``crop`` of the first of them (the whole frame
    for ``crop`` 0), each with its own 5-frame window."""
    count = min(frames, len(clip))
    if count < 2:
        return []
    start = (len(clip) - count) // 2
    box = _boxes(crop_to_scale(np.array(clip[start])), crop, 1)
    return [item for t in range(start, start + count) for item in _items_at(clip, name, t, 0, crop, box)]


def holdout_name(source: Path) -> str:
    return f"{source.name} (held out)"


def validation_clips(config: TrainConfig) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray, int]]]:
    """The clips validated whole, as (name, frames), and the held-out ends of the trained clips, as
    (name, the whole clip, its first held-out frame): the arguments of ``build_validation_set``."""
    whole = [] if config.train_on_val_data else [(s.name, load_clip(s, VAL_SCAN_FRAMES))
                                                 for s in validation_sources(config.val_data)]
    held_out = [(holdout_name(clip.source), clip.frames, clip.held_out_from) for clip in trained_clips(config)
                if clip.held_out_from < len(clip.frames)]
    return whole, held_out


def build_validation_set(val_clips: Sequence[tuple[str, np.ndarray]],
                         held_out_clips: Sequence[tuple[str, np.ndarray, int]], frames_per_clip: int,
                         crop: int = 0, crops_per_frame: int = 1) -> list[ValidationItem]:
    """The validation items: ``frames_per_clip`` centers spread over each validation clip (name, [T,H,W,3]
    uint8), and as many spread over the held-out end of each trained clip (name, the whole clip, its
    first held-out frame; those frames are not trained on)."""
    items: list[ValidationItem] = []
    for name, clip in val_clips:
        items += clip_items(clip, name, spread_indices(frames_per_clip, 0, len(clip) - 1), 0, crop, crops_per_frame)
    for name, clip, first in held_out_clips:
        if not 0 <= first < len(clip):
            raise ValueError(f"{name}: the held-out range must start inside the clip (0..{len(clip) - 1}), got {first}")
        gap = min(HOLDOUT_GAP, len(clip) - first - 1)
        items += clip_items(clip, name, spread_indices(frames_per_clip, first + gap, len(clip) - 1), first, crop,
                            crops_per_frame)
    if not items:
        raise ValueError("the validation set is empty: give VAL_DATA clips, or HOLDOUT_FRAMES or HOLDOUT_FRACTION > 0")
    return items


def temporal_runs(val_clips: Sequence[tuple[str, np.ndarray]], crop: int = 0) -> list[list[ValidationItem]]:
    """One ``temporal_run`` per validation clip (name, [T,H,W,3] uint8) that has two frames or more."""
    return [run for name, clip in val_clips if (run := temporal_run(clip, name, crop))]


def stack_windows(items: Sequence[ValidationItem]) -> torch.Tensor:
    """[N,5,3,h,w] float windows of same-sized items."""
    return to_tensor(np.stack([item.lr_window for item in items]))
