"""Many videos with one command (``vsr upscale DIR OUT_DIR``, ``vsr upscale a.mp4 b.mkv OUT_DIR``):
which inputs make a batch, where each one's output goes, which are finished, and the run over
them, each file through ``pipeline.upscale_file``. A file that fails is recorded with its reason
and the others go on. Nothing here prints: a ``BatchObserver`` is told what happens.

What the inputs are (the rule; README, "Upscale videos of any length"):

- several inputs: a batch; each must be a video file (``VIDEO_EXTENSIONS``, a path or a URI);
- one input that is a video file or a URI: one clip, as before;
- one input that is a folder: its files decide, not its name. Image files only (``IMAGE_EXTENSIONS``)
  make it a frame folder: one clip, as before. Video files only make it a batch of those videos
  (sorted by name; subfolders, hidden files and other files are not read). Both kinds, or
  neither, is refused, naming what it holds.

A batch writes ``OUT_DIR/NAME``, the input's name and extension (an .mkv when an .mp4 cannot
hold the input's streams, as for one clip), and keeps each file's finished chunks in its own
``OUT_DIR/NAME.parts`` until that output is complete. A finished output is one that exists
(the pipeline moves it in place only once it is complete and checked). Without ``resume`` an
OUT_DIR that holds outputs or unfinished work is refused; with it, finished files are skipped
(not checked against the model or settings) and an interrupted one continues from its chunks.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from vsr_core import storage
from vsr_core.data.video_io import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, VideoReadError
from vsr_core.video.mux import output_container
from vsr_core.video.pipeline import UpscaleResult, upscale_file
from vsr_core.video.plan import default_work_folder

if TYPE_CHECKING:
    from vsr_core.inference import Upscaler
    from vsr_core.video.executors import ChunkExecutor, Progress

logger = logging.getLogger(__name__)

TODO, PARTIAL, FINISHED = "todo", "partial", "finished"  # a file's state before the run
DONE, SKIPPED, FAILED = "done", "skipped", "failed"  # its outcome
# The per-run requests a batch refuses (one work folder or one preview window cannot serve many files).
NOT_FOR_A_BATCH = {
    "work_folder": "work_folder (--work-folder): a batch keeps each file's finished chunks in OUT_DIR/NAME.parts",
    "preview": "preview (--preview): preview one video at a time",
}


@dataclass(frozen=True)
class BatchItem:
    source: str
    requested: str  # OUT_DIR/NAME: the output asked for, which names the work folder
    output: str  # where the output goes: ``requested``, or its .mkv (``mux.output_container``)
    state: str  # TODO, PARTIAL (an interrupted run's work folder) or FINISHED (the output exists)

    @property
    def name(self) -> str:
        return Path(self.source).name

    @property
    def work_folder(self) -> Path:
        return default_work_folder(self.requested)


@dataclass(frozen=True)
class Batch:
    out_dir: Path
    items: tuple[BatchItem, ...]
    resume: bool = False
    request: dict[str, Any] = field(default_factory=dict)  # the other ``VideoRequest`` fields, the same for all


@dataclass(frozen=True)
class FileOutcome:
    item: BatchItem
    status: str  # DONE, SKIPPED (finished by an earlier run) or FAILED
    result: UpscaleResult | None = None
    reason: str = ""  # why it failed, one line


class BatchObserver(Protocol):
    def file_started(self, item: BatchItem) -> None: ...

    def file_progress(self, progress: Progress) -> None: ...

    def file_finished(self, outcome: FileOutcome) -> None: ...


# --- which inputs ---------------------------------------------------------------------------------
def _is_video_name(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def videos_of_folder(folder: Path) -> list[Path] | None:
    """The videos of a folder of videos (sorted by name), or None for a folder of frames; a folder
    with both kinds or neither is refused (the rule in this module's docstring)."""
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    videos = sorted((p for p in files if _is_video_name(p)), key=lambda p: p.name)
    frames = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    if videos and frames:
        raise ValueError(f"{folder} holds both frames ({len(frames)} {'/'.join(IMAGE_EXTENSIONS)} files) and "
                         f"videos ({len(videos)}); a folder is either one clip of frames or a batch of videos: "
                         "move one kind out")
    if not videos and not frames:
        raise ValueError(f"{folder} holds no frames ({'/'.join(IMAGE_EXTENSIONS)} files) and no videos "
                         f"({', '.join(VIDEO_EXTENSIONS)})")
    return videos or None


def batch_sources(inputs: Sequence[str]) -> list[str] | None:
    """The videos of a batch, or None when ``inputs`` are one clip (a video, or a frame folder)."""
    if not inputs:
        raise ValueError("no input given")
    if len(inputs) == 1:
        single = inputs[0]
        if storage.is_uri(single) or not Path(single).is_dir():
            return None
        videos = videos_of_folder(Path(single))
        return None if videos is None else [str(p) for p in videos]
    for source in inputs:
        _check_batch_input(source)
    return list(inputs)


def _check_batch_input(source: str) -> None:
    if not storage.is_uri(source):
        path = Path(source)
        if path.is_dir():
            raise ValueError(f"{source} is a folder; several inputs must be video files (a folder of videos or "
                             "of frames is given on its own: vsr upscale FOLDER OUTPUT)")
        if not path.is_file():
            raise ValueError(f"input not found: {source}")
    if not _is_video_name(source):
        raise ValueError(f"{source}: not a video file; several inputs must be {', '.join(VIDEO_EXTENSIONS)} files")


# --- which outputs, what is done ------------------------------------------------------------------
def plan_batch(inputs: Sequence[str], out_dir: str | os.PathLike, *, resume: bool = False,
               **request: Any) -> Batch | None:
    """The batch of ``inputs`` into ``out_dir`` (None: the inputs are one clip, not a batch),
    checked before any work: the output folder, one output per input, and what an earlier run
    finished. ``request``: the other ``VideoRequest`` fields, the same for every file."""
    sources = batch_sources(inputs)
    if sources is None:
        return None
    for key, why in NOT_FOR_A_BATCH.items():
        if request.get(key) is not None:
            raise ValueError(f"{why}; it is not for a batch")
    folder = _check_out_dir(out_dir, len(sources))
    items = tuple(_item(source, folder) for source in sources)
    _check_outputs(items)
    if not resume:
        _refuse_earlier_work(folder, items)
    return Batch(folder, items, resume, request)


def _check_out_dir(out_dir: str | os.PathLike, count: int) -> Path:
    if storage.is_uri(out_dir):
        raise ValueError(f"OUT_DIR must be a local folder for a batch (each file's finished chunks are kept next to "
                         f"its output), got {out_dir}")
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"OUT_DIR {folder} is a file; {count} inputs are written into a folder, one output each")
    if not folder.exists() and _is_video_name(folder):
        raise ValueError(f"OUT_DIR {folder} is named like a video file; {count} inputs are written into a folder, "
                         "one output each")
    return folder


def _item(source: str, folder: Path) -> BatchItem:
    requested = str(folder / Path(source).name)
    try:
        output = output_container(source, requested)
    except VideoReadError:  # unreadable: its own run says why, among the others' results
        output = requested
    if Path(output).is_file():
        state = FINISHED
    elif default_work_folder(requested).exists():
        state = PARTIAL
    else:
        state = TODO
    return BatchItem(source, requested, output, state)


def _check_outputs(items: Sequence[BatchItem]) -> None:
    """One output per input, none of them an input."""
    inputs = {Path(item.source).resolve(): item for item in items if not storage.is_uri(item.source)}
    seen: dict[str, BatchItem] = {}
    for item in items:
        target = Path(item.output).resolve()
        if target in inputs:
            raise ValueError(f"the output of {item.source} would overwrite the input {inputs[target].source}; "
                             "choose another OUT_DIR")
        if (other := seen.get(str(target))) is not None:
            raise ValueError(f"{other.source} and {item.source} would both be written to {item.output}; "
                             "upscale one of them separately")
        seen[str(target)] = item


def _refuse_earlier_work(folder: Path, items: Sequence[BatchItem]) -> None:
    finished = [item.name for item in items if item.state == FINISHED]
    partial = [item.name for item in items if item.state == PARTIAL]
    if not finished and not partial:
        return
    held = []
    if finished:
        held.append(f"the outputs of {', '.join(finished)}")
    if partial:
        held.append(f"unfinished work of {', '.join(partial)}")
    raise ValueError(f"{folder} already holds {' and '.join(held)}; add --resume to skip the finished files and "
                     "continue the unfinished ones, or delete them")


# --- the run --------------------------------------------------------------------------------------
def run_batch(batch: Batch, upscaler: Upscaler | ChunkExecutor,
              observer: BatchObserver | None = None) -> list[FileOutcome]:
    """Upscale the batch's files one after another with ``upscaler`` (as ``upscale_file`` takes
    it: in-process, or a Ray executor that serves every file), skipping the finished ones. A file
    that fails is recorded and the run goes on; an interrupt (KeyboardInterrupt) is not caught:
    the finished outputs and the interrupted file's work folder stay for a resume."""
    batch.out_dir.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for item in batch.items:
        if item.state == FINISHED:
            outcome = FileOutcome(item, SKIPPED)
        else:
            if observer is not None:
                observer.file_started(item)
            outcome = _run_one(batch, item, upscaler, observer)
        outcomes.append(outcome)
        if observer is not None:
            observer.file_finished(outcome)
    return outcomes


def _run_one(batch: Batch, item: BatchItem, upscaler: Upscaler | ChunkExecutor,
             observer: BatchObserver | None) -> FileOutcome:
    on_progress = observer.file_progress if observer is not None else None
    try:
        result = upscale_file(item.source, item.requested, upscaler, on_progress=on_progress, resume=batch.resume,
                              **batch.request)
    except Exception as exc:  # noqa: BLE001 - any file's failure is reported and the others go on
        logger.debug("%s failed", item.source, exc_info=True)
        return FileOutcome(item, FAILED, reason=failure_reason(exc))
    return FileOutcome(item, DONE, result)


def failure_reason(exc: BaseException) -> str:
    """One line: the error's message (its type too when that is not an ordinary error's)."""
    message = " ".join(str(exc).split())
    if isinstance(exc, (RuntimeError, ValueError, OSError, MemoryError)) and message:
        return message
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
