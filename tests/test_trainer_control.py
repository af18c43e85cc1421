"""Changing a run: requests taken by fit at step boundaries (pause, stop, config), the schedule
the trainer owns, resuming with a changed config, Ctrl-C, and the DataLoader workers' end."""
import math
import multiprocessing
import os
import signal
import threading
import time

import pytest
from torch.optim.optimizer import register_optimizer_step_post_hook

from test_engine import clips, frame_cache, tiny_config  # noqa: F401 - fixtures
from vsr_core import cli
from vsr_core.checkpoint import load_checkpoint
from vsr_core.engine.hooks import TrainingHooks
from vsr_core.engine.schedule import ETA_MIN
from vsr_core.engine.trainer import Trainer


def cosine(base_lr: float, step: int, max_steps: int) -> float:
    return ETA_MIN + (base_lr - ETA_MIN) * (1 + math.cos(math.pi * step / max_steps)) / 2


def quick(clips, tmp_path, **overrides):
    values = dict(accumulation_steps=1, batch_size=1, val_step_every=10**6, save_step_every=10**6)
    return tiny_config(clips, tmp_path, **{**values, **overrides})


# --- the schedule has one owner ------------------------------------------------------------------
def test_the_trainer_tells_when_it_validates_and_checkpoints_next(clips, tmp_path):
    trainer = Trainer(quick(clips, tmp_path, max_steps=10, val_step_every=4, save_step_every=3))
    assert (trainer.next_validation_step(), trainer.next_checkpoint_step()) == (4, 3)
    for _ in range(4):
        trainer.train_step()
    assert trainer.validation_due() and not trainer.checkpoint_due()
    assert (trainer.next_validation_step(), trainer.next_checkpoint_step()) == (8, 6)
    for _ in range(5):
        trainer.train_step()
    assert (trainer.next_validation_step(), trainer.next_checkpoint_step()) == (10, 10)  # the last step
    assert not trainer.validation_due()
    trainer.train_step()
    assert trainer.validation_due() and trainer.checkpoint_due()


# --- requests -------------------------------------------------------------------------------------
def test_hooks_cannot_change_the_trainer_directly_inside_fit(clips, tmp_path):
    class Direct(TrainingHooks):
        def __init__(self, change):
            self.change = change

        def on_step(self, trainer, m):
            self.change(trainer)

    for change, hint in ((lambda t: t.update_config(MAX_STEPS=5), "request_config"),
                         (lambda t: t.validate(), "request_validation")):
        trainer = Trainer(quick(clips, tmp_path, max_steps=3))
        with pytest.raises(RuntimeError, match=hint):
            trainer.fit(Direct(change))
        assert trainer.config.max_steps == 3 and trainer.last_validation is None


def test_a_pause_requested_from_another_thread_holds_fit_until_resumed(clips, tmp_path):
    trainer = Trainer(quick(clips, tmp_path, max_steps=4))
    seen = []

    class PauseAtStep2(TrainingHooks):
        def on_step(self, trainer, m):
            seen.append((m.step, time.monotonic(), time.process_time()))
            if m.step == 2:
                trainer.request_pause()
                threading.Timer(1.0, trainer.request_resume).start()

    trainer.fit(PauseAtStep2())
    (_, wall2, cpu2), (_, wall3, cpu3) = seen[1], seen[2]
    assert [s for s, _, _ in seen] == [1, 2, 3, 4]
    assert wall3 - wall2 >= 0.9 and cpu3 - cpu2 < 0.3 * (wall3 - wall2)  # it slept, not spun


def test_a_config_request_is_checked_when_posted_and_applied_at_the_boundary(clips, tmp_path):
    trainer = Trainer(quick(clips, tmp_path, max_steps=10))
    with pytest.raises(ValueError, match="live keys"):
        trainer.request_config(PRESET="full")
    new = trainer.request_config(LR_EXPONENT=-2)
    assert new.lr_exponent == -2 and trainer.config.lr_exponent == -3  # requested, not yet taken
    assert trainer.check_config(WEIGHT_DECAY=0.5).lr_exponent == -2  # later checks see the pending change
    trainer.request_stop()
    trainer.fit()
    assert trainer.config.lr_exponent == -2 and trainer.lr == pytest.approx(cosine(1e-2, 0, 10))


# --- resuming with a changed config ----------------------------------------------------------------
def test_resume_with_changed_keys_follows_the_new_config(clips, tmp_path):
    config = quick(clips, tmp_path, max_steps=6)  # LR 1e-3
    first = Trainer(config)
    for _ in range(4):
        first.train_step()
    latest = first.save()

    # a longer run: the cosine goes on to the new MAX_STEPS, it never climbs back after the old one (6)
    longer = Trainer(config.replace(MAX_STEPS=12), resume_from=latest)
    lrs = [longer.lr]
    for _ in range(8):
        longer.train_step()
        lrs.append(longer.lr)
    assert lrs == pytest.approx([cosine(1e-3, k, 12) for k in range(4, 13)], rel=1e-9)
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))
    assert longer.optimizer.state  # the Adam moments came along

    # a changed LR and weight decay take effect, and its checkpoints say what was really used
    changed = Trainer(config.replace(MAX_STEPS=12, LR_EXPONENT=-2, WEIGHT_DECAY=0.3), resume_from=latest)
    assert changed.lr == pytest.approx(cosine(1e-2, 4, 12), rel=1e-9)
    changed.train_step()
    assert changed.lr == pytest.approx(cosine(1e-2, 5, 12), rel=1e-9)
    saved = changed.checkpoint_dict()
    group = saved["optimizer_state_dict"]["param_groups"][0]
    assert group["weight_decay"] == 0.3 and group["initial_lr"] == pytest.approx(1e-2)
    assert saved["config"]["LR_EXPONENT"] == -2 and saved["config"]["WEIGHT_DECAY"] == 0.3
    assert saved["scheduler_state_dict"]["T_max"] == 12


def test_resume_without_config_uses_the_checkpoints_own_config(clips, tmp_path):
    config = quick(clips, tmp_path, max_steps=2)  # the tiny preset: the defaults would be "full"
    config.save(tmp_path / "cfg.json")
    assert cli.main(["train", "--config", str(tmp_path / "cfg.json"), "--plain"]) == 0
    latest = tmp_path / "run" / "latest.pth"
    assert cli.main(["train", "--resume", str(latest), "--set", "MAX_STEPS=3", "--plain"]) == 0
    checkpoint = load_checkpoint(latest)
    assert checkpoint["step"] == 3 and checkpoint["config"] == {**config.to_dict(), "MAX_STEPS": 3}


# --- Ctrl-C and the end of fit ----------------------------------------------------------------------
def test_ctrl_c_mid_step_saves_at_the_step_boundary(clips, tmp_path, capsys):
    """SIGINT arrives right after the 3rd optimizer update, before the step counter moves: the
    checkpoint must hold 3 updates *and* say step 3 (not an updated model labelled step 2)."""
    config = quick(clips, tmp_path, max_steps=1000)
    config.save(tmp_path / "cfg.json")
    updates = []

    def interrupt_after_third_update(optimizer, args, kwargs):
        updates.append(1)
        if len(updates) == 3:
            os.kill(os.getpid(), signal.SIGINT)

    handle = register_optimizer_step_post_hook(interrupt_after_third_update)
    handler_before = signal.getsignal(signal.SIGINT)  # not always Python's default (Tune installs its own)
    try:
        code = cli.main(["train", "--config", str(tmp_path / "cfg.json"), "--plain"])
    finally:
        handle.remove()
    assert code == 130
    checkpoint = load_checkpoint(tmp_path / "run" / "latest.pth")
    adam_steps = {int(s["step"]) for s in checkpoint["optimizer_state_dict"]["state"].values()}
    assert checkpoint["step"] == 3 and adam_steps == {3} and checkpoint["scheduler_state_dict"]["last_epoch"] == 3
    assert f"interrupted: saved {tmp_path / 'run' / 'latest.pth'} at step 3" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is handler_before  # the handler is put back


def test_fit_shuts_its_dataloader_workers_down(clips, tmp_path):
    before = set(multiprocessing.active_children())
    workers = []

    class CountWorkers(TrainingHooks):
        def on_step(self, trainer, m):
            workers.append(len(set(multiprocessing.active_children()) - before))

    trainer = Trainer(quick(clips, tmp_path, max_steps=2, num_workers=2))
    trainer.fit(CountWorkers())
    assert workers and min(workers) == 2  # they ran during fit ...
    assert set(multiprocessing.active_children()) - before == set()  # ... and are gone after it
    trainer.config = trainer.config.replace(MAX_STEPS=3)  # a second fit starts new ones where the data left off
    trainer.fit(CountWorkers())
    assert trainer.step == 3 and set(multiprocessing.active_children()) - before == set()
