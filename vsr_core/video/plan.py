"""How a video is cut into chunks, and the work folder that remembers finished ones.

A chunk is a range of output frames ``[start, stop)``. Its windows read 2 frames of
context on each side, so the chunk decodes ``[first, last)`` = ``[start - 2, stop + 2)``
(clipped to the clip) and reflects at the clip's real ends only: its frames are the same
as a whole-clip stream's. Chunk sizes are multiples of the Upscaler's batch size, so the
batches line up too (see ``Upscaler.stream``).

The work folder holds one encoded segment per finished chunk plus ``plan.json``, which
records what the segments were made from (input, model, settings). A run that finds
segments of the same plan continues from them; segments of another plan are never mixed
in or deleted: the run stops and says which setting differs.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from vsr_core.archs import CENTER

DEFAULT_CHUNK_FRAMES = 64  # ~3 s of video: the most frames one chunk gets by default
MIN_AUTO_CHUNK_FRAMES = 16  # below this the per-chunk costs (context frames, a new GOP) show
CHUNKS_PER_WORKER = 4  # default chunk size: a short clip is still cut into this many chunks per worker
PLAN_FILE = "plan.json"
SEGMENT_GLOB = "chunk_*"


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int  # first output frame (clip index)
    stop: int  # one past the last output frame
    first: int  # first frame decoded (context included)
    last: int  # one past the last frame decoded
    first_pts: int  # timestamp of frame ``first``: where the chunk's decoder seeks to

    @property
    def frames(self) -> int:
        return self.stop - self.start

    @property
    def segment_name(self) -> str:
        return f"chunk_{self.index:06d}"


def round_chunk_frames(chunk_frames: int, batch_size: int) -> int:
    """Chunk sizes must be multiples of the batch size (aligned batches): round up."""
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    return -(-chunk_frames // batch_size) * batch_size


def auto_chunk_frames(total: int, workers: int) -> int:
    """The default chunk size: ``DEFAULT_CHUNK_FRAMES``, smaller for a short clip on several
    workers, so that each worker gets a few chunks and they all finish at about the same
    time (5 chunks of 64 on 2 workers is 3 against 2: 1.2x the balanced time)."""
    share = -(-total // (CHUNKS_PER_WORKER * max(1, workers)))
    return max(MIN_AUTO_CHUNK_FRAMES, min(DEFAULT_CHUNK_FRAMES, share))


def plan_chunks(timestamps: list[int], chunk_frames: int, begin: int = 0, end: int | None = None) -> list[Chunk]:
    """Chunks of ``chunk_frames`` output frames over a clip whose frames have these pts: all of
    them, or the output frames ``[begin, end)`` (a preview: its windows still read the frames
    around it)."""
    total = len(timestamps)
    end = total if end is None else end
    chunks = []
    for index, start in enumerate(range(begin, end, chunk_frames)):
        stop = min(end, start + chunk_frames)
        first, last = max(0, start - CENTER), min(total, stop + CENTER)
        chunks.append(Chunk(index, start, stop, first, last, timestamps[first]))
    return chunks


def model_fingerprint(model: torch.nn.Module) -> str:
    """A digest of the weights: the same checkpoint gives the same segments."""
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class PlanMismatchError(RuntimeError):
    pass


class JobCancelled(Exception):
    pass


class WorkFolder:
    """``<folder>/plan.json`` + ``<folder>/chunk_NNNNNN.<ext>`` segments, written atomically."""

    def __init__(self, folder: str | os.PathLike, segment_suffix: str):
        self.folder = Path(folder)
        self.suffix = segment_suffix  # ".mp4", or "" for folders of PNG frames

    def segment_path(self, chunk: Chunk) -> Path:
        return self.folder / f"{chunk.segment_name}{self.suffix}"

    def has_segments(self) -> bool:
        return self.folder.is_dir() and any(self.folder.glob(SEGMENT_GLOB))

    def planned(self) -> dict:
        """The plan the folder's segments were made with ({} if none)."""
        return _read_json(self.folder / PLAN_FILE)

    def open(self, plan: dict, resume: bool) -> None:
        """Start (or, with ``resume``, continue) the work for ``plan``."""
        plan_file = self.folder / PLAN_FILE
        if self.has_segments() or plan_file.is_file():
            old = _read_json(plan_file)
            if not resume:
                raise PlanMismatchError(
                    f"{self.folder} holds unfinished work of an earlier run; continue it with --resume "
                    "(it is checked to be the same input, model and settings) or delete that folder")
            changed = sorted(k for k in set(plan) | set(old) if plan.get(k) != old.get(k))
            if changed:
                raise PlanMismatchError(f"cannot resume from {self.folder}: it was made with other "
                                        f"{', '.join(changed)}; delete that folder to start over")
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = plan_file.with_suffix(".partial")
        partial.write_text(json.dumps(plan, indent=1, sort_keys=True))
        os.replace(partial, plan_file)

    def is_done(self, chunk: Chunk) -> bool:
        return self.segment_path(chunk).exists()

    def partial_path(self, chunk: Chunk) -> Path:
        return self.folder / f"partial_{chunk.segment_name}{self.suffix}"

    def commit(self, chunk: Chunk) -> None:
        """The chunk's segment, written to ``partial_path``, is complete."""
        os.replace(self.partial_path(chunk), self.segment_path(chunk))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def plan_record(source: str, source_size: int, total: int, chunk_frames: int, model: str, options: dict) -> dict:
    """What ``plan.json`` records: everything the segments' pixels depend on."""
    return {"source": source, "source_size": source_size, "frames": total, "chunk_frames": chunk_frames,
            "model": model, **{f"option_{k}": v for k, v in sorted(options.items())}}
