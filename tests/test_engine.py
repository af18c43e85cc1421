import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import make_clip, tiny_train_config, write_clips
from vsr_core.checkpoint import CHECKPOINT_KEYS, load_checkpoint
from vsr_core.config import TrainConfig
from vsr_core.data.datasets import Augmentation, WindowPatchDataset
from vsr_core.data.degradation import bicubic_downsample
from vsr_core.engine.hooks import TrainingHooks
from vsr_core.engine.schedule import ETA_MIN
from vsr_core.engine.trainer import Trainer, TrainingDiverged


@pytest.fixture(autouse=True)
def frame_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VSR_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def clips(tmp_path):
    return write_clips(tmp_path)


def tiny_config(clips, tmp_path, **overrides) -> TrainConfig:
    return tiny_train_config(clips, overrides.pop("output_dir", tmp_path / "run"), **overrides)


def params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_accumulation_steps_the_optimizer_every_n_micro_batches(clips, tmp_path):
    trainer = Trainer(tiny_config(clips, tmp_path))
    forwards, updates = [], []
    trainer.model.register_forward_hook(lambda *_: forwards.append(1))
    trainer.optimizer.register_step_post_hook(lambda *_: updates.append(len(forwards)))
    trainer.train_step()
    trainer.train_step()
    assert updates == [3, 6]


def test_accumulated_step_equals_one_big_batch(clips, tmp_path):
    # 3 micro-batches of 2 see the same 6 samples as 1 batch of 6: the gradient is the same mean.
    a = Trainer(tiny_config(clips, tmp_path, accumulation_steps=3, batch_size=2, output_dir=str(tmp_path / "a")))
    b = Trainer(tiny_config(clips, tmp_path, accumulation_steps=1, batch_size=6, output_dir=str(tmp_path / "b")))
    torch.nn.init.normal_(a.model.upsample[0].weight, std=0.01)
    b.model.load_state_dict(a.model.state_dict())
    # Plain SGD: the update is the gradient itself. (AdamW's first step is ~lr*sign(grad), which
    # flips for near-zero gradients on float summation-order noise.)
    a.optimizer = torch.optim.SGD(a.model.parameters(), lr=1.0)
    b.optimizer = torch.optim.SGD(b.model.parameters(), lr=1.0)
    a.train_step()
    b.train_step()
    assert torch.allclose(params(a.model), params(b.model), atol=1e-6)


def test_learning_rate_follows_cosine_schedule_to_eta_min(clips, tmp_path):
    config = tiny_config(clips, tmp_path, max_steps=6, accumulation_steps=1, batch_size=1)
    trainer = Trainer(config)
    lr0 = config.learning_rate
    for k in range(6):
        expected = ETA_MIN + (lr0 - ETA_MIN) * (1 + math.cos(math.pi * k / 6)) / 2
        assert trainer.train_step().lr == pytest.approx(expected, rel=1e-9)
    assert trainer.lr == pytest.approx(ETA_MIN)


def test_augmentation_transforms_all_frames_and_gt_alike():
    clip = make_clip(7, 40, 40)
    dataset = WindowPatchDataset([clip], patch_size=6, num_patches=10, seed=5)
    raw = WindowPatchDataset([clip], patch_size=6, num_patches=10, seed=5, augment=False)
    seen = set()
    for g in range(40):
        lr, gt = dataset[g]
        lr_raw, gt_raw = raw[g]
        aug = Augmentation.draw(np.random.default_rng([5, 2, g]))
        seen.add(aug)
        assert torch.equal(gt, aug.apply(gt_raw))
        # the LR window is the degradation of the augmented HR window: frames and GT stay aligned
        assert torch.allclose(lr[2], bicubic_downsample(gt), atol=1e-6)
        assert torch.allclose(lr, aug.apply(lr_raw), atol=1.5 / 255)
    assert {a.rot90 for a in seen} == {0, 1, 2, 3} and {a.hflip for a in seen} == {True, False}


def test_validation_is_deterministic_on_whole_frames(clips, tmp_path):
    trainer = Trainer(tiny_config(clips, tmp_path))
    first, second = trainer.validate(), trainer.validate()
    assert first.psnr == second.psnr and first.ssim == second.ssim  # no random augmentation
    assert first.tof == second.tof and first.flicker == second.flicker and first.tof is not None
    # the image strip is LR-bicubic | output | GT of a whole (3-cropped) 36x42 frame
    assert first.image.shape == (36, 3 * 42, 3)
    assert trainer.model.training  # validation hands the model back in training mode


def test_checkpoint_has_exactly_the_eight_keys_and_loads_safely(clips, tmp_path):
    trainer = Trainer(tiny_config(clips, tmp_path, max_steps=2))
    trainer.fit()
    raw = torch.load(tmp_path / "run" / "latest.pth", weights_only=True)
    assert tuple(raw) == CHECKPOINT_KEYS
    assert raw["step"] == 2 and raw["training_phase"] == "pretrain" and raw["config"]["PRESET"] == "tiny"
    assert raw["scaler_state_dict"] == {}  # GradScaler is off on CPU


def test_resume_equals_the_uninterrupted_run(clips, tmp_path):
    straight = Trainer(tiny_config(clips, tmp_path, max_steps=4, output_dir=str(tmp_path / "straight")))
    straight.fit()
    first_half = Trainer(tiny_config(clips, tmp_path, max_steps=4, output_dir=str(tmp_path / "halves")))
    for _ in range(2):
        first_half.train_step()
    first_half.save()
    resumed = Trainer(tiny_config(clips, tmp_path, max_steps=4, output_dir=str(tmp_path / "halves")),
                      resume_from=tmp_path / "halves" / "latest.pth")
    assert resumed.step == 2
    resumed.fit()
    assert resumed.step == 4
    assert torch.allclose(params(straight.model), params(resumed.model), atol=1e-6, rtol=0)
    assert resumed.lr == pytest.approx(straight.lr)


def test_finetune_starts_fresh_from_weights(clips, tmp_path):
    base = Trainer(tiny_config(clips, tmp_path, max_steps=2, output_dir=str(tmp_path / "base")))
    base.fit()
    tuned = Trainer(tiny_config(clips, tmp_path, lr_exponent=-5, weight_decay=0.001, output_dir=str(tmp_path / "ft")),
                    finetune_from=tmp_path / "base" / "latest.pth")
    assert tuned.step == 0 and tuned.training_phase == "finetune" and tuned.lr == pytest.approx(1e-5)
    assert torch.equal(params(tuned.model), params(base.model))
    assert not tuned.optimizer.state  # fresh AdamW moments
    tuned.fit()
    assert load_checkpoint(tmp_path / "ft" / "latest.pth")["training_phase"] == "finetune"


def test_nan_losses_are_skipped_and_counted_then_stop_the_run(clips, tmp_path):
    trainer = Trainer(tiny_config(clips, tmp_path, max_steps=20, max_bad_steps=3))
    trainer.train_step()
    before = params(trainer.model)
    original_forward = trainer.model.forward
    trainer.model.forward = lambda x: original_forward(x) * float("nan")
    metrics = trainer.train_step()
    assert metrics.skipped and metrics.skipped_steps == 1 and math.isnan(metrics.loss_total)
    assert torch.equal(params(trainer.model), before)  # no update from a NaN step
    trainer.train_step()
    with pytest.raises(TrainingDiverged, match="3 consecutive steps"):
        trainer.train_step()


def test_hooks_see_steps_validations_and_checkpoints(clips, tmp_path):
    events = []

    class Recorder(TrainingHooks):
        def on_step(self, trainer, m):
            events.append(("step", m.step))

        def on_validation(self, trainer, v):
            events.append(("val", v.step))

        def on_checkpoint(self, trainer, path):
            events.append(("ckpt", trainer.step))

        def should_stop(self, trainer):
            return trainer.step >= 3

    trainer = Trainer(tiny_config(clips, tmp_path, max_steps=10))
    trainer.fit(Recorder())
    assert events == [("step", 1), ("step", 2), ("val", 2), ("ckpt", 2), ("step", 3), ("ckpt", 3)]
    assert load_checkpoint(tmp_path / "run" / "latest.pth")["step"] == 3


def test_tensorboard_has_every_tag_of_the_seed(clips, tmp_path):
    # The full preset, so the tags are Block_00..Block_29; tiny patches keep it fast.
    config = tiny_config(clips, tmp_path, preset="full", max_steps=2, accumulation_steps=1, batch_size=1,
                         patch_size=6, perceptual_weight=0.1, vgg_weights="random", val_max_frames=1)
    with pytest.warns(UserWarning, match="randomly initialised"):
        trainer = Trainer(config)
    trainer.fit()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    expected = {"Training/Loss_L1", "Training/Loss_Perceptual", "Training/Loss_Total", "Training/LearningRate",
                "Validation/PSNR", "Validation/SSIM"} | {f"Layers/Block_{i:02d}" for i in range(30)}
    assert expected <= scalars
    assert {"Validation/tOF", "Validation/Flicker"} <= scalars  # temporal consistency, beyond the seed's tags
    assert "Layers/ActivityDistribution" in events.Tags()["histograms"]
    assert events.Tags()["images"]
    assert len(events.Scalars("Training/Loss_Total")) == 2
    assert events.Scalars("Training/Loss_Perceptual")[0].value > 0


def test_a_killed_run_leaves_a_loadable_latest(clips, tmp_path):
    config = tiny_config(clips, tmp_path, max_steps=100000, save_step_every=1, val_step_every=100000)
    config.save(tmp_path / "cfg.json")
    process = subprocess.Popen(
        [sys.executable, "-m", "vsr_core.cli", "train", "--config", str(tmp_path / "cfg.json")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ},
    )
    latest = tmp_path / "run" / "latest.pth"
    deadline = time.time() + 120
    while time.time() < deadline and not (latest.exists() and load_checkpoint(latest)["step"] >= 3):
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    checkpoint = load_checkpoint(latest)
    assert checkpoint["step"] >= 3
    resumed = Trainer(config.replace(max_steps=checkpoint["step"] + 1), resume_from=latest)
    resumed.fit()
    assert resumed.step == checkpoint["step"] + 1


def test_bad_config_fails_at_start_naming_the_key(tmp_path):
    (tmp_path / "cfg.json").write_text('{"LR_EXPONENT": -4, "MAX_STEP": 10}')
    result = subprocess.run([sys.executable, "-m", "vsr_core.cli", "train", "--config", str(tmp_path / "cfg.json")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "MAX_STEP" in result.stderr and "MAX_STEPS" in result.stderr


def test_live_config_change_moves_the_cosine_schedule(clips, tmp_path):
    trainer = Trainer(tiny_config(clips, tmp_path, max_steps=10, accumulation_steps=1, batch_size=1))
    for _ in range(3):
        trainer.train_step()
    trainer.update_config(LR_EXPONENT=-2, MAX_STEPS=20, WEIGHT_DECAY=0.5)
    expected = ETA_MIN + (1e-2 - ETA_MIN) * (1 + math.cos(math.pi * 3 / 20)) / 2
    assert trainer.lr == pytest.approx(expected)
    assert trainer.train_step().lr == pytest.approx(expected)
    following = ETA_MIN + (1e-2 - ETA_MIN) * (1 + math.cos(math.pi * 4 / 20)) / 2
    assert trainer.lr == pytest.approx(following)
    assert trainer.optimizer.param_groups[0]["weight_decay"] == 0.5
    with pytest.raises(ValueError, match="live keys"):
        trainer.update_config(PRESET="full")
    with pytest.raises(ValueError, match="LR_EXPONENT"):
        trainer.update_config(LR_EXPONENT="fast")


def test_live_changes_to_the_schedule_apply_to_the_running_loop(clips, tmp_path):
    class ShortenAtStep2(TrainingHooks):
        validated = []

        def on_step(self, trainer, m):
            if m.step == 2:
                trainer.request_config(MAX_STEPS=4, VAL_STEP_EVERY=3)

        def on_validation(self, trainer, v):
            self.validated.append(v.step)

    trainer = Trainer(tiny_config(clips, tmp_path, max_steps=10, val_step_every=100, save_step_every=100))
    hooks = ShortenAtStep2()
    trainer.fit(hooks)
    assert trainer.step == 4 and hooks.validated == [3, 4]
