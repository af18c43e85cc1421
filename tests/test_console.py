"""The training console: unit tests on the hooks with a real tiny Trainer and fed keys,
end-to-end runs of ``vsr train`` in a pseudo-terminal and with a piped stdout."""
import fcntl
import json
import math
import os
import queue
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time

import pytest
from rich.console import Console

from conftest import tiny_train_config, write_clips
from vsr_core.checkpoint import load_checkpoint
from vsr_core.config import TrainConfig
from vsr_core.engine.console import (
    BACKSPACE,
    ENTER,
    ESC,
    ConsoleState,
    KeyReader,
    LiveConsole,
    PlainConsole,
    decode_keys,
    format_plain_line,
    render_text,
)
from vsr_core.engine.health import Trend, loss_trends
from vsr_core.engine.hooks import ValidationMetrics
from vsr_core.engine.trainer import Trainer

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78]")


@pytest.fixture(autouse=True)
def frame_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VSR_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clips(tmp_path_factory.mktemp("clips"))


def tiny_config(clips, tmp_path, **overrides) -> TrainConfig:
    """Runs until stopped: the console tests drive it with keys."""
    values = dict(accumulation_steps=1, max_steps=100_000, val_step_every=100_000, save_step_every=100_000,
                  log_tboard_every=5, num_threads=1)
    values.update(overrides)
    return tiny_train_config(clips, tmp_path / "run", **values)


def make_console(trainer, tmp_path, *keys) -> LiveConsole:
    """A LiveConsole fed from a queue, drawing nowhere (no Live started)."""
    fed = queue.Queue()
    for key in keys:
        fed.put(key)
    return LiveConsole(trainer, tmp_path / "cfg.json", keys=fed)


def type_line(console, trainer, text):
    for key in [*text, ENTER]:
        console.handle_key(trainer, key)


# --------------------------------------------------------------------------------------------- #
# pure helpers and rendering
# --------------------------------------------------------------------------------------------- #
def test_loss_trends_are_relative_to_each_losss_scale():
    rows = [(0.1 - 0.001 * i, 0.0, 5.0 + 0.05 * i) for i in range(40)]
    assert loss_trends(rows) == [Trend.FALLING, Trend.STABLE, Trend.RISING]
    flat = [(0.05 + 0.0001 * (i % 2), 1.0, float("nan") if i == 3 else 1.0) for i in range(40)]
    assert loss_trends(flat) == [Trend.STABLE] * 3
    assert loss_trends([]) == [] and loss_trends([(1.0, 2.0, 3.0)]) == [Trend.STABLE] * 3


def test_decode_keys():
    assert decode_keys(b"pV\r") == ["p", "V", ENTER]
    assert decode_keys(b"a\r\nb\n") == ["a", ENTER, "b", ENTER]
    assert decode_keys(b"x\x7f\x08\x1b") == ["x", BACKSPACE, BACKSPACE, ESC]
    assert decode_keys(b"\x1b[A\x1b[1;5Cq\x1bOPz\x03") == ["q", "z"]  # arrows, F1, Ctrl-C dropped


def full_state(**changes) -> ConsoleState:
    activity = [0.05 + 0.03 * ((7 * i) % 30) for i in range(30)]
    values = dict(
        step=1234, max_steps=100_000, epoch=0, lr=9.99e-5, samples_per_s=12.3, elapsed_s=131, eta_s=11565,
        losses={"L1": 0.0423, "Perceptual": 0.1234, "Total": 0.0547},
        loss_trends={"L1": Trend.FALLING, "Perceptual": Trend.STABLE, "Total": Trend.FALLING},
        status="Plateauing ⚠", activity=activity, activity_trends=[Trend.RISING] * 30,
        validation=ValidationMetrics(1000, 28.41, 0.8412, 0.02, 27.90), next_validation=1250, next_checkpoint=5000,
        preset="full", device="cpu", output_dir="runs/demo", config_path="cfg.json", batch=(4, 3, 2),
    )
    values.update(changes)
    return ConsoleState(**values)


def test_render_text_shows_every_part_of_the_console():
    text = render_text(full_state(), width=110)
    assert "Step 1234/100000" in text and "ETA 3:12:45" in text and "12.3 samples/s" in text
    assert "LR 9.99e-05" in text and "batch 4x3x2=24" in text  # the effective batch: 2 data-parallel workers
    assert re.search(r"L1\s+0\.04230\s+⬇", text) and re.search(r"Perceptual\s+0\.12340\s+═", text)
    assert re.search(r"Total\s+0\.05470\s+⬇", text) and "Plateauing ⚠" in text
    assert "gain over bicubic +0.51 dB" in text  # 28.41 - 27.90
    assert "PSNR 28.41 dB" in text and "SSIM 0.8412" in text and "bicubic 27.90 dB" in text
    assert "next validation  step 1250 (in 16)" in text and "next checkpoint  step 5000 (in 3766)" in text
    assert all(f"Block_{i:02d}" in text for i in range(30))
    top = re.search(r"Top 5: (.*)", text).group(1)
    assert re.findall(r"Block_\d\d", top) == ["Block_17", "Block_04", "Block_21", "Block_08", "Block_25"]
    assert "5 cold layers (<20% active): Block_00, Block_09, Block_13, Block_22, Block_26" in text
    assert "\x1b" not in text
    # a 24-line terminal gets the compact grid (no bars), so everything fits
    assert len(render_text(full_state(), width=100, height=26).splitlines()) <= 26


def test_plain_line_has_step_losses_lr_speed_status_and_cold_count():
    line = format_plain_line(full_state())
    assert line.startswith("step 1234/100000 | L1 0.04230 ⬇ Perceptual 0.12340 ═ Total 0.05470 ⬇ | lr 9.99e-05")
    assert "12.3 samples/s (batch 4x3x2=24) | Plateauing ⚠ | cold layers 5/30 | ETA 3:12:45" in line


# --------------------------------------------------------------------------------------------- #
# the hooks, driven with fed keys and a real tiny Trainer
# --------------------------------------------------------------------------------------------- #
def test_sort_key_toggles_layer_order(clips, tmp_path):
    trainer = Trainer(tiny_config(clips, tmp_path, sort_by_activity=True))
    trainer.model.layer_activity = lambda: [0.3, 0.8]  # tiny: 2 blocks; Block_01 is the more active
    console = make_console(trainer, tmp_path)
    console.on_step(trainer, trainer.train_step())

    def layer_rows(text):
        return re.findall(r"Block_\d\d", text.split("Layer activity")[1].split("Top")[0])

    assert layer_rows(console.render_text()) == ["Block_01", "Block_00"]
    console.keys.put("s")
    console.on_step(trainer, trainer.train_step())
    assert layer_rows(console.render_text()) == ["Block_00", "Block_01"]
    assert "sorted by position" in console.render_text()
    console.keys.put("S")
    console.on_step(trainer, trainer.train_step())
    assert layer_rows(console.render_text()) == ["Block_01", "Block_00"]


def test_setup_menu_applies_saves_and_refuses_bad_values(clips, tmp_path):
    config = tiny_config(clips, tmp_path)
    config.save(tmp_path / "cfg.json")
    trainer = Trainer(config)
    console = make_console(trainer, tmp_path)
    console.on_step(trainer, trainer.train_step())
    console.handle_key(trainer, ENTER)
    screen = console.render_text()
    assert "Setup" in screen and "1  LR_EXPONENT" in screen and "8  SORT_BY_ACTIVITY" in screen

    type_line(console, trainer, "MAX_STEPS=abc")
    assert "MAX_STEPS must be an integer, got 'abc'" in console.render_text()
    type_line(console, trainer, "PRESET=full")
    assert "cannot change ['PRESET']" in console.render_text()
    assert trainer.config == config and TrainConfig.from_json(tmp_path / "cfg.json") == config

    for key in "lr_exponent=-2x":
        console.handle_key(trainer, key)
    console.handle_key(trainer, BACKSPACE)  # fix the typo before ENTER
    assert "> lr_exponent=-2▌" in console.render_text()
    console.handle_key(trainer, ENTER)
    type_line(console, trainer, "2=0.5")  # numbered keys work too: 2 = WEIGHT_DECAY
    type_line(console, trainer, "SORT_BY_ACTIVITY=False")
    assert "✓ SORT_BY_ACTIVITY = false applied from the next step" in console.render_text()
    assert console.sort_by_activity is False
    for path in (tmp_path / "cfg.json", tmp_path / "run" / "train_config.json"):
        saved = json.loads(path.read_text())  # every change so far, though fit has not taken them yet
        assert saved["LR_EXPONENT"] == -2 and saved["WEIGHT_DECAY"] == 0.5 and saved["SORT_BY_ACTIVITY"] is False
        assert saved["MAX_STEPS"] == 100_000
    assert trainer.config == config  # only fit changes the trainer, at a step boundary

    console.handle_key(trainer, ENTER)  # empty line closes
    assert console.menu is None and "Setup" not in console.render_text()
    trainer.request_stop()
    trainer.fit(console)  # takes the requests before the first step (pause, 3 changes, resume), then stops
    assert trainer.step == 1 and trainer.config == config.replace(LR_EXPONENT=-2, WEIGHT_DECAY=0.5,
                                                                  SORT_BY_ACTIVITY=False)
    assert trainer.lr == pytest.approx(1e-2, rel=1e-6) and trainer.optimizer.param_groups[0]["weight_decay"] == 0.5
    assert "LR 1.00e-02" in console.render_text()


def test_queued_menu_keys_change_a_running_fit(clips, tmp_path):
    trainer = Trainer(tiny_config(clips, tmp_path))
    console = make_console(trainer, tmp_path, ENTER, *"3=500", ENTER, ESC, "q")
    trainer.fit(console)  # ENTER opens the menu inside on_step; ESC closes it; q stops the run
    assert trainer.step == 1 and trainer.config.max_steps == 500
    assert load_checkpoint(tmp_path / "run" / "latest.pth")["step"] == 1


def record_steps(console, at_step=None):
    """Wrap ``console.on_step``: the (wall, cpu) time of every step. ``at_step`` = {step: keys to
    type, or a function to call}, before the console sees the step."""
    times, original = {}, console.on_step

    def on_step(trainer, m):
        times[m.step] = (time.monotonic(), time.process_time())
        action = (at_step or {}).get(m.step, "")
        for key in action if isinstance(action, str) else action() or "":
            console.keys.put(key)
        original(trainer, m)

    console.on_step = on_step
    return times


def test_pause_blocks_the_loop_without_using_cpu_until_resumed(clips, tmp_path):
    trainer = Trainer(tiny_config(clips, tmp_path, max_steps=3))
    console = make_console(trainer, tmp_path)
    resume = threading.Timer(1.2, console.keys.put, args=("P",))
    times = record_steps(console, {1: lambda: resume.start() or "p"})  # fit waits after step 1 ...
    trainer.fit(console)  # ... until P, typed 1.2 s later
    wall = times[2][0] - times[1][0]
    cpu = times[2][1] - times[1][1]
    assert wall >= 1.1 and cpu < 0.3 * wall
    assert trainer.step == 3 and not console.paused and not trainer.paused
    assert "resumed" in console.render_text() or "validation" in console.render_text()


def test_validate_key_runs_a_validation_now(clips, tmp_path):
    trainer = Trainer(tiny_config(clips, tmp_path))
    console = make_console(trainer, tmp_path)
    console.on_step(trainer, trainer.train_step())
    assert "no validation yet" in console.render_text()
    record_steps(console, {2: "v", 3: "q"})
    trainer.fit(console)  # validates at the boundary after step 2 (no validation is scheduled)
    assert console.validation.step == 2 and trainer.last_validation is console.validation and trainer.step == 3
    assert re.search(r"step 2: gain over bicubic [+-]\d+\.\d\d dB", console.render_text(width=120))


def test_keys_only_post_requests_fit_takes_them_between_steps(clips, tmp_path):
    trainer = Trainer(tiny_config(clips, tmp_path))
    console = make_console(trainer, tmp_path)
    console.on_step(trainer, trainer.train_step())
    for key in "vq":
        console.handle_key(trainer, key)
    assert trainer.last_validation is None and not trainer.stop_requested  # nothing happened yet
    trainer.fit(console)  # takes both at its first step boundary, before a step
    assert trainer.step == 1 and trainer.last_validation.step == 1 and trainer.stop_requested


def test_quit_key_stops_fit_with_a_checkpoint(clips, tmp_path):
    trainer = Trainer(tiny_config(clips, tmp_path))
    console = make_console(trainer, tmp_path)
    times = record_steps(console, {3: "Q"})
    trainer.fit(console)
    assert sorted(times) == [1, 2, 3] and console.stop_requested
    assert console.last_checkpoint[0] == 3 and load_checkpoint(tmp_path / "run" / "latest.pth")["step"] == 3


def test_plain_console_logs_steps_validations_and_checkpoints(clips, tmp_path):
    import io

    trainer = Trainer(tiny_config(clips, tmp_path, max_steps=4, val_step_every=2, save_step_every=2))
    out = io.StringIO()
    trainer.fit(PlainConsole(trainer, stream=out, interval_s=3600))
    lines = out.getvalue().splitlines()
    steps = [line for line in lines if re.match(r"step \d+/4 \|", line)]
    assert [s.split()[1] for s in steps] == ["1/4", "4/4"]  # first and last step (the interval is an hour)
    assert sum("validation gain over bicubic" in line for line in lines) == 2
    assert sum(line.endswith("latest.pth") for line in lines) == 2


# --------------------------------------------------------------------------------------------- #
# the terminal
# --------------------------------------------------------------------------------------------- #
def test_key_reader_uses_cbreak_and_restores_the_terminal(tmp_path):
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        keys = queue.Queue()
        reader = KeyReader(keys, slave).start()
        try:
            assert not termios.tcgetattr(slave)[3] & (termios.ICANON | termios.ECHO)
            os.write(master, b"v\r")
            assert [keys.get(timeout=5), keys.get(timeout=5)] == ["v", ENTER]
        finally:
            reader.stop()
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


def test_live_console_restores_the_terminal_when_training_raises(clips, tmp_path):
    trainer = Trainer(tiny_config(clips, tmp_path))
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        screen = Console(file=open(os.devnull, "w"), force_terminal=True, width=100, height=30)
        with pytest.raises(RuntimeError, match="boom"):
            with LiveConsole(trainer, tmp_path / "cfg.json", console=screen, input_fd=slave) as console:
                assert console._live.is_started
                raise RuntimeError("boom")
        assert termios.tcgetattr(slave) == before and console._live is None
    finally:
        os.close(master)
        os.close(slave)


class Terminal:
    """``vsr train`` in a pseudo-terminal; the screen output is read without blocking."""

    def __init__(self, args, env, rows=45, cols=120):
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.process = subprocess.Popen([sys.executable, "-m", "vsr_core.cli", *args], stdin=slave, stdout=slave,
                                        stderr=slave, env=env, start_new_session=True,
                                        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))  # Ctrl-C works
        os.close(slave)
        self.raw = b""

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode("utf-8", errors="replace"))

    def read(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master], [], [], min(left, 0.1))
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    data = b""
                if not data:
                    time.sleep(min(left, 0.05))
                    if self.process.poll() is not None:
                        return
                self.raw += data

    def wait_for(self, pattern: str, since: int = 0, timeout: float = 30.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            match = None
            for match in re.finditer(pattern, self.text[since:]):
                pass
            if match:
                return match
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise AssertionError(f"{pattern!r} not on screen; last screen:\n{self.text[-4000:]}")
            self.read(0.2)

    def steps(self, since: int = 0) -> list[int]:
        return [int(s) for s in re.findall(r"Step (\d+)/", self.text[since:])]

    def send(self, keys: bytes) -> int:
        """Type ``keys``; returns the screen position before them."""
        self.read(0.05)
        position = len(self.text)
        os.write(self.master, keys)
        return position

    def wait_exit(self, timeout: float) -> int:
        """The exit code; keeps reading, or the child would block on a full terminal."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self.read(0.2)
        self.read(0.3)
        return self.process.wait(timeout=1)

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        os.close(self.master)


def test_live_console_in_a_terminal(clips, tmp_path):
    config = tiny_config(clips, tmp_path)
    config.save(tmp_path / "cfg.json")
    env = {**os.environ, "TERM": "xterm-256color", "PYTHONUNBUFFERED": "1"}
    env.pop("COLUMNS", None), env.pop("LINES", None)
    terminal = Terminal(["train", "--config", str(tmp_path / "cfg.json")], env)
    try:
        terminal.wait_for(r"Step \d+/100000", timeout=60)
        terminal.wait_for(r"Step [1-9]\d+/")  # running

        # P pauses: the step shown stops advancing; P again resumes
        position = terminal.send(b"p")
        paused_at = terminal.wait_for(r"PAUSED", since=position).end() + position
        terminal.read(1.5)
        shown = terminal.steps(paused_at)
        assert len(set(shown)) == 1, shown
        position = terminal.send(b"p")
        terminal.wait_for(rf"Step (?!{shown[0]}/)\d+/", since=position)
        assert max(terminal.steps(position)) > shown[0]

        # V validates now and shows the result
        position = terminal.send(b"v")
        match = terminal.wait_for(r"validation at step (\d+): ([+-]\d+\.\d\d) dB over bicubic", since=position)
        assert int(match.group(1)) >= shown[0] and math.isfinite(float(match.group(2)))

        # ENTER opens the setup menu; a bad value is refused, LR_EXPONENT=-2 is applied and saved
        assert re.findall(r"LR (\d\.\d\de-\d\d)", terminal.text)[-1] == "1.00e-03"
        position = terminal.send(b"\r")
        terminal.wait_for(r"LR_EXPONENT\s+-3", since=position)
        position = terminal.send(b"MAX_STEPS=abc\r")
        terminal.wait_for(r"MAX_STEPS must be an integer, got 'abc'", since=position)
        assert json.loads((tmp_path / "cfg.json").read_text())["MAX_STEPS"] == 100_000
        position = terminal.send(b"LR_EXPONENT=-2\r")
        terminal.wait_for(r"✓ LR_EXPONENT = -2 applied", since=position)
        position = terminal.send(b"\r")
        terminal.wait_for(r"setup closed", since=position)
        terminal.wait_for(r"LR 1\.00e-02", since=position)
        saved = json.loads((tmp_path / "cfg.json").read_text())
        assert saved["LR_EXPONENT"] == -2 and saved["MAX_STEPS"] == 100_000

        # Q stops cleanly with a checkpoint
        terminal.send(b"q")
        assert terminal.wait_exit(60) == 0
        assert re.search(r"stopped at step \d+/100000", terminal.text)
        checkpoint = load_checkpoint(tmp_path / "run" / "latest.pth")
        assert checkpoint["step"] > shown[0] and checkpoint["config"]["LR_EXPONENT"] == -2
    finally:
        terminal.close()


def test_plain_mode_when_stdout_is_not_a_terminal(clips, tmp_path):
    config = tiny_config(clips, tmp_path, max_steps=4, val_step_every=2, save_step_every=2)
    config.save(tmp_path / "cfg.json")
    result = subprocess.run([sys.executable, "-m", "vsr_core.cli", "train", "--config", str(tmp_path / "cfg.json")],
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^step 1/4 \| L1 \d\.\d{5} . Perceptual 0\.00000 ═ Total \d\.\d{5} . \| lr \d\.\d\de-0\d \| "
                     r"[\d.]+ samples/s \(batch \dx\dx1=\d+\) \| Warming up \| cold layers \d/2 \| ETA", out, re.M)
    assert re.search(r"^step 4/4 \|", out, re.M)
    assert re.search(r"^step 2: validation gain over bicubic [+-]\d+\.\d\d dB \(Y-PSNR \d+\.\d\d", out, re.M)
    assert re.search(r"^step 4: saved .*latest\.pth$", out, re.M) and "done: step 4" in out
    assert "\x1b" not in out and "\r" not in out
