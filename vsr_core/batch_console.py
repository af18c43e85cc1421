"""What ``vsr upscale`` shows for a batch of videos (``video.batch``): one bar over the files and
one for the file running (tqdm, on stderr like the single-file bar), a line per file as it ends
(a failure's line names its reason, on stderr), what to do after an interrupt, and at the end a
summary of what was done, skipped and failed."""
from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

from vsr_core.video.batch import DONE, FAILED, SKIPPED, Batch, BatchItem, FileOutcome
from vsr_core.video.executors import Progress

EXIT_SOME_FAILED = 1


class BatchConsole:
    """A ``BatchObserver`` that draws the bars and writes the lines."""

    def __init__(self, batch: Batch):
        self.batch = batch
        self.files = tqdm(total=len(batch.items), unit="file", desc="files", position=0, dynamic_ncols=True)
        self.frames: tqdm | None = None
        self.current: BatchItem | None = None  # the file running (what an interrupt leaves unfinished)

    def file_started(self, item: BatchItem) -> None:
        self.current = item
        self.frames = tqdm(total=None, unit="frame", desc=item.name, position=1, leave=False, dynamic_ncols=True)

    def file_progress(self, progress: Progress) -> None:
        self.frames.total = progress.frames_total
        self.frames.update(progress.frames_done - self.frames.n)

    def file_finished(self, outcome: FileOutcome) -> None:
        self._close_frames()
        self.current = None
        item, result = outcome.item, outcome.result
        if outcome.status == FAILED:
            self._say(f"failed: {item.name}: {outcome.reason}", sys.stderr)
        elif outcome.status == SKIPPED:
            self._say(f"skipped: {item.name} ({item.output} was finished by an earlier run)")
        else:
            resumed = f", {result.resumed_frames} of them from an earlier run" if result.resumed_frames else ""
            self._say(f"done: {item.name} -> {result.output} ({result.frames} frames{resumed}, {result.seconds:.1f}s)")
        self.files.update(1)

    def interrupted(self) -> None:
        """After Ctrl-C: where the work is and how to continue."""
        self.close()
        running = self.current
        kept = f"; {running.name}'s finished chunks are kept in {running.work_folder}" if running else ""
        print(f"interrupted: the finished outputs are in {self.batch.out_dir}{kept}; run the same command with "
              "--resume to continue (finished files are skipped)", file=sys.stderr)

    def summary(self, outcomes: list[FileOutcome]) -> int:
        """Print what was done, skipped and failed; the exit code (non-zero when a file failed)."""
        self.close()
        by_status = {status: [o for o in outcomes if o.status == status] for status in (DONE, SKIPPED, FAILED)}
        print(f"batch into {self.batch.out_dir}: {len(by_status[DONE])} done, {len(by_status[SKIPPED])} skipped, "
              f"{len(by_status[FAILED])} failed")
        for status, label in ((DONE, "done"), (SKIPPED, "skipped (finished earlier)")):
            if by_status[status]:
                print(f"  {label}: {', '.join(o.item.name for o in by_status[status])}")
        for outcome in by_status[FAILED]:
            print(f"  failed: {outcome.item.name}: {outcome.reason}")
        return EXIT_SOME_FAILED if by_status[FAILED] else 0

    def close(self) -> None:
        self._close_frames()
        self.files.close()

    def _close_frames(self) -> None:
        if self.frames is not None:
            self.frames.close()
            self.frames = None

    def _say(self, line: str, stream: TextIO | None = None) -> None:
        stream = stream or sys.stdout
        with tqdm.external_write_mode(file=stream):
            print(line, file=stream, flush=True)
