"""The plan of a video run: what to read, the chunks, the output, and the work folder that
remembers finished chunks. ``plan_video`` builds it from a ``VideoRequest`` and checks
everything it can before any frame is upscaled.

A chunk is a range of output frames ``[start, stop)``. Its windows read 2 frames of
context on each side, so the chunk decodes ``[first, last)`` = ``[start - 2, stop + 2)``
(clipped to the clip) and reflects at the clip's real ends only: its frames are the same
as a whole-clip stream's. Chunk sizes are multiples of the Upscaler's batch size, so the
batches line up too (see ``Upscaler.stream``). ``ChunkTask`` is one chunk's job: all a
chunk worker needs to know.

The work folder holds one encoded segment per finished chunk plus ``plan.json``, which
records what the segments were made from (input, model, settings). A run that finds
segments of the same plan continues from them; segments of another plan are never mixed
in or deleted: the run stops and says which setting differs.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vsr_core import storage
from vsr_core.archs import CENTER
from vsr_core.data.video_color import ColorTags
from vsr_core.data.video_encoder import EncoderSettings, PngSettings
from vsr_core.data.video_io import VIDEO_EXTENSIONS, VideoInfo, frame_timestamps, probe_video
from vsr_core.options import InferenceOptions
from vsr_core.video.mux import output_container

if TYPE_CHECKING:
    from vsr_core.video.executors import ChunkExecutor

DEFAULT_CHUNK_FRAMES = 64  # ~3 s of video: the most frames one chunk gets by default
MIN_AUTO_CHUNK_FRAMES = 16  # below this the per-chunk costs (context frames, a new GOP) show
CHUNKS_PER_WORKER = 4  # default chunk size: a short clip is still cut into this many chunks per worker
PLAN_FILE = "plan.json"
SEGMENT_GLOB = "chunk_*"
SEGMENT_SUFFIX = ".mp4"  # segments of a video output, whatever its container: mp4 stores the decoding times


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


@dataclass(frozen=True)
class ChunkTask:
    """One chunk's job: upscale ``chunk`` of ``source`` (a clip of ``clip_frames`` frames, where
    the windows reflect) into a segment with the input's timing and colour (``chunk.run_chunk``)."""

    source: str
    chunk: Chunk
    clip_frames: int
    frame_rate: Fraction
    time_base: Fraction
    segment_suffix: str  # ".mp4", or "" for a folder of PNG frames
    encoder: EncoderSettings | None  # resolved; None for PNG frames
    color: ColorTags
    png: PngSettings | None = None  # PNG frames: their compression (default ``PngSettings()``)


@dataclass(frozen=True)
class ModelIdentity:
    """What a run's pixels depend on besides the input: the weights and the inference options
    (in ``plan.json``, so that a resume never mixes in segments of another model or setting)."""

    fingerprint: str  # ``model_fingerprint``
    batch_size: int  # also what the chunks are aligned to
    tile: int
    tile_overlap: int
    precision: str  # as it runs in this process, or as each Ray worker is asked to resolve it
    backend: str

    @classmethod
    def of(cls, model: torch.nn.Module, options: InferenceOptions, precision: str, backend: str) -> ModelIdentity:
        return cls(model_fingerprint(model), options.batch_size, options.tile, options.tile_overlap, precision,
                   backend)

    def settings(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "tile": self.tile, "tile_overlap": self.tile_overlap,
                "precision": self.precision, "backend": self.backend}


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


# --- a run's plan --------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoRequest:
    """What a caller asks for: ``source`` (a video or frame folder; path or URI) upscaled into
    ``output`` (.mp4/.mkv/... or a folder for PNG frames; path or URI)."""

    source: str
    output: str
    max_frames: int | None = None  # only the first N frames (and their audio)
    chunk_frames: int | None = None  # default: ``auto_chunk_frames`` (a resume: the interrupted run's)
    work_folder: str | os.PathLike | None = None  # default OUTPUT.parts (a temporary folder for a URI output)
    resume: bool = False  # continue from the finished chunks of the same plan
    encoder: EncoderSettings | None = None  # codec, CRF, preset, pixel format (defaults in ``video_encoder``)
    preview: tuple[float, float] | None = None  # (START, DURATION) seconds: only that stretch, and a projection
    png: PngSettings | None = None  # a frame-folder output's PNG compression (the pixels are the same at any level)

    def __post_init__(self):
        object.__setattr__(self, "source", str(self.source))
        object.__setattr__(self, "output", str(self.output))


@dataclass(frozen=True)
class VideoPlan:
    """What a run does, decided and checked before any frame is upscaled."""

    request: VideoRequest
    info: VideoInfo  # the input's stream: size, timing, colour
    input_timestamps: list[int]  # every input frame's pts
    first: int  # the frames [first, stop) are upscaled
    stop: int
    # The frames the windows see, from frame 0 (where they reflect at the end): a preview's windows
    # read the frames around it, so the whole input; a --max-frames run is a clip of its own.
    clip_frames: int
    output: str  # where the result goes (an .mkv when an .mp4 cannot hold the input's streams)
    encoder: EncoderSettings | None  # resolved; None: a folder of PNG frames
    chunks: list[Chunk]
    todo: list[Chunk]  # the chunks no earlier run finished
    work: WorkFolder

    @property
    def timestamps(self) -> list[int]:
        """The pts of the frames upscaled."""
        return self.input_timestamps[self.first : self.stop]

    @property
    def total(self) -> int:
        return self.stop - self.first

    @property
    def resumed_frames(self) -> int:
        return self.total - sum(chunk.frames for chunk in self.todo)

    @property
    def source_is_video(self) -> bool:
        return not Path(self.request.source).is_dir()

    def time_range(self) -> tuple[float | None, float | None]:
        """Seconds of the input kept (audio, subtitles, chapters); None: from the start / to the end."""
        base, timestamps = self.info.time_base, self.input_timestamps
        start = float(timestamps[self.first] * base) if self.first > 0 else None
        end = float(timestamps[self.stop] * base) if self.stop < len(timestamps) else None
        return start, end

    def task(self, chunk: Chunk) -> ChunkTask:
        return ChunkTask(self.request.source, chunk, self.clip_frames, self.info.frame_rate, self.info.time_base,
                         self.work.suffix, self.encoder, self.info.color, None if self.encoder else self.png)

    @property
    def png(self) -> PngSettings:
        return self.request.png or PngSettings()

    def describe_output(self) -> str:
        """The encoder settings (a video) or the PNG compression (frames) of the output."""
        return self.encoder.describe() if self.encoder else self.png.describe()


def select_frames(timestamps: list[int], time_base, max_frames: int | None,
                  preview: tuple[float, float] | None) -> tuple[int, int]:
    """The frames ``[a, b)`` to upscale: the first ``max_frames``, or those of a preview
    (START, DURATION in seconds from the first frame)."""
    if preview is None:
        return 0, len(timestamps) if max_frames is None else min(max_frames, len(timestamps))
    start, duration = preview
    if start < 0 or duration <= 0:
        raise ValueError(f"preview: START must be >= 0 and DURATION > 0 seconds, got {start} {duration}")
    seconds = [float((t - timestamps[0]) * time_base) for t in timestamps]
    a = next((i for i, t in enumerate(seconds) if t >= start), None)
    if a is None:
        raise ValueError(f"preview: START {start} s is after the end of the video ({seconds[-1]:.2f} s)")
    b = next((i for i, t in enumerate(seconds) if t >= start + duration), len(seconds))
    return a, max(b, a + 1)


def default_work_folder(output: str | os.PathLike) -> Path | None:
    """``OUTPUT.parts`` next to a local output; None (a temporary folder) for a URI output."""
    return None if storage.is_uri(output) else Path(f"{output}.parts")


def plan_video(request: VideoRequest, runner: ChunkExecutor) -> VideoPlan:
    """The plan of ``request`` run by ``runner``, checked before any work: the frames to read,
    the output (kind, container, encoder settings: a bad choice fails now, not after hours),
    the chunks, and the work folder, which this opens: a resume continues from its finished
    chunks, a folder of another plan or without ``resume`` is refused (``PlanMismatchError``)."""
    source = request.source
    info = probe_video(source)
    timestamps = frame_timestamps(source)
    first, stop = select_frames(timestamps, info.time_base, request.max_frames, request.preview)
    encoder = None
    is_video = Path(request.output).suffix.lower() in VIDEO_EXTENSIONS
    if is_video:
        encoder = (request.encoder or EncoderSettings()).resolve(info.color, 3 * info.width, 3 * info.height)
    output = output_container(source if is_video and not Path(source).is_dir() else None, request.output)
    work = WorkFolder(_work_folder(request), SEGMENT_SUFFIX if is_video else "")
    identity = runner.identity()
    chunk_frames = _chunk_frames(request, work, stop - first, runner, identity.batch_size)
    clip_frames = len(timestamps) if request.preview is not None else stop
    chunks = plan_chunks(timestamps[:clip_frames], chunk_frames, first, stop)
    plan = VideoPlan(request, info, timestamps, first, stop, clip_frames, output, encoder, chunks, chunks, work)
    work.open(_record(plan, chunk_frames, identity), request.resume)
    return replace(plan, todo=[chunk for chunk in chunks if not work.is_done(chunk)])


def _work_folder(request: VideoRequest) -> Path:
    """The request's work folder, else OUTPUT.parts, named after the output asked for (what a
    Ctrl-C message and --resume use), else (a URI output) a new temporary folder."""
    folder = request.work_folder or default_work_folder(request.output)
    return Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="vsr-work-"))


def _chunk_frames(request: VideoRequest, work: WorkFolder, total: int, runner: ChunkExecutor,
                  batch_size: int) -> int:
    chunk_frames = request.chunk_frames
    if chunk_frames is None:  # a resumed run keeps its chunks; a new one sizes them for its workers
        chunk_frames = work.planned().get("chunk_frames") if request.resume else None
        chunk_frames = chunk_frames or auto_chunk_frames(total, runner.parallel_chunks())
    return round_chunk_frames(chunk_frames, batch_size)


def _record(plan: VideoPlan, chunk_frames: int, identity: ModelIdentity) -> dict:
    request, encoder = plan.request, plan.encoder
    options = {**identity.settings(), "max_frames": request.max_frames,
               "preview": list(request.preview) if request.preview else None,
               "output_kind": Path(plan.output).suffix.lower() if encoder else "frames",
               "encoder": encoder.as_dict() if encoder else None, "color": plan.info.color.as_dict()}
    size = storage.size(request.source) if plan.source_is_video else 0
    return plan_record(request.source, size, plan.total, chunk_frames, identity.fingerprint, options)
