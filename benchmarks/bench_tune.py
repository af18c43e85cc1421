"""6. Tune overhead: wall time of a sweep of K short trials (tune/search.py's build_tuner:
Optuna + ASHA + the train_vsr trainable, one trial at a time with all CPUs) against the
same training run K times directly in one process (``Trainer(config).fit()``), in the
same run. The difference is Ray's cost: worker processes and their imports, reporting,
checkpoints through Tune's storage, the searcher and scheduler.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

from common import ROOT, Report, header, parse_args


def tiny_base(tmp: Path, max_steps: int) -> dict:
    from vsr_core.config import TrainConfig
    from vsr_core.configs import shipped_path

    values = TrainConfig.from_json(shipped_path("sweep_base")).to_dict()
    values.update({
        "PRESET": "small", "MAX_STEPS": max_steps, "VAL_STEP_EVERY": max_steps // 2, "SAVE_STEP_EVERY": max_steps,
        "LOG_TBOARD_EVERY": 1, "BATCH_SIZE": 2, "ACCUMULATION_STEPS": 1, "PATCH_SIZE": 24, "VAL_MAX_FRAMES": 2,
        "VAL_CROP": 96, "DEVICE": "cpu", "MILESTONE_EVERY": 0, "OUTPUT_DIR": str(tmp / "direct"),
    })
    return TrainConfig.from_dict(values).to_dict()


def main(argv=None) -> None:
    args = parse_args(__doc__, argv)
    full = args.full
    report = Report("tune", "full" if full else "quick")
    header("tune", full)
    k = 4 if full else 3
    max_steps = 10 if full else 6
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="vsr-bench-tune-") as tmp:
        tmp = Path(tmp)
        base = tiny_base(tmp, max_steps)

        # direct: the same training K times in this process (threads as a trial gets them)
        from vsr_core.config import TrainConfig
        from vsr_core.engine.trainer import Trainer

        direct_times = []
        for i in range(k):
            config = TrainConfig.from_dict({**base, "OUTPUT_DIR": str(tmp / f"direct_{i}"), "NUM_THREADS": cpus})
            start = time.perf_counter()
            Trainer(config).fit()
            direct_times.append(time.perf_counter() - start)
        direct = sum(direct_times)

        # Tune: build_tuner from tune/search.py, one trial at a time with all CPUs
        import ray

        from tune import search

        sweep_args = search.parse_args(["--num-samples", str(k), "--max-concurrent", "1", "--cpus-per-trial",
                                        str(cpus), "--storage-path", str(tmp / "tune"), "--name", "bench",
                                        "--max-failures", "0"])
        start = time.perf_counter()
        runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                                                   if p)}}
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
        ray_start = time.perf_counter() - start
        try:
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # Tune's status table
                results = search.build_tuner(sweep_args, base, f"{sweep_args.storage_path}/bench").fit()
            fit = time.perf_counter() - start
        finally:
            ray.shutdown()
        errors = [r.error for r in results if r.error]
        if errors:
            raise RuntimeError(f"{len(errors)} trial(s) failed: {errors[0]}")
        steps = [int((r.metrics or {}).get("step", 0)) for r in results]

        label = f"{k} trials x {max_steps} steps"
        report.add(f"{label}: direct Trainer.fit() x{k}, one process", direct, "s")
        report.add(f"{label}: Tuner.fit() (build_tuner)", fit, "s", "direct", fit / direct)
        report.add(f"{label}: Tuner.fit() + ray.init", fit + ray_start, "s", "direct", (fit + ray_start) / direct)
        report.add("Tune overhead per trial", (fit - direct) / k, "s", "direct time per trial",
                   (fit - direct) / direct)
        report.details = {"k": k, "max_steps": max_steps, "cpus_per_trial": cpus, "direct_runs_s": direct_times,
                          "ray_init_s": ray_start, "tuner_fit_s": fit, "trial_steps": steps, "base_config": base}
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
