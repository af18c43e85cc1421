"""8. Data-parallel training: the overhead of the DDP path on the same cores.

The same optimizer steps (the same samples: ACCUMULATION_STEPS micro-batches of 2 x BATCH_SIZE
windows) trained two ways on this machine's cores:

- reference: one process, today's path (no process group), 2 torch threads, 2 x BATCH_SIZE per micro-batch;
- 2 workers: the engine's Trainer with a DataParallel in 2 processes (gloo), 1 thread each,
  BATCH_SIZE each (DDP, no_sync on the non-final micro-batches, one gradient all-reduce per step);
- one process with 1 thread: what one worker's core does alone (the 2 workers' ideal is 2x it).

The first two hold the same 2 cores, so their ratio is what the DDP path costs (the all-reduce,
the per-step agreement, a second process and its data loader), not a speed-up: scaling needs
more devices than this machine has. Measured round-robin (a few steps of each, repeated). On a
busy machine the 2-thread process suffers most (an OpenMP team of 2 stalls whenever one core is
taken), so compare with the 1-thread row too and look at the load average in the JSON.
Also measured: a gloo all-reduce of the full preset's gradient volume (5.1M fp32 = 20.5 MB),
and the full preset's conv FLOPs per optimizer step (counted), the two inputs of the GPU
scaling estimate in benchmarks/README.md. Ray Train itself (worker start-up) is not timed.

Config: the shipped sweep_base (what Tune trials train), default training clip; --full adds
the full preset.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from common import Report, Timing, header, parse_args
from flops import conv_flops_per_window
from vsr_core.archs import VSRPPPv2, count_parameters
from vsr_core.config import TrainConfig
from vsr_core.configs import shipped_path
from vsr_core.engine.distributed import DataParallel
from vsr_core.engine.trainer import Trainer

WORKERS = 2
ALL_REDUCE_REPEATS = 8


def bench_config(tmp: Path, name: str, **changes) -> TrainConfig:
    values = TrainConfig.from_json(shipped_path("sweep_base")).to_dict()
    values.update({"OUTPUT_DIR": str(tmp / name), "DEVICE": "cpu", "MILESTONE_EVERY": 0, "VGG_WEIGHTS": "random"})
    values.update({k.upper(): v for k, v in changes.items()})
    return TrainConfig.from_dict(values)


def ddp_worker(rank: int, init_file: str, config: TrainConfig, commands, results) -> None:
    """One of the 2 workers: trains on command, timed by rank 0 between barriers."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORKERS)
    try:
        trainer = Trainer(config, parallel=DataParallel.from_process_group(torch.device("cpu")))
        while True:
            command, value = commands[rank].get()
            if command == "stop":
                return
            dist.barrier()
            start = time.perf_counter()
            if command == "steps":
                for _ in range(value):
                    trainer.train_step()
                dist.barrier()
                elapsed = [time.perf_counter() - start]
            else:  # "all_reduce": value fp32 elements, ALL_REDUCE_REPEATS times
                buffer, elapsed = torch.ones(value), []
                for _ in range(ALL_REDUCE_REPEATS):
                    start = time.perf_counter()
                    dist.all_reduce(buffer)
                    elapsed.append(time.perf_counter() - start)
            if rank == 0:
                results.put(elapsed)
    finally:
        dist.destroy_process_group()


class Workers:
    """The 2 DDP worker processes, kept between rounds."""

    def __init__(self, config: TrainConfig, tmp: Path):
        context = mp.get_context("spawn")
        self.commands = [context.Queue() for _ in range(WORKERS)]
        self.results = context.Queue()
        self.processes = [context.Process(target=ddp_worker, args=(rank, str(tmp / f"rendezvous-{config.preset}"),
                                                                    config, self.commands, self.results))
                          for rank in range(WORKERS)]
        for process in self.processes:
            process.start()

    def run(self, command: str, value: int) -> list[float]:
        for queue in self.commands:
            queue.put((command, value))
        return self.results.get(timeout=1800)

    def stop(self) -> None:
        for queue in self.commands:
            queue.put(("stop", 0))
        for process in self.processes:
            process.join(timeout=60)


def compare(config: TrainConfig, tmp: Path, rounds: int, steps: int) -> dict[str, Timing]:
    """Seconds per optimizer step: one process with the double batch (2 threads, 1 thread) vs 2 DDP
    workers, round-robin."""
    tmp.mkdir(parents=True, exist_ok=True)
    double = config.replace(batch_size=WORKERS * config.batch_size, output_dir=str(tmp / "single"))
    single = {threads: Trainer(double.replace(num_threads=threads)) for threads in (WORKERS, 1)}
    workers = Workers(config.replace(num_threads=1), tmp)

    def run_single(threads: int) -> float:
        torch.set_num_threads(threads)
        start = time.perf_counter()
        for _ in range(steps):
            single[threads].train_step()
        return (time.perf_counter() - start) / steps

    try:
        run_single(WORKERS), run_single(1), workers.run("steps", 1)  # warm-up: data loaders, first allocations
        runs: dict[str, list[float]] = {"1 process": [], "2 workers": [], "1 process, 1 thread": []}
        for _ in range(rounds):
            runs["1 process"].append(run_single(WORKERS))
            runs["2 workers"].append(workers.run("steps", steps)[0] / steps)
            runs["1 process, 1 thread"].append(run_single(1))
        return {name: Timing(seconds) for name, seconds in runs.items()}
    finally:
        workers.stop()
        for trainer in single.values():
            trainer._close_batches()


def all_reduce_seconds(config: TrainConfig, tmp: Path, elements: int) -> float:
    workers = Workers(config.replace(num_threads=1), tmp / "allreduce")
    try:
        return statistics.median(workers.run("all_reduce", elements))
    finally:
        workers.stop()


def main(argv=None) -> None:
    args = parse_args(__doc__, argv)
    full = args.full
    report = Report("ddp", "full" if full else "quick")
    header("ddp", full)
    rounds, steps = (8, 4) if full else (5, 3)
    details: dict = {"workers": WORKERS}
    with tempfile.TemporaryDirectory(prefix="vsr-bench-ddp-") as tmp:
        tmp = Path(tmp)
        (tmp / "allreduce").mkdir()
        presets = ("small", "full") if full else ("small",)
        for preset in presets:
            config = bench_config(tmp, preset, preset=preset, **({"accumulation_steps": 1} if preset == "full" else {}))
            timings = compare(config, tmp / preset, rounds, steps if preset == "small" else 2)
            step_s = {name: t.median for name, t in timings.items()}
            samples = WORKERS * config.effective_batch_size
            label = f"{preset} {WORKERS}x{config.batch_size}x{config.accumulation_steps}x{config.patch_size}px"
            report.add(f"{label}: 1 process, 2 threads", 1 / step_s["1 process"], "steps/s",
                       note=f"{samples / step_s['1 process']:.1f} samples/s")
            report.add(f"{label}: 2 DDP workers, 1 thread each", 1 / step_s["2 workers"], "steps/s",
                       "1 process, same samples", step_s["1 process"] / step_s["2 workers"],
                       note=f"{samples / step_s['2 workers']:.1f} samples/s")
            report.add(f"{label}: 1 process, 1 thread", 1 / step_s["1 process, 1 thread"], "steps/s",
                       "2 DDP workers", step_s["2 workers"] / step_s["1 process, 1 thread"],
                       note=f"2 workers = {step_s['1 process, 1 thread'] / step_s['2 workers']:.2f}x it (ideal 2)")
            details[preset] = {"config": config.to_dict(), "timings": {k: t.to_dict() for k, t in timings.items()},
                               "seconds_per_step": step_s, "samples_per_step": samples}
        model = VSRPPPv2.from_preset("full")
        params = count_parameters(model)
        reduce_s = all_reduce_seconds(bench_config(tmp, "ar"), tmp, params)
        report.add(f"gloo all-reduce of {params / 1e6:.2f}M fp32 ({4 * params / 1e6:.1f} MB), 2 processes",
                   reduce_s * 1e3, "ms", note="the full preset's gradients, once per optimizer step")
        option_b = TrainConfig.from_json(shipped_path("option_b"))
        window_flops = conv_flops_per_window(model, option_b.patch_size, option_b.patch_size)
        step_flops = 3 * window_flops * option_b.effective_batch_size  # forward + backward (~2x forward)
        report.add(f"full preset conv work per step ({option_b.batch_size}x{option_b.accumulation_steps} windows, "
                   f"{option_b.patch_size}px)", step_flops / 1e12, "TFLOP", note="fwd + bwd = 3 x forward")
        details.update(full_preset_parameters=params, all_reduce_seconds=reduce_s,
                       all_reduce_bytes=4 * params, option_b_step_tflop=step_flops / 1e12,
                       option_b=option_b.to_dict())
    report.details = details
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the workers set their own thread counts
    main()
