"""Does the serving work's Python hold up the model by the GIL? ``Upscaler.stream`` (small
preset) with ~30 ms of pure-Python work per frame beside it, as the Serve replica's event loop
does for a ``WS /v1/stream`` frame (bench_serve.py: its WebSocket and ASGI handling), run
either in a thread of the model's process (sharing its GIL, as in the replica today) or in a
process of its own (what a model process apart from the event loop would give), against the
stream alone; interleaved rounds in one run, the same work in both (a fixed count of
interpreter steps, calibrated once).

    python benchmarks/bench_stream_gil.py            # 180x320 and 360x640, 3 rounds
    python benchmarks/bench_stream_gil.py --size 180x320 --frames 8 --rounds 12   # on a busy machine

The GIL's cost is (process apart) / (thread beside) in frames/s: the CPU work is the same, only
the sharing of the interpreter differs. If it is near 1, moving the model into its own process
would not bring the served stream closer to in-process.
"""
from __future__ import annotations

import multiprocessing as mp
import statistics
import threading
import time
from collections.abc import Callable

import common
import torch

from bench_inference import random_model, synthetic_frames
from common import Report, header, load_average
from vsr_core.inference import Upscaler


def python_work(steps: int) -> int:
    """Pure Python, holding the GIL throughout (as interpreting asyncio/ASGI code does)."""
    total = 0
    for i in range(steps):
        total += i % 7
    return total


def calibrate(work_ms: float) -> int:
    steps = 200_000
    times = []
    for _ in range(5):
        start = time.perf_counter()
        python_work(steps)
        times.append(time.perf_counter() - start)
    return max(1, int(steps * work_ms / 1e3 / min(times)))


def _worker(connection, steps: int) -> None:
    while connection.recv():
        python_work(steps)
    connection.close()


class ThreadBeside:
    """The work in a thread of this process: one batch of ``steps`` per frame."""

    def __init__(self, steps: int):
        self.steps, self.pending = steps, threading.Semaphore(0)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.stopping = False
        self.thread.start()

    def _run(self) -> None:
        while True:
            self.pending.acquire()
            if self.stopping:
                return
            python_work(self.steps)

    def frame(self) -> None:
        self.pending.release()

    def close(self) -> None:
        self.stopping = True
        self.pending.release()
        self.thread.join()


class ProcessApart:
    """The same work in a process of its own (its own interpreter, its own GIL)."""

    def __init__(self, steps: int):
        self.connection, child = mp.Pipe()
        self.process = mp.get_context("fork").Process(target=_worker, args=(child, steps), daemon=True)
        self.process.start()

    def frame(self) -> None:
        self.connection.send(True)

    def close(self) -> None:
        self.connection.send(False)
        self.process.join()


def stream_with(upscaler: Upscaler, clip, beside: Callable[[], object] | None) -> float:
    """Frames/s of ``upscaler.stream`` over ``clip``; after each frame, ``beside`` gets a frame's work."""
    helper = beside() if beside else None
    start = time.perf_counter()
    for _ in upscaler.stream(iter(clip)):
        if helper:
            helper.frame()
    seconds = time.perf_counter() - start
    if helper:
        helper.close()  # waits for the work still queued: the stream had it beside it
    return len(clip) / seconds


def main(argv=None) -> None:
    def extra(parser):
        parser.add_argument("--work-ms", type=float, default=30.0, help="Python work per frame beside the model")
        parser.add_argument("--rounds", type=int, default=3)
        parser.add_argument("--size", help="only this LR size, e.g. 180x320")
        parser.add_argument("--frames", type=int, help="frames per stream (default 24 at 180x320, 12 at 360x640)")

    args = common.parse_args(__doc__, argv, extra)
    report = Report("stream_gil", ("full" if args.full else "quick") + (f"-{args.size}" if args.size else ""))
    header("stream_gil", args.full)
    steps = calibrate(args.work_ms)
    cases = [((180, 320), args.frames or 24), ((360, 640), args.frames or (36 if args.full else 12))]
    if args.size:
        cases = [case for case in cases if f"{case[0][0]}x{case[0][1]}" == args.size]
    report.details = {"work_ms": args.work_ms, "python_steps_per_frame": steps, "cases": {},
                      "torch_threads": torch.get_num_threads()}
    upscaler = Upscaler(random_model("small"), device="cpu")
    for (height, width), frames in cases:
        clip = synthetic_frames(frames, height, width)
        conditions = {"alone": None, "thread beside": lambda: ThreadBeside(steps),
                      "process apart": lambda: ProcessApart(steps)}
        stream_with(upscaler, clip[:6], None)  # warm-up
        runs: dict[str, list[float]] = {name: [] for name in conditions}
        loads = []
        for _ in range(args.rounds):
            loads.append(load_average())
            for name, beside in conditions.items():
                runs[name].append(stream_with(upscaler, clip, beside))
        label = f"small {height}x{width}"
        median = {name: statistics.median(values) for name, values in runs.items()}
        for name in conditions:
            report.add(f"{label}: Upscaler.stream, {args.work_ms:g} ms Python/frame {name}"
                       if name != "alone" else f"{label}: Upscaler.stream alone", median[name], "frames/s",
                       "alone", median[name] / median["alone"],
                       note=f"runs {', '.join(f'{v:.2f}' for v in runs[name])}")
        ratios = [apart / beside for apart, beside in zip(runs["process apart"], runs["thread beside"])]
        report.add(f"{label}: GIL cost, process apart / thread beside", statistics.median(ratios), "x",
                   note=f"per round {', '.join(f'{r:.2f}' for r in ratios)}; load {loads[0]} -> {load_average()}")
        report.details["cases"][label] = {"frames": frames, "runs": runs, "loads": loads}
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
