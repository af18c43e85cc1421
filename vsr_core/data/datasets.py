"""Training and validation data: 5-frame windows cut from videos.

Training samples are a pure function of (seed, sample index g): sample g belongs to
epoch g // NUM_PATCHES, which visits the NUM_PATCHES fixed patches in an order
shuffled per epoch; its augmentation is drawn from (seed, g). So a run resumed at
optimizer step s simply continues at g = s * ACCUMULATION_STEPS * BATCH_SIZE and
sees exactly the data an uninterrupted run would have seen.

Decoded clips are cached as ``.npy`` files and memory-mapped, so DataLoader workers
share one copy through the page cache and big datasets need not fit in RAM: a clip is
decoded frame by frame straight into its cache file (never whole in memory), once, even
when parallel trials start together (a file lock), and appears under its final name only
when complete (an atomic rename).

Which frames are trained on and which are held out for validation is decided in one place,
``trained_clips``: the end of every trained clip (HOLDOUT_FRAMES or HOLDOUT_FRACTION) is cut off
for validation, and with TRAIN_ON_VAL_DATA the VAL_DATA clips are trained on that way too.
"""
from __future__ import annotations

import fcntl
import hashlib
import math
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vsr_core.archs import CENTER, SCALE
from vsr_core.config import TrainConfig
from vsr_core.data.degradation import bicubic_downsample
from vsr_core.data.samples import DEFAULT_TRAIN_CLIP, DEFAULT_VAL_CLIP, sample_clip
from vsr_core.data.video_io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, VideoReadError, iter_frames
from vsr_core.frames import cache_root, window_indices


def frame_cache_dir() -> Path:
    return cache_root() / "frames"


def expand_sources(paths: Sequence[str], default_sample: str) -> list[Path]:
    """Paths as given in the config -> clip sources (video files or frame folders).
    A folder holding videos stands for each of them; an empty list means the sample clip."""
    if not paths:
        return [sample_clip(default_sample)]
    sources: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise VideoReadError(f"data path does not exist: {path}")
        if path.is_dir():
            videos = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
            has_frames = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir())
            if videos:
                sources.extend(videos)
            elif has_frames:
                sources.append(path)
            else:
                raise VideoReadError(f"data folder {path} holds no videos ({', '.join(VIDEO_EXTENSIONS)}) or frames")
        else:
            sources.append(path)
    return sources


NPY_HEADER_BYTES = 128  # reserved at the start of a cache file; written once the frame count is known


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """A version 1.0 ``.npy`` header for C-ordered uint8 data of ``shape``, exactly NPY_HEADER_BYTES long."""
    text = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {shape!r}, }}"
    body = text.ljust(NPY_HEADER_BYTES - 11) + "\n"  # 10 bytes of magic, version and length before it
    if len(body) != NPY_HEADER_BYTES - 10:
        raise ValueError(f"frame shape {shape} does not fit the .npy header")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")


def _decode_to_cache(path: Path, max_frames: int, cache: Path) -> None:
    """Stream the frames into a temp file, then write the header (now that the count is known) and
    rename: a reader sees either no cache or a complete one. Memory: one frame at a time."""
    for stale in cache.parent.glob(f".{cache.name}.*.tmp"):  # of a killed decoder; we hold the lock
        stale.unlink(missing_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(bytes(NPY_HEADER_BYTES))
            count, shape = 0, None
            for frame in iter_frames(path, max_frames or None):
                if shape is None:
                    shape = frame.shape
                elif frame.shape != shape:
                    raise VideoReadError(f"{path}: frame {count} is {frame.shape}, the first one {shape}")
                f.write(np.ascontiguousarray(frame, dtype=np.uint8).data)
                count += 1
            if shape is None:
                raise VideoReadError(f"{path} holds no frames")
            f.seek(0)
            f.write(_npy_header((count, *shape)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, cache)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_clip(path: Path, max_frames: int = 0) -> np.ndarray:
    """Decode a clip once into a cached .npy and return it memory-mapped, [T,H,W,3] uint8."""
    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{max_frames}".encode()).hexdigest()[:16]
    cache = frame_cache_dir() / f"{path.stem}-{key}.npy"
    if not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        with open(cache.with_name(f".{cache.name}.lock"), "wb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # parallel trials: one decodes, the others wait and then read it
            if not cache.exists():
                _decode_to_cache(path, max_frames, cache)
    return np.load(cache, mmap_mode="r")


@dataclass(frozen=True)
class Augmentation:
    hflip: bool
    vflip: bool
    rot90: int  # number of 90-degree turns, 0..3

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "Augmentation":
        return cls(bool(rng.random() < 0.5), bool(rng.random() < 0.5), int(rng.integers(0, 4)))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The same geometric transform on every frame of [...,H,W]."""
        if self.hflip:
            x = x.flip(-1)
        if self.vflip:
            x = x.flip(-2)
        if self.rot90:
            x = torch.rot90(x, self.rot90, dims=(-2, -1))
        return x


class WindowPatchDataset(Dataset):
    """Sample g -> (LR window [5,3,p,p], GT center frame [3,3p,3p]), floats in [0,1]."""

    def __init__(self, clips: Sequence[np.ndarray], patch_size: int, num_patches: int, seed: int, augment: bool = True):
        hr = patch_size * SCALE
        for i, clip in enumerate(clips):
            if clip.shape[1] < hr or clip.shape[2] < hr:
                raise ValueError(f"clip {i} ({clip.shape[2]}x{clip.shape[1]}) is smaller than the HR patch {hr}x{hr}; "
                                 "lower PATCH_SIZE")
        self.clips = list(clips)
        self.patch_size = patch_size
        self.num_patches = num_patches
        self.seed = seed
        self.augment = augment
        frames = np.array([len(c) for c in self.clips], dtype=np.float64)
        self._clip_weights = frames / frames.sum()  # every frame equally likely
        self._order_epoch, self._order = -1, np.arange(0)

    def __len__(self) -> int:
        return self.num_patches  # one epoch; the sampler keeps counting past it

    def patch_location(self, patch_id: int) -> tuple[int, int, int, int]:
        """(clip, center frame, top, left) of a fixed patch."""
        rng = np.random.default_rng([self.seed, 0, patch_id])
        clip_index = int(rng.choice(len(self.clips), p=self._clip_weights))
        clip = self.clips[clip_index]
        hr = self.patch_size * SCALE
        return (
            clip_index,
            int(rng.integers(0, len(clip))),
            int(rng.integers(0, clip.shape[1] - hr + 1)),
            int(rng.integers(0, clip.shape[2] - hr + 1)),
        )

    def _patch_for_sample(self, g: int) -> int:
        epoch, position = divmod(g, self.num_patches)
        if epoch != self._order_epoch:
            self._order = np.random.default_rng([self.seed, 1, epoch]).permutation(self.num_patches)
            self._order_epoch = epoch
        return int(self._order[position])

    def __getitem__(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        clip_index, center, top, left = self.patch_location(self._patch_for_sample(g))
        clip = self.clips[clip_index]
        hr = self.patch_size * SCALE
        indices = window_indices(center, len(clip))
        window = np.stack([clip[i, top : top + hr, left : left + hr] for i in indices])
        hr_window = torch.from_numpy(window).permute(0, 3, 1, 2).float().div_(255)  # [5,3,3p,3p]
        if self.augment:
            hr_window = Augmentation.draw(np.random.default_rng([self.seed, 2, g])).apply(hr_window)
        return bicubic_downsample(hr_window), hr_window[CENTER].contiguous()


class ContinuingSampler(Sampler[int]):
    """Yields sample indices start, start+1, ... without end (training runs by steps, not epochs).

    Data-parallel training (``workers`` > 1): the stream is cut into global micro-batches of
    ``workers * batch_size`` samples and worker ``rank`` takes its own ``batch_size`` slice of each,
    so the workers together see exactly the samples one process with ``workers * batch_size``
    windows per micro-batch would, in the same steps. ``start`` counts samples of all workers."""

    def __init__(self, start: int = 0, batch_size: int = 1, rank: int = 0, workers: int = 1):
        if not 0 <= rank < workers:
            raise ValueError(f"rank must be in [0, {workers}), got {rank}")
        self.start, self.batch_size, self.rank, self.workers = start, batch_size, rank, workers

    def __iter__(self) -> Iterator[int]:
        if self.workers == 1:
            g = self.start
            while True:
                yield g
                g += 1
        stride = self.workers * self.batch_size
        g = self.start + self.rank * self.batch_size
        while True:
            yield from range(g, g + self.batch_size)
            g += stride


def training_loader(config: TrainConfig, start: int, pin_memory: bool = False, rank: int = 0,
                    workers: int = 1) -> DataLoader:
    """The endless training DataLoader from global sample ``start`` on (``rank``'s share when ``workers`` > 1)."""
    dataset = WindowPatchDataset(training_clips(config), config.patch_size, config.num_patches, config.seed)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=ContinuingSampler(start, config.batch_size, rank, workers),
        num_workers=config.num_workers,  # one endless iterator per fit: no persistent_workers needed
        prefetch_factor=4 if config.num_workers > 0 else None,
        pin_memory=pin_memory,
    )


def training_sources(paths: Sequence[str]) -> list[Path]:
    return expand_sources(paths, DEFAULT_TRAIN_CLIP)


def validation_sources(paths: Sequence[str]) -> list[Path]:
    return expand_sources(paths, DEFAULT_VAL_CLIP)


# --- which frames are trained on, which held out ------------------------------------------------
@dataclass(frozen=True)
class TrainedClip:
    """A clip the run trains on: frames ``[0, held_out_from)`` are training frames, the rest (the
    clip's end, possibly nothing) are held out for validation. Training windows reflect inside the
    training frames and validation windows inside the held-out ones, so neither reads the other's."""
    source: Path
    frames: np.ndarray  # [T,H,W,3] uint8, memory-mapped
    held_out_from: int


def held_out_length(config: TrainConfig, num_frames: int) -> int:
    """How many frames at the end of a trained clip of ``num_frames`` are held out: HOLDOUT_FRAMES, or
    HOLDOUT_FRACTION of the clip rounded up (rounded first to 1e-6: 0.1 x 250 is 25, not 26)."""
    if config.holdout_fraction:
        return math.ceil(round(config.holdout_fraction * num_frames, 6))
    return config.holdout_frames


def trained_sources(config: TrainConfig) -> list[Path]:
    """TRAIN_DATA's clips, then VAL_DATA's with TRAIN_ON_VAL_DATA. A clip in both lists is refused: it
    would be validated whole on frames it was trained on (or, with TRAIN_ON_VAL_DATA, trained twice)."""
    train, val = training_sources(config.train_data), validation_sources(config.val_data)
    trained = {p.resolve() for p in train}
    for source in val:
        if source.resolve() in trained:
            raise ValueError(f"{source} is in both TRAIN_DATA and VAL_DATA: a clip is either trained on or "
                             "validated on; to train on all but its held-out end, list it in one of them with "
                             "HOLDOUT_FRAMES or HOLDOUT_FRACTION (and TRAIN_ON_VAL_DATA for VAL_DATA)")
    return train + val if config.train_on_val_data else train


def trained_clips(config: TrainConfig) -> list[TrainedClip]:
    """Every trained clip and where its held-out end begins; a clip left with fewer training frames
    than one window needs is an error naming the key."""
    clips = []
    for source in trained_sources(config):
        frames = load_clip(source, config.max_frames_per_clip)
        held_out = held_out_length(config, len(frames))
        if held_out and len(frames) - held_out < CENTER + 1:
            key = (f"HOLDOUT_FRACTION {config.holdout_fraction} ({held_out} frames)" if config.holdout_fraction
                   else f"HOLDOUT_FRAMES {held_out}")
            raise ValueError(f"{key} leaves fewer than {CENTER + 1} training frames of {source.name} "
                             f"({len(frames)} frames); hold out fewer")
        clips.append(TrainedClip(source, frames, len(frames) - held_out))
    return clips


def training_clips(config: TrainConfig) -> list[np.ndarray]:
    """The frames trained on: each trained clip without its held-out end (kept for validation, see
    ``validation_set.validation_clips``)."""
    return [clip.frames[: clip.held_out_from] for clip in trained_clips(config)]
