"""Weight averaging (EMA_DECAY): the warm-up, the average against a plain reference computed from
the raw weights, what validation and checkpoints use, exact resume, and old checkpoints."""
import pytest
import torch

from conftest import tiny_train_config, write_clips
from vsr_core.checkpoint import CHECKPOINT_KEYS, RAW_WEIGHTS_KEY, load_checkpoint, model_from_checkpoint
from vsr_core.engine.ema import decay_at
from vsr_core.engine.trainer import Trainer
from vsr_core.engine.validation import Validator


@pytest.fixture(autouse=True)
def frame_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VSR_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def clips(tmp_path):
    return write_clips(tmp_path)


def config_for(clips, folder, **overrides):
    return tiny_train_config(clips, folder, **{"ema_decay": 0.999, **overrides})


def params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_the_warm_up_keeps_early_averages_close_to_the_weights():
    assert decay_at(0.999, 0) == pytest.approx(0.1)  # the first average is 90% the trained weights
    assert decay_at(0.999, 8) == pytest.approx(0.5) and decay_at(0.999, 80) == pytest.approx(0.9)
    assert decay_at(0.999, 8990) == pytest.approx(0.999) and decay_at(0.999, 10**6) == 0.999  # then the decay
    assert decay_at(0.5, 100) == 0.5


def test_the_average_matches_a_plain_reference_of_the_raw_weights(clips, tmp_path):
    trainer = Trainer(config_for(clips, tmp_path / "run", ema_decay=0.9, lr_exponent=-2))  # big steps: a clear lag
    raw = [params(trainer.model).double()]  # the init, then the weights after every step
    trainer.optimizer.register_step_post_hook(lambda *_: raw.append(params(trainer.model).double()))
    for _ in range(5):
        trainer.train_step()
    average = raw[0]
    for step, weights in enumerate(raw[1:]):
        d = min(0.9, (1 + step) / (10 + step))
        average = d * average + (1 - d) * weights
    torch.testing.assert_close(params(trainer.ema.model).double(), average, rtol=0, atol=1e-6)
    assert (params(trainer.ema.model) - params(trainer.model)).abs().max() > 1e-4  # far beyond the tolerance: really an average
    assert all(not p.requires_grad for p in trainer.ema.model.parameters())


def test_validation_and_checkpoints_use_the_average_and_keep_the_raw_weights(clips, tmp_path):
    trainer = Trainer(config_for(clips, tmp_path / "run", max_steps=3))
    trainer.fit()
    raw, averaged = trainer.model.state_dict(), trainer.ema.state_dict()
    checkpoint = torch.load(tmp_path / "run" / "latest.pth", weights_only=True)
    assert tuple(checkpoint) == CHECKPOINT_KEYS
    torch.testing.assert_close(checkpoint["model_state_dict"], averaged, rtol=0, atol=0)
    torch.testing.assert_close(checkpoint["optimizer_state_dict"][RAW_WEIGHTS_KEY], raw, rtol=0, atol=0)
    consumer, _ = model_from_checkpoint(tmp_path / "run" / "latest.pth")  # the Upscaler, Serve, vsr export
    torch.testing.assert_close(consumer.state_dict(), averaged, rtol=0, atol=0)

    metrics = trainer.validate()
    validator = Validator(torch.device("cpu"))
    assert metrics.psnr == validator(consumer, trainer.config, trainer.step).psnr
    assert metrics.psnr != validator(trainer.model, trainer.config, trainer.step).psnr  # not the raw weights
    assert trainer.last_validation.psnr == metrics.psnr


def test_resume_with_ema_equals_the_uninterrupted_run(clips, tmp_path):
    straight = Trainer(config_for(clips, tmp_path / "straight", max_steps=4))
    straight.fit()
    first_half = Trainer(config_for(clips, tmp_path / "halves", max_steps=4))
    for _ in range(2):
        first_half.train_step()
    first_half.save()
    resumed = Trainer(config_for(clips, tmp_path / "halves", max_steps=4), resume_from=tmp_path / "halves" / "latest.pth")
    assert resumed.step == 2
    torch.testing.assert_close(params(resumed.ema.model), params(first_half.ema.model), rtol=0, atol=0)
    resumed.fit()
    assert torch.allclose(params(straight.model), params(resumed.model), atol=1e-6, rtol=0)
    assert torch.allclose(params(straight.ema.model), params(resumed.ema.model), atol=1e-6, rtol=0)
    assert not torch.equal(params(resumed.ema.model), params(resumed.model))


def test_ema_off_trains_and_saves_exactly_as_before(clips, tmp_path):
    off = Trainer(config_for(clips, tmp_path / "off", ema_decay=0, max_steps=3))
    on = Trainer(config_for(clips, tmp_path / "on", max_steps=3))
    off.fit()
    on.fit()
    assert off.ema is None and off.inference_model is off.model
    assert torch.equal(params(off.model), params(on.model))  # the average never steers training
    checkpoint = load_checkpoint(tmp_path / "off" / "latest.pth")
    assert set(checkpoint["optimizer_state_dict"]) == {"state", "param_groups"}  # the optimizer's own, nothing added
    torch.testing.assert_close(checkpoint["model_state_dict"], off.model.state_dict(), rtol=0, atol=0)
    assert off.last_validation.psnr == Validator(torch.device("cpu"))(off.model, off.config, 3).psnr


def test_an_old_checkpoint_without_an_average_resumes_with_ema_on(clips, tmp_path):
    old = Trainer(config_for(clips, tmp_path / "old", ema_decay=0, max_steps=4))
    for _ in range(2):
        old.train_step()
    old.save()
    resumed = Trainer(config_for(clips, tmp_path / "old", max_steps=4), resume_from=tmp_path / "old" / "latest.pth")
    assert resumed.step == 2
    assert torch.equal(params(resumed.model), params(old.model))
    assert torch.equal(params(resumed.ema.model), params(old.model))  # the average starts from the trained weights
    resumed.fit()
    checkpoint = load_checkpoint(tmp_path / "old" / "latest.pth")
    torch.testing.assert_close(checkpoint["optimizer_state_dict"][RAW_WEIGHTS_KEY], resumed.model.state_dict())


def test_an_averaged_checkpoint_resumes_with_ema_off_from_its_raw_weights(clips, tmp_path):
    run = Trainer(config_for(clips, tmp_path / "run", max_steps=4))
    for _ in range(2):
        run.train_step()
    run.save()
    resumed = Trainer(config_for(clips, tmp_path / "run", ema_decay=0, max_steps=4),
                      resume_from=tmp_path / "run" / "latest.pth")
    assert resumed.ema is None and torch.equal(params(resumed.model), params(run.model))
    resumed.train_step()  # the optimizer state loaded without the extra key


def test_a_finetune_starts_from_the_averaged_weights(clips, tmp_path):
    base = Trainer(config_for(clips, tmp_path / "base", max_steps=2))
    base.fit()
    tuned = Trainer(config_for(clips, tmp_path / "ft"), finetune_from=tmp_path / "base" / "latest.pth")
    assert torch.equal(params(tuned.model), params(base.ema.model))
    assert torch.equal(params(tuned.ema.model), params(base.ema.model))
    assert not tuned.optimizer.state
