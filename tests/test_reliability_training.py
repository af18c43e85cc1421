"""Training faults: SIGKILL at random moments (also mid checkpoint write) and a failing disk.

    VSR_RELIABILITY_LONG=1      50 kills instead of 8
    VSR_RELIABILITY_KILLS=N     exactly N kills
"""
import errno
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_engine import clips, frame_cache, tiny_config  # noqa: F401 - fixtures
from vsr_core import checkpoint as checkpoint_module
from vsr_core import cli
from vsr_core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

LONG = os.environ.get("VSR_RELIABILITY_LONG") == "1"
KILLS = int(os.environ.get("VSR_RELIABILITY_KILLS", 50 if LONG else 8))
SAVE_EVERY = 1
SAVED = re.compile(r"^step (\d+): saved ", re.M)
FROM_STEP = re.compile(r"from step (\d+)\)")


def _temp_files(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


def _saved_steps(log: Path) -> list[int]:
    return [int(s) for s in SAVED.findall(log.read_text())] if log.exists() else []


def test_sigkill_at_random_moments_never_corrupts_latest_and_loses_at_most_save_every_steps(clips, tmp_path):
    """Kill `vsr train --plain` KILLS times, half of them while a checkpoint temp file exists
    (mid-write), half at a random moment; each time resume from latest.pth.

    The log line `step N: saved` is printed (flushed) after each write and before step N+1
    starts, so when the process dies it has reached at most (last logged N) + 1 steps."""
    config = tiny_config(clips, tmp_path, max_steps=10**6, save_step_every=SAVE_EVERY, val_step_every=10**6,
                         log_tboard_every=10**6, num_threads=1)  # 1 thread: 2 spin-wait on a busy CPU
    config.save(tmp_path / "cfg.json")
    run = Path(config.output_dir)
    latest = run / "latest.pth"
    rng = random.Random(int(os.environ.get("VSR_RELIABILITY_SEED", "0")))
    mid_write, lost, steps_done = 0, [], 0
    for kill in range(KILLS):
        log = tmp_path / f"round_{kill}.log"
        command = [sys.executable, "-m", "vsr_core.cli", "train", "--config", str(tmp_path / "cfg.json"), "--plain"]
        if latest.exists():
            command += ["--resume", str(latest)]
        stale = _temp_files(run) if run.exists() else []
        with open(log, "w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 120
            while len(_saved_steps(log)) < 1 + kill % 3 and process.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            assert process.poll() is None, log.read_text()[-2000:]
            assert _saved_steps(log), f"no checkpoint written in 120 s: {log.read_text()[-2000:]}"
            if kill % 2 == 0:  # mid-write: kill as soon as a temp file of a checkpoint write exists
                deadline = time.time() + 30
                while not _temp_files(run) and time.time() < deadline:
                    pass
            else:
                time.sleep(rng.uniform(0, 0.3))
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        text = log.read_text()
        start = int(FROM_STEP.search(text).group(1))
        last_logged = max(_saved_steps(log))
        reached_at_most = last_logged + 1
        left_over = _temp_files(run)
        mid_write += bool(set(left_over) - set(stale))
        assert not set(stale) & set(left_over), "the resumed run did not remove the temp files of the killed one"

        checkpoint = load_checkpoint(latest)  # always loads
        saved_step = int(checkpoint["step"])
        assert last_logged <= saved_step <= reached_at_most
        lost.append(reached_at_most - saved_step)
        assert reached_at_most - saved_step <= SAVE_EVERY
        steps_done = saved_step
        if kill:  # the resumed run started exactly at the step in latest.pth
            assert start == previous_step, (start, previous_step)
        previous_step = saved_step

    resumed_config = config.replace(max_steps=steps_done + 2)
    from vsr_core.engine.trainer import Trainer

    trainer = Trainer(resumed_config, resume_from=latest)
    assert trainer.step == steps_done and not _temp_files(run)
    trainer.fit()
    assert load_checkpoint(latest)["step"] == steps_done + 2
    print(f"\n[reliability] SIGKILL: {KILLS} kills survived ({mid_write} mid checkpoint write), "
          f"latest.pth loaded every time, steps lost per kill <= {max(lost)} (SAVE_STEP_EVERY={SAVE_EVERY}), "
          f"{steps_done} steps in all")
    assert mid_write >= max(1, KILLS // 4), f"only {mid_write} of {KILLS} kills landed mid-write"


# --- a failing disk -------------------------------------------------------------------------------------
def _failing_save(calls: list, fail_times: int):
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        calls.append(getattr(f, "name", f))
        if len(calls) <= fail_times:
            f.write(b"half a checkpoint")  # the disk fills up mid-write
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    return save


def test_a_failing_disk_keeps_the_previous_checkpoint_and_stops_with_a_clear_error(clips, tmp_path, monkeypatch, caplog,
                                                                                    capsys):
    config = tiny_config(clips, tmp_path, max_steps=2, save_step_every=1, val_step_every=10**6)
    config.save(tmp_path / "cfg.json")
    assert cli.main(["train", "--config", str(tmp_path / "cfg.json"), "--plain"]) == 0
    latest = Path(config.output_dir) / "latest.pth"
    before = latest.read_bytes()
    capsys.readouterr()

    calls = []
    monkeypatch.setattr(torch, "save", _failing_save(calls, fail_times=10**6))
    monkeypatch.setattr(checkpoint_module, "SAVE_RETRY_DELAY_S", 0.01)
    started = time.monotonic()
    code = cli.main(["train", "--config", str(tmp_path / "cfg.json"), "--plain", "--resume", str(latest),
                     "--set", "MAX_STEPS=6"])
    err = capsys.readouterr().err
    assert code == 2  # training stopped
    assert len(calls) == checkpoint_module.SAVE_ATTEMPTS  # the step-3 write was tried 3 times, then gave up
    assert f"error: cannot write checkpoint {latest}: No space left on device (errno 28, ENOSPC)" in err
    assert "tried 3 times" in err and "Traceback" not in err
    assert caplog.text.count("retrying in") == 2  # logged (stderr without pytest)
    assert latest.read_bytes() == before and load_checkpoint(latest)["step"] == 2  # the previous one, intact
    assert not _temp_files(latest.parent)  # no half-written temp file left behind
    assert time.monotonic() - started < 60


def test_a_transient_write_error_is_retried_and_training_goes_on(clips, tmp_path, monkeypatch, caplog):
    config = tiny_config(clips, tmp_path, max_steps=3, save_step_every=1, val_step_every=10**6)
    calls = []
    monkeypatch.setattr(torch, "save", _failing_save(calls, fail_times=1))
    monkeypatch.setattr(checkpoint_module, "SAVE_RETRY_DELAY_S", 0.01)
    from vsr_core.engine.trainer import Trainer

    Trainer(config).fit()
    latest = Path(config.output_dir) / "latest.pth"
    assert load_checkpoint(latest)["step"] == 3 and len(calls) == 4  # 3 saves, the first one twice
    assert "retrying in" in caplog.text and not _temp_files(latest.parent)


def test_save_checkpoint_error_names_path_and_errno(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_module, "SAVE_RETRY_DELAY_S", 0.0)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    checkpoint = {key: {} for key in checkpoint_module.CHECKPOINT_KEYS} | {"step": 1, "training_phase": "pretrain"}
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*file/sub/latest\.pth: .*errno 20, ENOTDIR"):
        save_checkpoint(checkpoint, blocker / "sub" / "latest.pth")
