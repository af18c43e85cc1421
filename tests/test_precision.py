"""The precision rule (vsr_core.frames.resolve_precision) and the bf16 quality guard.

bf16 autocast runs on every CPU (only its speed depends on native support), so the guard runs
everywhere. tests/data/small_60steps.pth: the small preset after 60 training steps (L1, lr 1e-3,
batch 4 of 24 px patches) on conftest's synthetic clip ``write_clips(height=96, width=120)``,
trimmed to its weights; it beats bicubic on that clip's validation twin, so its residual
branch does real work in the comparison."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_clips
from vsr_core import frames
from vsr_core.frames import PRECISION_ENV, resolve_precision

TRAINED_SMALL = Path(__file__).parent / "data" / "small_60steps.pth"
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(PRECISION_ENV, raising=False)


def test_explicit_choices_and_errors(no_env):
    for precision in ("fp32", "bf16", "fp16"):
        assert resolve_precision(precision, CPU) == precision
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16; got 'int8'"):
        resolve_precision("int8", CPU)
    with pytest.raises(ValueError, match="precision 'bf16' is not available here; choose one of fp32"):
        resolve_precision("bf16", CPU, allowed=("fp32",))


def test_auto_rule(no_env, monkeypatch):
    def must_not_measure():
        raise AssertionError("measured although the answer was known")

    monkeypatch.setattr(frames, "cpu_bf16_speedup", must_not_measure)
    assert resolve_precision("auto", CUDA) == "fp16"
    assert resolve_precision("auto", CPU, training=True) == "fp32"  # bf16 training is opt-in
    monkeypatch.setattr(frames, "native_bf16", lambda: False)  # e.g. an AVX2-only CPU
    assert resolve_precision("auto", CPU) == "fp32"
    monkeypatch.setattr(frames, "native_bf16", lambda: True)
    for speedup, expected in ((1.8, "bf16"), (1.05, "fp32"), (0.5, "fp32")):
        monkeypatch.setattr(frames, "cpu_bf16_speedup", lambda s=speedup: s)
        assert resolve_precision("auto", CPU) == expected
        assert resolve_precision("auto", CPU, allowed=("fp32",)) == "fp32"  # e.g. the onnxruntime backend
    monkeypatch.setenv(PRECISION_ENV, "fp16")
    assert resolve_precision("auto", CPU) == "fp16" and resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("auto", CPU, allowed=("fp32",)) == "fp32"  # the machine's choice, where it runs
    monkeypatch.setenv(PRECISION_ENV, "half")
    with pytest.raises(ValueError, match=PRECISION_ENV):
        resolve_precision("auto", CPU)


def test_the_measurement_is_cached_per_machine(no_env, monkeypatch, tmp_path):
    monkeypatch.setenv("VSR_CACHE_DIR", str(tmp_path))
    calls = []
    real = frames.measure_bf16_speedup
    monkeypatch.setattr(frames, "measure_bf16_speedup", lambda: calls.append(1) or real(repeats=3))
    first = frames.cpu_bf16_speedup()
    assert first > 0 and frames.cpu_bf16_speedup() == pytest.approx(first, abs=1e-3) and len(calls) == 1
    (entry,) = __import__("json").loads((tmp_path / "precision.json").read_text()).values()
    assert entry["bf16_speedup"] == pytest.approx(first, abs=1e-3)
    (tmp_path / "precision.json").write_text("{not json")  # a broken cache is measured again, not an error
    frames.cpu_bf16_speedup()
    assert len(calls) == 2


def test_autocast_follows_the_precision():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.rand(1, 3, 8, 8)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), (None, torch.float32)):
        with frames.autocast(CPU, precision):
            assert conv(x).dtype == dtype


def test_bf16_matches_fp32_within_0_05_db_on_a_trained_small_model(tmp_path):
    from vsr_core.data.video_io import read_frames
    from vsr_core.evaluate import evaluate_frames
    from vsr_core.inference import Upscaler

    clip = read_frames(write_clips(tmp_path, num_frames=6, height=96, width=120)["val"])
    fp32 = Upscaler.from_checkpoint(TRAINED_SMALL, device="cpu", precision="fp32")
    bf16 = Upscaler.from_checkpoint(TRAINED_SMALL, device="cpu", precision="bf16")
    assert fp32.checkpoint_info["config"]["PRESET"] == "small"
    scores = {name: evaluate_frames(u, iter(clip), "val") for name, u in (("fp32", fp32), ("bf16", bf16))}
    bicubic = evaluate_frames(Upscaler.bicubic(device="cpu"), iter(clip), "val")[0].y_psnr
    psnr = {name: s[0].y_psnr for name, s in scores.items()}
    difference = psnr["bf16"] - psnr["fp32"]
    print(f"Y-PSNR fp32 {psnr['fp32']:.4f} dB, bf16 {psnr['bf16']:.4f} dB, bf16 - fp32 {difference:+.4f} dB, "
          f"bicubic {bicubic:.4f} dB")
    assert psnr["fp32"] > bicubic + 0.05  # trained: the comparison is not of two bilinear anchors
    assert abs(difference) <= 0.05
    outputs = {name: s[1][1] for name, s in scores.items()}  # the first frame's upscaled image
    assert not np.array_equal(outputs["fp32"], outputs["bf16"])  # bf16 really ran


def test_auto_picks_fp32_where_bf16_is_emulated(tmp_path):
    """oneDNN limited to AVX2 (no bf16 instructions, like an AVX2-only CPU): bf16 is emulated and
    slow, and ``auto`` must measure that and choose fp32 (the flags alone would say bf16 here)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "VSR_CACHE_DIR": str(tmp_path)}
    env.pop(PRECISION_ENV, None)
    code = ("import torch; from vsr_core.frames import resolve_precision, cpu_bf16_speedup; "
            "print(resolve_precision('auto', torch.device('cpu')), cpu_bf16_speedup())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parent.parent, check=True).stdout.split()
    assert out[0] == "fp32", out
    assert float(out[1]) < 1.0  # measured: emulated bf16 is several times slower than fp32


def test_training_in_bf16_is_an_option(tmp_path, no_env):
    from conftest import tiny_train_config
    from vsr_core.config import ConfigError, TrainConfig
    from vsr_core.engine.trainer import Trainer

    clips = write_clips(tmp_path)
    with pytest.raises(ConfigError, match="PRECISION must be one of"):
        TrainConfig.from_dict({"PRECISION": "half"})
    assert Trainer(tiny_train_config(clips, tmp_path / "auto")).precision == "fp32"  # auto on a CPU
    trainer = Trainer(tiny_train_config(clips, tmp_path / "bf16", precision="bf16", max_steps=2, val_step_every=2))
    assert trainer.precision == "bf16" and not trainer.scaler.is_enabled()
    trainer.fit()
    assert trainer.step == 2 and trainer.skipped_steps == 0
    assert trainer.last_validation is not None and np.isfinite(trainer.last_validation.psnr)
