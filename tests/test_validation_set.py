"""The validation signal: gain-over-bicubic arithmetic, the choice of frames and crops, the held-out
range of the training clips, the temporal runs, and the Validator's numbers against an independent
computation."""
import numpy as np
import pytest
import torch

from conftest import make_clip, random_model, tiny_train_config, write_clips
from vsr_core.data.datasets import training_clips
from vsr_core.data.degradation import bicubic_downsample, bicubic_upsample
from vsr_core.data.validation_set import (HOLDOUT_GAP, build_validation_set, detailed_crops, spread_indices,
                                          temporal_run, temporal_runs)
from vsr_core.engine.cli import load_config
from vsr_core.engine.trainer import Trainer
from vsr_core.engine.validation import Validator
from vsr_core.frames import to_tensor, to_uint8, window_indices
from vsr_core.inference import BicubicBaseline, Upscaler
from vsr_core.metrics import format_gain, gain_over_bicubic, psnr
from vsr_core.metrics.temporal import flicker, tof


@pytest.fixture(autouse=True)
def frame_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VSR_CACHE_DIR", str(tmp_path / "cache"))


def test_gain_over_bicubic_is_the_mean_difference_on_the_same_items():
    assert gain_over_bicubic([30.0, 32.0], [29.0, 31.5]) == pytest.approx(0.75)
    assert gain_over_bicubic([30.0, 32.0], [29.0, 31.5]) == pytest.approx(np.mean([30, 32]) - np.mean([29, 31.5]))
    assert gain_over_bicubic([28.0], [28.5]) == pytest.approx(-0.5)
    assert gain_over_bicubic([float("inf")], [40.0]) == float("inf")  # a perfect output
    for model, bicubic in (([1.0], [1.0, 2.0]), ([], []), ([float("nan")], [1.0]), ([1.0], [float("inf")])):
        with pytest.raises(ValueError):
            gain_over_bicubic(model, bicubic)
    assert format_gain(0.354) == "+0.35 dB" and format_gain(-1.2) == "-1.20 dB" and format_gain(float("nan")) == "n/a"


def test_spread_indices_cover_the_range_evenly():
    assert spread_indices(4, 0, 99) == [12, 37, 62, 87]
    assert spread_indices(3, 10, 12) == [10, 11, 12]
    assert spread_indices(8, 5, 7) == [5, 6, 7]  # fewer frames than asked: each once
    assert spread_indices(2, 5, 4) == [] and spread_indices(0, 0, 9) == []


def test_detailed_crops_find_the_textured_cells():
    rng = np.random.default_rng(0)
    frame = np.full((90, 135, 3), 128, np.uint8)  # flat: bicubic is exact there
    frame[45:90, 90:135] = rng.integers(0, 256, (45, 45, 3), dtype=np.uint8)  # one noisy 45x45 cell
    frame[0:45, 0:45] = np.where(rng.random((45, 45, 1)) < 0.5, 100, 160).astype(np.uint8)  # a milder texture
    assert detailed_crops(frame, 45, 2) == [(45, 90), (0, 0)]  # most detailed first
    assert detailed_crops(frame[:30], 45, 2) == [(0, 45)]  # frame smaller than a crop: centered, on the 3-grid


def test_held_out_frames_are_not_trained_on_and_validate_inside_their_range():
    clip = make_clip(num_frames=20, height=24, width=30)
    first = 20 - 6
    items = build_validation_set([], [("train (held out)", clip, first)], frames_per_clip=3)
    assert [item.frame for item in items] == spread_indices(3, first + HOLDOUT_GAP, 19)
    for item in items:
        assert item.clip == "train (held out)" and item.hr.shape == (24, 30, 3)
        window = [first + i for i in window_indices(item.frame - first, 6)]
        assert min(window) >= first  # context never reaches into the training frames
        np.testing.assert_array_equal(item.lr_window, to_uint8(bicubic_downsample(to_tensor(clip[window]))))
        np.testing.assert_array_equal(item.hr, clip[item.frame])
    with pytest.raises(ValueError, match="validation set is empty"):
        build_validation_set([], [], 3)


def test_a_temporal_run_is_consecutive_frames_of_one_detailed_crop():
    clip = make_clip(num_frames=11, height=36, width=42)
    run = temporal_run(clip, "val", crop=18)
    assert [item.frame for item in run] == [3, 4, 5, 6]  # 4 frames from the middle of the clip
    top, left = detailed_crops(clip[3], 18, 1)[0]  # the most detailed crop of the first, for all of them
    for item in run:
        assert (item.clip, item.top, item.left) == ("val", top, left)
        hr_window = clip[window_indices(item.frame, 11), top : top + 18, left : left + 18]
        np.testing.assert_array_equal(item.hr, clip[item.frame, top : top + 18, left : left + 18])
        np.testing.assert_array_equal(item.lr_window, to_uint8(bicubic_downsample(to_tensor(hr_window))))
    assert [item.frame for item in temporal_run(clip[:3], "short", crop=0)] == [0, 1, 2]  # whole frames, fewer
    assert temporal_run(clip[:1], "one frame", crop=0) == []  # no pair to compare
    assert [run[0].clip for run in temporal_runs([("a", clip), ("b", clip[:1])], 18)] == ["a"]


def test_training_clips_leave_out_the_held_out_frames(tmp_path):
    clips = write_clips(tmp_path, num_frames=10)
    whole, = training_clips(tiny_train_config(clips, tmp_path / "run"))
    cut, = training_clips(tiny_train_config(clips, tmp_path / "run", holdout_frames=4))
    assert len(whole) == 10 and len(cut) == 6
    np.testing.assert_array_equal(cut, whole[:6])
    with pytest.raises(ValueError, match="HOLDOUT_FRAMES 8"):
        training_clips(tiny_train_config(clips, tmp_path / "run", holdout_frames=8))


def test_validator_gain_matches_an_independent_computation(tmp_path):
    clips = write_clips(tmp_path, num_frames=10, height=36, width=42)
    config = tiny_train_config(clips, tmp_path / "run", val_max_frames=2, holdout_frames=4, val_crop=18,
                               val_crops_per_frame=2)
    validator = Validator(torch.device("cpu"))
    model = random_model("tiny", seed=1)
    metrics = validator(model, config, step=7)
    assert set(metrics.per_clip) == {"val.mp4", "train.mp4 (held out)"}
    assert metrics.gain == pytest.approx(metrics.psnr - metrics.bicubic_psnr)

    # independently: the same items scored one at a time, bicubic from the plain interpolation
    from vsr_core.engine.validation import validation_items

    items = validation_items(config)
    assert len(items) == 2 * 2 + 2 * 2  # 2 frames x 2 crops, for the validation clip and the held-out range
    upscaler = Upscaler(model, device="cpu")
    model_psnr = [psnr(upscaler.upscale_window_uint8(i.lr_window), i.hr, 3, y_channel=True) for i in items]
    bicubic_psnr = [psnr(to_uint8(bicubic_upsample(to_tensor(i.lr_window[2])[None]))[0], i.hr, 3, y_channel=True)
                    for i in items]
    assert metrics.gain == pytest.approx(gain_over_bicubic(model_psnr, bicubic_psnr), abs=1e-6)
    assert metrics.bicubic_psnr == pytest.approx(np.mean(bicubic_psnr), abs=1e-6)

    # tOF and flicker: one run in the validation clip and one in the held-out range (its frames only),
    # each upscaled one window at a time; the metrics are the means over the runs
    from vsr_core.engine.validation import validation_runs

    runs = validation_runs(config)
    assert [(run[0].clip, len(run)) for run in runs] == [("val.mp4", 4), ("train.mp4 (held out)", 4)]
    assert all(item.frame >= 0 for item in runs[1])  # indices of the held-out range, never a trained frame
    per_run = []
    for run in runs:
        hrs = [item.hr for item in run]
        model_out = [upscaler.upscale_window_uint8(item.lr_window) for item in run]
        bicubic_out = [to_uint8(bicubic_upsample(to_tensor(item.lr_window[2])[None]))[0] for item in run]
        per_run.append((tof(model_out, hrs, 3), flicker(model_out, hrs, 3), tof(bicubic_out, hrs, 3),
                        flicker(bicubic_out, hrs, 3)))
    expected = np.mean(per_run, axis=0)
    assert (metrics.tof, metrics.flicker, metrics.bicubic_tof, metrics.bicubic_flicker) == pytest.approx(
        tuple(expected), rel=1e-6)
    assert metrics.per_clip["val.mp4"]["tof"] == pytest.approx(per_run[0][0], rel=1e-6)
    assert metrics.per_clip["train.mp4 (held out)"]["tof"] == pytest.approx(per_run[1][0], rel=1e-6)

    # bicubic itself as the model: no gain at all, bicubic's own temporal scores
    as_bicubic = validator(BicubicBaseline(), config, step=0)
    assert as_bicubic.gain == pytest.approx(0.0, abs=1e-9)
    assert (as_bicubic.tof, as_bicubic.flicker) == pytest.approx((metrics.bicubic_tof, metrics.bicubic_flicker))


def test_finetune_defaults_for_vsr_train(tmp_path):
    clips = write_clips(tmp_path)
    base = Trainer(tiny_train_config(clips, tmp_path / "base", max_steps=1, val_step_every=5, save_step_every=5))
    base.fit()
    checkpoint = str(tmp_path / "base" / "latest.pth")
    config = load_config(None, [], finetune_from=checkpoint)  # the checkpoint's own config, fine-tune LR/WD
    assert (config.lr_exponent, config.weight_decay, config.preset) == (-5.0, 0.001, "tiny")
    assert config.train_data == [str(clips["train"])]
    config = load_config(None, ["LR_EXPONENT=-4.5"], finetune_from=checkpoint)
    assert (config.lr_exponent, config.weight_decay) == (-4.5, 0.001)
    assert load_config(None, [], resume=checkpoint).lr_exponent == -3  # a resume keeps the run's own
