"""benchmarks/gpu_check.py on the CPU: its arguments, the JSON it prints without CUDA, its exit code,
a failing part recorded while the others still run, and every part's function on the CPU with the
tiny preset (gpu_parts.py: the code a GPU machine will run, with the device as a parameter)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmarks import their siblings by name

import gpu_check  # noqa: E402
import gpu_parts  # noqa: E402
from conftest import make_clip, tiny_train_config, write_clips  # noqa: E402
from vsr_core.checkpoint import LATEST_NAME, load_checkpoint  # noqa: E402

TRAINED_SMALL = ROOT / "tests" / "data" / "small_60steps.pth"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clips(tmp_path_factory.mktemp("gpu_check_clips"), 8, 48, 48)


def fp16_config(clips, output_dir, **changes):
    values = dict(precision="fp16", device="cpu", max_steps=6, val_step_every=6, save_step_every=6)
    return tiny_train_config(clips, output_dir, **{**values, **changes})


# --- arguments, summary, exit code --------------------------------------------------------------------------
def test_arguments(tmp_path, capsys):
    args = gpu_check.parse_args([])
    assert args.out == ROOT / "benchmarks" / "results" / "gpu_check.json" and args.only is None
    assert args.checkpoint == TRAINED_SMALL and TRAINED_SMALL.is_file()
    args = gpu_check.parse_args(["--only", "serve", "training", "--out", str(tmp_path / "c.json")])
    assert args.only == ["serve", "training"] and args.out == tmp_path / "c.json"
    for bad, message in ((["--only", "inference"], "invalid choice: 'inference'"),
                         (["--checkpoint", str(tmp_path / "none.pth")], "--checkpoint"),
                         (["--out", str(tmp_path)], "--out")):
        with pytest.raises(SystemExit) as exit_info:
            gpu_check.parse_args(bad)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def must_not_run(*args, **kwargs):
    raise AssertionError("a part ran without CUDA")


def test_without_cuda_it_prints_a_json_that_says_so_and_exits_0(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("check_training", "check_precision", "check_speed", "check_data_parallel", "check_serve"):
        monkeypatch.setattr(gpu_check, name, must_not_run)
    out = tmp_path / "results" / "gpu_check.json"
    assert gpu_check.main(["--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["cuda"] is False and printed["passed"] is None and "parts" not in printed
    machine = printed["machine"]
    assert machine["cuda"] is False and machine["torch_version"] == torch.__version__
    assert {"cpu_model", "usable_cpus", "load_average_at_start", "load_average_at_end"} <= set(machine)


def fake_parts(monkeypatch, calls: list):
    """Stand-ins for the five parts: one passes, one fails a check, one raises, one is skipped."""
    def part(name, result=None, error=None):
        def run(*args, **kwargs):
            calls.append(name)
            if error is not None:
                raise error
            return result
        return run

    monkeypatch.setattr(gpu_check, "check_training", part("training", {"loss": 0.1, "checks": {"finite": True}}))
    monkeypatch.setattr(gpu_check, "check_precision", part("precision", {"checks": {"close": False, "ran": True}}))
    monkeypatch.setattr(gpu_check, "check_speed", part("speed", error=RuntimeError("CUDA out of memory")))
    monkeypatch.setattr(gpu_check, "check_data_parallel", part("data_parallel", error=gpu_parts.PartSkipped("1 GPU")))
    monkeypatch.setattr(gpu_check, "check_serve", part("serve", {"latency_s": float("inf"), "checks": {"200": True}}))
    monkeypatch.setattr(gpu_check, "sample_validation_frames", lambda count: [])
    monkeypatch.setattr(gpu_check.RayInstance, "ensure", lambda self: calls.append("ray"))


def test_a_failing_part_is_recorded_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    calls: list[str] = []
    fake_parts(monkeypatch, calls)
    out = tmp_path / "check.json"
    assert gpu_check.main(["--out", str(out)]) == 1
    summary = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == summary
    assert calls == ["training", "precision", "speed", "ray", "data_parallel", "ray", "serve"]
    parts = summary["parts"]
    assert list(parts) == list(gpu_check.PARTS)
    assert {name: p["status"] for name, p in parts.items()} == {
        "training": "passed", "precision": "failed", "speed": "failed", "data_parallel": "skipped",
        "serve": "passed"}
    assert parts["training"]["loss"] == 0.1 and parts["precision"]["failed_checks"] == ["close"]
    assert parts["speed"]["error"] == "RuntimeError: CUDA out of memory" and "Traceback" in parts["speed"]["traceback"]
    assert parts["data_parallel"]["reason"] == "1 GPU"
    assert parts["serve"]["latency_s"] == "inf"  # strict JSON: no Infinity
    assert all(p["seconds"] >= 0 for p in parts.values())
    assert summary["cuda"] is True and summary["passed"] is False and summary["machine"]["gpus"]["count"] == 0


def test_only_the_parts_asked_for_run_in_their_order_and_exit_0_when_none_failed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    calls: list[str] = []
    fake_parts(monkeypatch, calls)
    out = tmp_path / "check.json"
    assert gpu_check.main(["--only", "serve", "training", "--out", str(out)]) == 0
    assert calls == ["training", "ray", "serve"]
    summary = json.loads(out.read_text())
    assert list(summary["parts"]) == ["training", "serve"] and summary["passed"] is True


# --- the parts, on the CPU -------------------------------------------------------------------------------------
def test_train_config_is_the_sweep_config_in_fp16_with_vgg_only_when_on_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_parts, "imagenet_vgg19_cache_path", lambda: tmp_path / "vgg19.pth")
    config = gpu_parts.train_config(tmp_path / "run", 50)
    assert (config.preset, config.precision, config.device, config.max_steps) == ("small", "fp16", "cuda", 50)
    assert config.val_step_every == config.save_step_every == 50 and config.milestone_every == 0
    assert config.perceptual_weight == 0.0 and config.train_data == []  # [] = the sample clip
    (tmp_path / "vgg19.pth").write_bytes(b"")
    assert gpu_parts.train_config(tmp_path / "run", 50).perceptual_weight == 0.1


def test_training_part_runs_fp16_with_the_grad_scaler(clips, tmp_path):
    result = gpu_check.run_part(lambda: gpu_parts.check_training(fp16_config(clips, tmp_path / "run")))
    assert result["status"] == "passed", result
    assert all(result["checks"].values()) and len(result["checks"]) == 6
    assert (result["device"], result["precision"], result["steps"]) == ("cpu", "fp16", 6)
    saved = load_checkpoint(tmp_path / "run" / LATEST_NAME)
    assert saved["step"] == 6 and saved["scaler_state_dict"]["scale"] == result["grad_scale_final"] > 0
    # the scale halves on every overflow and grows only after 2000 good steps
    assert result["grad_scale_final"] == result["grad_scale_initial"] * 0.5 ** result["scaler_skipped_steps"]
    assert np.isfinite(result["loss_mean_last_10"]) and np.isfinite(result["validation"]["y_psnr"])


def test_training_part_fails_when_the_run_is_not_fp16(clips, tmp_path):
    result = gpu_check.run_part(lambda: gpu_parts.check_training(fp16_config(clips, tmp_path / "run",
                                                                             precision="fp32")))
    assert result["status"] == "failed"
    assert result["failed_checks"] == ["fp16 autocast with an enabled GradScaler"]


def test_precision_part_compares_fp16_with_fp32_on_the_same_windows(tmp_path):
    from vsr_core.evaluate import evaluate_frames
    from vsr_core.inference import Upscaler

    clip = list(make_clip(6, 96, 120, seed=1))
    result = gpu_check.run_part(lambda: gpu_parts.check_precision(TRAINED_SMALL, "cpu", clip))
    assert result["status"] == "passed", result
    assert result["preset"] == "small" and result["frames"] == 6 and result["hr_size"] == [96, 120]
    # the fp32 score against an independent scorer: vsr evaluate's (the stream path, with feature reuse)
    reference = evaluate_frames(Upscaler.from_checkpoint(TRAINED_SMALL, device="cpu", precision="fp32"), iter(clip))
    assert result["y_psnr_db"]["fp32"] == pytest.approx(reference[0].y_psnr, abs=0.01)
    psnr = result["y_psnr_db"]
    assert result["fp16_minus_fp32_db"] == pytest.approx(psnr["fp16"] - psnr["fp32"])
    assert psnr["fp32"] > psnr["bicubic"]  # a trained model: more than the bilinear anchor is compared
    assert result["fp16_vs_fp32_max_diff_levels"] >= 1 and result["fp16_vs_fp32_worst_frame_y_psnr_db"] > 40


def test_speed_part_times_streams_and_vsr_upscale(tmp_path):
    result = gpu_check.run_part(lambda: gpu_parts.check_speed(
        "cpu", tmp_path, presets=("tiny",), sizes=((24, 30), (18, 21)), frames=5, clip_frames=7, clip_size=(24, 30)))
    assert result["status"] == "passed", result
    assert [(m["preset"], m["lr_size"]) for m in result["model"]] == [("tiny", "24x30"), ("tiny", "18x21")]
    for row in result["model"]:
        assert set(row["frames_per_s"]) == {"fp16", "fp32"} and all(v > 0 for v in row["frames_per_s"].values())
        assert len(row["timings"]["fp16"]["runs_s"]) == 3
    (pipeline,) = result["vsr_upscale"]
    assert set(pipeline["frames_per_s"]) == {"model only", "vsr upscale", "overlapped (prefetch=8)"}
    from vsr_core.data.video_io import read_frames

    written = read_frames(tmp_path / "tiny" / "x3_tiny.mp4")  # what vsr upscale wrote, read back here
    assert written.shape == (7, 72, 90, 3) and np.ptp(written) > 0


def test_data_parallel_part_is_skipped_without_two_gpus(clips, tmp_path):
    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has 2 GPUs: the part would run")
    result = gpu_check.run_part(lambda: gpu_parts.check_data_parallel(fp16_config(clips, tmp_path / "run"),
                                                                      tmp_path / "rt"))
    assert result["status"] == "skipped" and "needs 2 GPUs" in result["reason"]


@pytest.mark.ray
@pytest.mark.soak  # ~75 s of Ray Train start-up; fit_on_ray_train itself is tested in test_data_parallel_ray.py
def test_data_parallel_part_on_two_cpu_workers(ray_session, clips, tmp_path):
    config = fp16_config(clips, tmp_path / "run", max_steps=4, val_step_every=2, save_step_every=4)
    result = gpu_check.run_part(lambda: gpu_parts.check_data_parallel(config, tmp_path / "rt", gpus_per_worker=0,
                                                                      cpus_per_worker=0.5))
    assert result["status"] == "passed", result
    assert [[w["step"] for w in r["workers"]] for r in result["reports"]] == [[2, 2], [4, 4]]
    assert [r["checkpoint"] for r in result["reports"]] == [True, True]
    assert result["rank0_device"] == "cpu" and result["precision"] == "fp16" and result["grad_scale_final"] > 0
    assert result["backend"].startswith("gloo")


@pytest.mark.ray
def test_serve_part_round_trip(ray_session, tmp_path):
    from test_serve import save_test_checkpoint

    checkpoint = save_test_checkpoint(tmp_path / "tiny.pth", seed=1, step=7)
    result = gpu_check.run_part(lambda: gpu_parts.check_serve(checkpoint, "cpu", num_gpus=0, precision="fp32",
                                                              size=(24, 30)))
    assert result["status"] == "passed", result
    assert result["replica_device"] == "cpu" and result["replica_precision"] == "fp32"
    assert result["max_diff_levels"] <= 1 and result["lr_size"] == "24x30"
