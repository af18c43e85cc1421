"""Data-parallel training on Ray Train (2 CPU workers, gloo) in the shared Ray session: a Tune trial
of 2 workers, and a worker killed in the middle of a run."""
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ray.train import UserCallback

from conftest import ray_processes, write_clips
from test_serve import save_test_checkpoint
from tune import search
from vsr_core import cli
from vsr_core.checkpoint import load_checkpoint
from vsr_core.config import TrainConfig
from vsr_core.data.video_io import iter_frames
from vsr_core.engine.ray_train import fit_on_ray_train
from vsr_core.engine.run_start import CHECKPOINT_FILE

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dp_data")
    paths = write_clips(folder, 8, 48, 48)
    paths["base"] = {
        "PRESET": "tiny", "MAX_STEPS": 8, "VAL_STEP_EVERY": 4, "LOG_TBOARD_EVERY": 2, "ACCUMULATION_STEPS": 2,
        "BATCH_SIZE": 2, "PATCH_SIZE": 8, "NUM_PATCHES": 50, "VAL_MAX_FRAMES": 2, "PERCEPTUAL_WEIGHT": 0.0,
        "NUM_WORKERS": 0, "TRAIN_DATA": [str(paths["train"])], "VAL_DATA": [str(paths["val"])], "MILESTONE_EVERY": 0,
    }
    paths["config"] = folder / "base.json"
    paths["config"].write_text(json.dumps(paths["base"]))
    return paths


def test_a_two_worker_trial_reports_layer_metrics_and_a_checkpoint_vsr_upscale_loads(ray_session, data, tmp_path):
    args = search.parse_args([
        "--config", str(data["config"]), "--storage-path", str(tmp_path / "storage"), "--name", "dp",
        "--num-samples", "1", "--max-concurrent", "1", "--workers-per-trial", "2", "--cpus-per-worker", "0.5",
    ])
    experiment = f"{args.storage_path}/{args.name}"
    assert search.run_sweep(args, search.base_config(args), experiment) == 0

    rows = [json.loads(line) for line in next(Path(experiment).glob("trial_*/result.json")).read_text().splitlines()]
    assert [row["step"] for row in rows] == [4, 8]  # one report per validation, as a one-process trial
    for row in rows:
        assert row["workers"] == 2
        assert {"layer/Block_00", "layer/Block_01", "loss_l1", "loss_total", "psnr", "ssim", "lr", "convergence",
                "cold_layers", "temporal_weight/center"} <= set(row)
        assert 0 < row["layer/Block_00"] <= 1 and row["psnr"] > 20
    assert len(list(Path(experiment).glob("trial_*/checkpoint_*/checkpoint.pth"))) == 2  # Tune kept both

    best = Path(experiment) / "best"
    checkpoint = load_checkpoint(best)
    assert checkpoint["step"] == json.loads((best / "best.json").read_text())["step"]
    assert checkpoint["config"]["PRESET"] == "tiny"
    # Tune ended the trial at its last step: the workers' CPUs are free again (not held until the sweep ends)
    deadline = time.monotonic() + 30
    while ray_session.available_resources().get("CPU", 0) < ray_session.cluster_resources()["CPU"]:
        assert time.monotonic() < deadline, "the trial's Ray Train workers still hold their CPUs"
        time.sleep(0.2)

    frames_out = tmp_path / "frames_x3"
    assert cli.main(["upscale", str(data["val"]), str(frames_out), "--checkpoint", str(best)]) == 0
    upscaled = list(iter_frames(frames_out))
    assert len(upscaled) == 8 and upscaled[0].shape == (144, 144, 3) and np.ptp(upscaled[0]) > 0


def record_reports(path: Path) -> UserCallback:
    """A callback for the Ray Train controller: one JSON line per report and per failure of the worker
    group. (Defined in a function so that it is pickled by value: the controller cannot import tests.)"""

    class RecordReports(UserCallback):
        def _write(self, entry: dict) -> None:
            with open(path, "a") as f:
                f.write(json.dumps(entry) + "\n")

        def after_report(self, run_context, metrics, checkpoint):
            self._write({"step": metrics[0]["step"], "checkpoint": checkpoint is not None})

        def after_exception(self, run_context, worker_exceptions):
            self._write({"failure": sorted(worker_exceptions)})

    return RecordReports()


def test_a_killed_worker_restarts_the_group_from_the_last_checkpoint(ray_session, data, tmp_path):
    """A fine-tune run (from a checkpoint's weights): the restarted group continues from its own last
    checkpoint, not from those weights again."""
    config = TrainConfig.from_dict({**data["base"], "MAX_STEPS": 240, "VAL_STEP_EVERY": 40, "LOG_TBOARD_EVERY": 40,
                                    "SAVE_STEP_EVERY": 240, "OUTPUT_DIR": str(tmp_path / "run")})
    weights = save_test_checkpoint(tmp_path / "pretrained.pth", seed=7, step=500)
    log = tmp_path / "reports.jsonl"
    outcome = {}

    def run():
        try:
            outcome["result"] = fit_on_ray_train(config, 2, storage_path=str(tmp_path), name="ray_train",
                                                 max_failures=1, callbacks=[record_reports(log)],
                                                 finetune_from=str(weights))
        except BaseException as exc:
            outcome["error"] = exc

    runner = threading.Thread(target=run)
    runner.start()
    deadline = time.monotonic() + 120
    while not (log.exists() and log.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = ray_processes("RayTrainWorker")
    assert log.exists() and len(workers) == 2, "the run never reported, or its workers were not found"
    os.kill(workers[-1].pid, signal.SIGKILL)
    runner.join(timeout=240)
    assert not runner.is_alive() and "error" not in outcome, outcome.get("error")

    entries = [json.loads(line) for line in log.read_text().splitlines()]
    failure = next(i for i, e in enumerate(entries) if "failure" in e)
    before = [e["step"] for e in entries[:failure]]
    after = [e["step"] for e in entries[failure + 1:] if "step" in e]
    assert before and after and after[-1] == 240
    # the new group started from the last reported checkpoint: no step is trained and reported twice
    assert after[0] == before[-1] + 40 and before + after == list(range(40, 241, 40))
    final = load_checkpoint(Path(outcome["result"].checkpoint.path) / CHECKPOINT_FILE)
    assert final["step"] == 240 and load_checkpoint(tmp_path / "run" / "latest.pth")["step"] == 240
    assert final["training_phase"] == "finetune"
