"""Stages of a pipeline side by side, in threads: ``background`` iterates a source (a decoder)
ahead of its consumer, ``BackgroundSink`` consumes items (an encoder) behind their producer.

Threads pay off here because the heavy parts of these stages release the GIL: FFmpeg's
decoders, encoders and colour conversions (PyAV) and torch's operators. Both keep memory
bounded (a queue of at most ``ahead`` items) and hand any exception over to the thread that
drives them; closing stops their thread.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_END = object()


def background(items: Iterable, ahead: int, name: str) -> Iterator:
    """Iterate ``items`` in a daemon thread, at most ``ahead`` items ahead of the consumer.
    Exceptions are re-raised in the consumer; closing the consumer stops the thread."""
    channel: queue.Queue = queue.Queue(maxsize=max(1, ahead))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                channel.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(items)
        try:
            for item in source:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put((_END, exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:  # a generator (e.g. a nested background): stop it here, in its thread
                close()

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item, error = channel.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join()


class BackgroundSink:
    """Calls ``consume(item)`` for every ``put`` item, in order, in a thread of its own, at most
    ``ahead`` items behind, then ``finish()`` (e.g. flushing an encoder) once ``end`` or ``close``
    says no more items come. ``put`` raises the consumer's exception once it has failed (the
    items after it are dropped); ``close`` waits for the thread and raises it too. ``abandon``
    (also leaving the sink as a context manager on an exception) stops the thread without
    consuming what is still queued and without ``finish``."""

    def __init__(self, consume: Callable[[Any], None], ahead: int, name: str,
                 finish: Callable[[], None] | None = None):
        self._consume, self._finish = consume, finish
        self._channel: queue.Queue = queue.Queue(maxsize=max(1, ahead))
        self._error: BaseException | None = None
        self._abandoned = self._ended = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._channel.get()) is not _END:
            self._call(self._consume, item)
        if self._finish is not None:
            self._call(self._finish)

    def _call(self, fn: Callable, *args) -> None:
        if self._error is None and not self._abandoned:
            try:
                fn(*args)
            except BaseException as exc:  # noqa: BLE001 - handed to the producer
                self._error = exc

    def put(self, item: Any) -> None:
        self._raise_if_failed()
        self._channel.put(item)

    def end(self) -> None:
        """No more items: the thread consumes the ones queued, runs ``finish`` and ends (returns at once)."""
        if not self._ended:
            self._ended = True
            self._channel.put(_END)

    def close(self) -> None:
        """``end``, then wait for the thread; raise the consumer's (or ``finish``'s) exception, if any."""
        self.end()
        self._thread.join()
        self._raise_if_failed()

    def abandon(self) -> None:
        """Stop without consuming the rest or finishing; wait for the thread to end."""
        self._abandoned = True
        self.end()
        self._thread.join()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def __enter__(self) -> BackgroundSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abandon()
