"""Ray Tune experiment: sweeps with the tiny preset on generated clips, in the shared Ray session."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import random_model, write_clips
from tune import search
from vsr_core.checkpoint import model_from_checkpoint

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]


def checkout_env(**extra: str) -> dict[str, str]:
    """The environment for a `python tune/search.py` subprocess that imports this checkout's packages
    (not another installed copy); the script itself edits no sys.path."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tune_data")
    os.environ["VSR_CACHE_DIR"] = str(folder / "cache")  # inherited by the Ray workers started after this
    paths = write_clips(folder, 8, 48, 48)
    config = {
        "PRESET": "tiny", "MAX_STEPS": 12, "VAL_STEP_EVERY": 3, "LOG_TBOARD_EVERY": 3, "ACCUMULATION_STEPS": 1,
        "BATCH_SIZE": 2, "PATCH_SIZE": 8, "NUM_PATCHES": 50, "VAL_MAX_FRAMES": 2, "PERCEPTUAL_WEIGHT": 0.0,
        "NUM_WORKERS": 0,
    }
    paths["config"] = folder / "base.json"
    paths["config"].write_text(json.dumps(config))
    return paths


def sweep_args(data, tmp_path, name, *extra):
    return search.parse_args([
        "--config", str(data["config"]), "--data", str(data["train"]), "--val-data", str(data["val"]),
        "--storage-path", str(tmp_path / "storage"), "--name", name, "--max-concurrent", "1", *extra,
    ])


def experiment_path(args) -> str:
    return f"{args.storage_path}/{args.name}"


def test_sweep_exports_a_loadable_best_checkpoint_with_health_metrics(ray_session, data, tmp_path, capsys):
    args = sweep_args(data, tmp_path, "two", "--num-samples", "2")
    assert search.run_sweep(args, search.base_config(args), experiment_path(args)) == 0
    best = Path(experiment_path(args)) / "best"
    info = json.loads((best / "best.json").read_text())
    assert {"trial_id", "config", "metrics", "step"} <= set(info)
    model, checkpoint = model_from_checkpoint(best)
    assert checkpoint["step"] == info["step"] and checkpoint["config"]["PRESET"] == "tiny"
    assert info["metrics"]["psnr"] > 20

    out = capsys.readouterr().out
    assert "PSNR" in out and "status" in out and "gain dB" in out  # the summary table
    assert "dB over bicubic at step" in out
    results = list(Path(experiment_path(args)).glob("trial_*/result.json"))
    assert len(results) == 2
    for result_file in results:
        rows = [json.loads(line) for line in result_file.read_text().splitlines()]
        last = rows[-1]
        assert {f"layer/Block_{i:02d}" for i in range(2)} <= set(last)
        assert last["convergence"] in {"Converging ✓", "Plateauing ⚠", "Diverging ✗", "Warming up"}
        assert {"loss_l1", "loss_perceptual", "loss_total", "lr", "psnr", "ssim", "step", "cold_layers",
                "temporal_weight/center", "gain", "bicubic_psnr", "gain/val.mp4"} <= set(last)
        assert last["gain"] == pytest.approx(last["psnr"] - last["bicubic_psnr"])
        assert last["training_phase"] == "pretrain"
        assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)
    assert info["metrics"]["gain"] == max(  # the export is the best validation by gain over bicubic
        json.loads(line)["gain"] for f in results for line in f.read_text().splitlines())
    # every trial's TensorBoard files reach the experiment folder
    assert len(list(Path(experiment_path(args)).glob("trial_*/tensorboard/events.out.tfevents.*"))) == 2


def test_asha_stops_a_bad_trial_early(ray_session, data, tmp_path):
    args = sweep_args(data, tmp_path, "asha", "--num-samples", "2", "--grace-steps", "3")
    base = search.base_config(args)
    good, bad = {"LR_EXPONENT": -3.0, "WEIGHT_DECAY": 0.01}, {"LR_EXPONENT": 0.0, "WEIGHT_DECAY": 0.01}
    results = search.build_tuner(args, base, experiment_path(args), points_to_evaluate=[good, bad]).fit()
    steps = {round(r.config["LR_EXPONENT"]): r.metrics["step"] for r in results}
    assert steps[-3] == 12
    assert steps[0] < 12  # lr = 1 ruins the model: ASHA cuts it at a rung (or it is stopped as diverged)


def _latest_rows(root: Path) -> list[dict]:
    files = list(root.glob("trial_*/result.json"))
    return [json.loads(line) for line in files[0].read_text().splitlines()] if files else []


def test_a_killed_trial_is_retried_from_its_checkpoint(ray_session, data, tmp_path):
    args = sweep_args(data, tmp_path, "kill", "--num-samples", "1", "--max-steps", "300")
    base = search.base_config(args)
    base["VAL_STEP_EVERY"] = 20
    tuner = search.build_tuner(args, base, experiment_path(args))
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("results", tuner.fit()))
    thread.start()
    root = Path(experiment_path(args))
    deadline = time.time() + 120
    while time.time() < deadline and len(_latest_rows(root)) < 2:
        time.sleep(0.2)
    killed_at = _latest_rows(root)[-1]["step"]
    os.kill(_latest_rows(root)[-1]["pid"], signal.SIGKILL)  # the trial's worker process
    thread.join(timeout=240)
    result = outcome["results"][0]
    assert result.error is None and result.metrics["step"] == 300
    steps = [r["step"] for r in _latest_rows(root)]
    pids = {r["pid"] for r in _latest_rows(root)}
    assert len(pids) >= 2  # it really ran in a new worker after the kill
    # The retried trial continued from a checkpoint: it never started over at step 20.
    assert steps[0] == 20 and steps.count(20) == 1 and killed_at >= 40
    assert steps[-1] == 300


def test_interrupted_experiment_resumes_without_rerunning_finished_trials(data, tmp_path):
    """Driver killed mid-sweep (a separate process with its own Ray), then `--resume`."""
    storage = tmp_path / "storage"
    cmd = [sys.executable, str(REPO / "tune" / "search.py"), "--config", str(data["config"]),
           "--data", str(data["train"]), "--val-data", str(data["val"]), "--storage-path", str(storage),
           "--name", "resume", "--num-samples", "2", "--max-concurrent", "1", "--max-steps", "60",
           "--dashboard-port", "8299"]
    env = checkout_env(RAY_ADDRESS="")
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                              start_new_session=True)
    root = storage / "resume"
    deadline = time.time() + 180
    finished = []
    while time.time() < deadline:
        finished = [f for f in root.glob("trial_*/result.json") if '"done": true' in f.read_text()]
        if finished:
            break
        time.sleep(0.3)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    assert finished, "the first trial never finished"
    first_trial = finished[0].parent
    rows_before = finished[0].read_text()

    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert finished[0].read_text() == rows_before  # the finished trial was not run again
    assert (root / "best" / "best.json").exists()
    trials = list(root.glob("trial_*/result.json"))
    assert len(trials) == 2 and first_trial in [t.parent for t in trials]


def test_a_bad_data_path_fails_fast_with_one_clear_error(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "tune" / "search.py"), "--data", str(tmp_path / "missing"),
         "--storage-path", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=checkout_env(),
    )
    assert result.returncode == 2
    assert "data path does not exist" in result.stderr and "Traceback" not in result.stderr


TWO_NODE_SWEEP = """
import json, sys
import ray
from ray.cluster_utils import Cluster
from tune import search

config, train, val, storage = sys.argv[1:5]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address)
args = search.parse_args(["--config", config, "--data", train, "--val-data", val, "--storage-path", storage,
                          "--name", "two_nodes", "--num-samples", "2", "--max-concurrent", "2", "--max-steps", "60"])
code = search.run_sweep(args, search.base_config(args), f"{storage}/two_nodes")
nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
ray.shutdown()
cluster.shutdown()
print("RESULT", json.dumps({"code": code, "cluster_nodes": sorted(nodes)}))
"""


def test_a_sweep_on_a_two_node_cluster_uses_both_nodes(data, tmp_path):
    script = tmp_path / "two_nodes.py"
    script.write_text(TWO_NODE_SWEEP)
    storage = tmp_path / "storage"
    run = subprocess.run(
        [sys.executable, str(script), str(data["config"]), str(data["train"]), str(data["val"]), str(storage)],
        capture_output=True, text=True, timeout=300, env=checkout_env(RAY_ADDRESS=""), cwd=REPO,
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, run.stderr[-3000:]
    outcome = json.loads(lines[-1][len("RESULT "):])
    assert outcome["code"] == 0 and len(outcome["cluster_nodes"]) == 2
    used = {json.loads(line)["node_id"] for f in (storage / "two_nodes").glob("trial_*/result.json")
            for line in f.read_text().splitlines()}
    assert used == set(outcome["cluster_nodes"])


def test_finetune_sweep_starts_at_the_seeds_point_from_the_weights_and_exports_its_own_best(ray_session, data,
                                                                                              tmp_path):
    from vsr_core.config import TrainConfig
    from vsr_core.engine.trainer import Trainer
    from vsr_core.engine.validation import Validator

    # a "pretrained" checkpoint whose output is far from a fresh model's (a fresh model is the bilinear anchor)
    values = {**json.loads(data["config"].read_text()), "TRAIN_DATA": [str(data["train"])],
              "VAL_DATA": [str(data["val"])], "OUTPUT_DIR": str(tmp_path / "pre"), "MILESTONE_EVERY": 0}
    pretrain = Trainer(TrainConfig.from_dict(values))
    weights = random_model("tiny", seed=5).state_dict()
    weights["upsample.0.weight"] *= 4  # a correction on top of the anchor that a fresh model lacks
    pretrain.model.load_state_dict(weights)
    pretrain.save()
    validator = Validator(pretrain.device)
    pretrained_gain = validator(pretrain.model, pretrain.config, 0).gain
    fresh_gain = validator(Trainer(TrainConfig.from_dict(values)).model, pretrain.config, 0).gain
    assert abs(pretrained_gain - fresh_gain) > 3.0

    args = search.parse_args([
        "--config", str(data["config"]), "--data", str(data["train"]), "--val-data", str(data["val"]),
        "--storage-path", str(tmp_path / "storage"), "--max-concurrent", "1", "--num-samples", "2",
        "--max-steps", "3", "--finetune-from", str(tmp_path / "pre")])
    assert args.name == "vsr_finetune" and args.lr_range == (1e-6, 1e-4) and args.wd_range == (1e-4, 1e-2)
    base = search.base_config(args)
    assert (base["LR_EXPONENT"], base["WEIGHT_DECAY"]) == (-5.0, 0.001)
    assert search.run_sweep(args, base, experiment_path(args)) == 0

    trials = []
    for result_file in Path(experiment_path(args)).glob("trial_*/result.json"):
        rows = [json.loads(line) for line in result_file.read_text().splitlines()]
        trials.append((rows[0]["timestamp"], rows[0]["config"], rows))
    trials.sort(key=lambda t: t[0])
    first_config = trials[0][1]
    assert (first_config["LR_EXPONENT"], first_config["WEIGHT_DECAY"]) == (-5.0, 0.001)  # the seed's point first
    for _, config, rows in trials:
        assert 1e-6 <= 10 ** config["LR_EXPONENT"] <= 1e-4 and 1e-4 <= config["WEIGHT_DECAY"] <= 1e-2
        assert all(r["training_phase"] == "finetune" for r in rows)
        # it trained from the pretrained weights: after 3 steps at LR <= 1e-4 it is still that model
        assert rows[0]["gain"] == pytest.approx(pretrained_gain, abs=1.0)

    best = Path(experiment_path(args)) / "best"  # its own export, not the pretraining sweep's
    assert best.parent.name == "vsr_finetune"
    _, checkpoint = model_from_checkpoint(best)
    info = json.loads((best / "best.json").read_text())
    assert checkpoint["training_phase"] == "finetune" and info["metrics"]["training_phase"] == "finetune"
