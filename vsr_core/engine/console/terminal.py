"""The terminal side of the live console: keys read on a background thread in cbreak mode
(restored on exit), decoded to tokens; SIGTERM unwinds so the terminal is restored too."""
from __future__ import annotations

import os
import queue
import select
import threading

ENTER, BACKSPACE, ESC = "ENTER", "BACKSPACE", "ESC"


def decode_keys(data: bytes) -> list[str]:
    """Terminal input -> key tokens: printable characters as themselves, ``"ENTER"``
    (CR, LF or CR LF), ``"BACKSPACE"`` (DEL / BS) and ``"ESC"``. Escape sequences
    (arrow keys, function keys) and other control characters are dropped."""
    text = data.decode("utf-8", errors="ignore")
    keys: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\x1b":
            if i + 1 < len(text) and text[i + 1] == "[":  # CSI: parameters, then a final byte @..~
                j = i + 2
                while j < len(text) and not ("@" <= text[j] <= "~"):
                    j += 1
                i = j + 1
                continue
            if i + 1 < len(text) and text[i + 1] == "O":  # SS3: one final byte
                i += 3
                continue
            keys.append(ESC)
        elif c == "\r":
            keys.append(ENTER)
            if i + 1 < len(text) and text[i + 1] == "\n":
                i += 1
        elif c == "\n":
            keys.append(ENTER)
        elif c in "\x7f\x08":
            keys.append(BACKSPACE)
        elif c.isprintable():
            keys.append(c)
        i += 1
    return keys


class KeyReader:
    """Reads keys from a terminal on a daemon thread and puts :func:`decode_keys` tokens on
    ``keys``. ``start()`` puts the terminal in cbreak mode (no echo, no line buffering;
    Ctrl-C still interrupts); ``stop()`` restores it."""

    def __init__(self, keys: queue.Queue, fd: int):
        self.keys = keys
        self.fd = fd
        self._saved: list | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "KeyReader":
        import termios
        import tty

        self._saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd, termios.TCSANOW)
        self._thread = threading.Thread(target=self._run, name="vsr-console-keys", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.1)
                if not ready:
                    continue
                data = os.read(self.fd, 1024)
            except (OSError, ValueError):
                return
            if not data:  # EOF
                return
            for key in decode_keys(data):
                self.keys.put(key)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None
        if self._saved is not None:
            import termios

            try:
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            finally:
                self._saved = None


def exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through the console's __exit__: the terminal is restored
