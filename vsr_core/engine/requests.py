"""Requests to a running ``Trainer.fit``: posted from any thread (a hook, the console's keys,
a signal handler), taken by ``fit`` at the next step boundary in the order posted. So only
``fit`` changes the trainer, and never in the middle of a step."""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Command(StrEnum):
    VALIDATE = "validate"  # validate now, besides the schedule
    PAUSE = "pause"  # wait at the step boundary until RESUME or STOP
    RESUME = "resume"
    STOP = "stop"  # leave the loop; fit writes latest.pth


@dataclass(frozen=True)
class ApplyConfig:
    """Change live keys (``Trainer.update_config``); check them first with ``Trainer.check_config``."""

    changes: dict[str, Any] = field(default_factory=dict)


Request = Command | ApplyConfig


class RequestQueue:
    """A thread-safe FIFO of requests that a waiting ``fit`` can sleep on."""

    def __init__(self) -> None:
        self._items: deque[Request] = deque()
        self._posted = threading.Condition()

    def post(self, request: Request) -> None:
        with self._posted:
            self._items.append(request)
            self._posted.notify_all()

    def take_all(self) -> list[Request]:
        with self._posted:
            items = list(self._items)
            self._items.clear()
        return items

    def pending_changes(self) -> dict[str, Any]:
        """The config changes posted but not yet taken, merged in order (later ones win)."""
        with self._posted:
            merged: dict[str, Any] = {}
            for item in self._items:
                if isinstance(item, ApplyConfig):
                    merged.update({k.upper(): v for k, v in item.changes.items()})
            return merged

    def wait(self, timeout: float) -> bool:
        """Sleep until a request is posted or ``timeout`` seconds pass; whether one is waiting."""
        with self._posted:
            return self._posted.wait_for(lambda: bool(self._items), timeout)
