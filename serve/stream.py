"""``WS /v1/stream``: a live video sent frame by frame over one WebSocket, each low-resolution
frame once, answered with its 3x frame as soon as that frame's window is complete.

Protocol (text messages are JSON, binary messages are frames)::

    client  the handshake, authenticated (see Auth)
    client  {"width": W, "height": H, "format": "png" | "jpeg" | "raw",
             "output": "png" | "jpeg" | "webp" | "raw"}   (optional; default png, see serve.formats)
    server  {"type": "ready", "width": W, "height": H, "scale": 3, "output": ..., "frames_behind": 2,
             "max_frames": ..., "idle_timeout_s": ...}
    client  frame 0, frame 1, ...     binary: a PNG or JPEG file, or H*W*3 bytes of RGB ("raw")
    server  3x frame 0, 1, ...        binary, in order; frame i once frame i+2 has arrived
    client  {"type": "end"}
    server  the last 2 frames, {"type": "end", "frames": N, "timing": {...}}, then close (1000)

Errors are ``{"type": "error", "error": CODE, "detail": MESSAGE}`` followed by a close (1008:
a bad header message (``serve.schemas.StreamHeader``, the field named) and the limits, 1003: a
bad frame or message, 1011: unexpected; the server log has its id). Frames computed before the
error are still sent first.

The windows reflect at the borders exactly as ``vsr_core.frames.window_indices`` does for
``vsr upscale``: the first window is frames [2,1,0,1,2]; only at end-of-stream is the clip's
length known and the last two windows reflect at the last frame. Each frame's features are
extracted once and reused by its 5 windows, as ``vsr upscale`` does (``vsr_core.live_stream``). The
windows go through the replica's batches with the ``/v1/upscale`` traffic (serve.batching);
at most 2 x ``max_batch_size`` of them are in flight per stream (then the server stops
reading and TCP slows the client down), so that the next batch waits while one runs. The
session holds the frames those windows read.

Auth and admission happen before the server accepts the socket (``serve.admission``): the key
as ``Authorization: Bearer KEY`` on the handshake (programs), or, since browsers cannot set
headers on a WebSocket, as the subprotocols ``["vsr.v1", "bearer.<base64url KEY>"]`` (the server
answers "vsr.v1"); not a query parameter, since URLs end up in access logs. A refused handshake
gets an HTTP answer with a JSON body instead of a socket: 401 (key), 403 (Host or Origin), 429
with Retry-After (``max_streams_per_key``, ``max_streams``). So a client without a key never
holds one of the replica's request slots, and an accepted one must send its header within
``stream_header_timeout_s``. Decoding and encoding run in threads, off the event loop.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect

from serve.admission import SUBPROTOCOL, Admission, authorize
from serve.api import ApiError, error_response
from serve.batching import PassResult
from serve.formats import STREAM_OUTPUTS, encode_frame
from serve.schemas import MAX_HEADER_BYTES, InputError, StreamHeader, parse_json, validate
from serve.settings import ServeSettings
from vsr_core.archs import CENTER, SCALE
from vsr_core.image_io import InvalidImageError, decode_image
from vsr_core.live_stream import LiveFrames, LiveWindow

logger = logging.getLogger("ray.serve")

CLOSE_NORMAL, CLOSE_BAD_DATA, CLOSE_POLICY, CLOSE_INTERNAL = 1000, 1003, 1008, 1011
UNKNOWN_LENGTH = 2**62  # window_indices reflects at no end before end-of-stream

#: one window -> its answer from the replica's batches (raises the error of its forward pass)
UpscaleWindow = Callable[[LiveWindow], Awaitable[PassResult]]


class StreamError(Exception):
    def __init__(self, error: str, detail: str, close_code: int = CLOSE_BAD_DATA):
        super().__init__(f"{error}: {detail}")
        self.error, self.detail, self.close_code = error, detail, close_code

    def message(self) -> dict[str, str]:
        return {"type": "error", "error": self.error, "detail": self.detail}


def parse_header(text: str | None, max_pixels: int) -> StreamHeader:
    """The first message (``serve.schemas.StreamHeader``); errors name the key."""
    example = '{"width": 640, "height": 360, "format": "png"}'
    if text is None:
        raise StreamError("invalid_header", f"the first message must be a JSON text message such as {example}",
                          CLOSE_POLICY)
    try:
        header = validate(StreamHeader, parse_json(text, MAX_HEADER_BYTES, "the header message"))
    except InputError as exc:
        detail = f"'{exc.field}': {exc.problem}" if exc.field else f"{exc.problem}; send e.g. {example}"
        raise StreamError("invalid_header", detail, CLOSE_POLICY) from None
    if header.width * header.height > max_pixels:
        raise StreamError("frame_too_large", f"{header.width}x{header.height} = {header.width * header.height} pixels "
                          f"exceeds the limit of {max_pixels} pixels per frame", CLOSE_POLICY)
    return header


def decode_frame(data: bytes, header: StreamHeader, index: int, max_pixels: int) -> np.ndarray:
    """One binary message -> HxWx3 uint8 of the header's size (blocking: run it in a thread)."""
    source = f"frame {index}"
    if header.format == "raw":
        expected = header.height * header.width * 3
        if len(data) != expected:
            raise StreamError("wrong_frame_size", f"{source} has {len(data)} bytes; a raw {header.width}x"
                              f"{header.height} RGB frame has {expected}")
        return np.frombuffer(data, np.uint8).reshape(header.height, header.width, 3)
    try:
        frame = decode_image(data, max_pixels, source)
    except InvalidImageError as exc:
        raise StreamError(exc.code, str(exc)) from None
    if frame.shape[:2] != (header.height, header.width):
        raise StreamError("wrong_frame_size", f"{source} is {frame.shape[1]}x{frame.shape[0]}; the stream's "
                          f"header said {header.width}x{header.height}")
    return frame


class FrameWindows:
    """A stream's frames (``LiveFrames``: kept until the windows that read them are computed)
    and its windows: each frame's window as soon as it is complete (frame i+2 arrived), the
    last ones at ``finish``, when the length is known."""

    def __init__(self):
        self.frames = LiveFrames()
        self.count = 0  # frames added
        self.next_center = 0

    def add(self, frame: np.ndarray) -> list[LiveWindow]:
        self.frames.add(self.count, frame)
        self.count += 1
        windows = []
        while self.next_center + CENTER < self.count:
            windows.append(LiveWindow(self.frames, self.next_center, UNKNOWN_LENGTH))
            self.next_center += 1
        return windows

    def finish(self) -> list[LiveWindow]:
        windows = [LiveWindow(self.frames, c, self.count) for c in range(self.next_center, self.count)]
        self.next_center = self.count
        return windows


@dataclass
class StreamStats:
    """The replica's streams (shown in /v1/model): a disconnect must bring ``active`` down."""

    active: int = 0
    total: int = 0
    frames: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"active": self.active, "total": self.total, "frames": self.frames}


@dataclass
class _Timing:
    decode_s: float = 0.0
    wait_s: float = 0.0  # in serve.batching: queued, batched and run
    model_s: float = 0.0  # of that: the forward passes (shared with their batch)
    model_share_s: float = 0.0  # each window's share of its pass: the model's time for this stream
    passes: float = 0.0  # each window counts 1/its pass's windows (a live pass is one stream's windows)
    encode_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)

    def add_pass(self, result: PassResult) -> None:
        self.model_s += result.seconds
        self.model_share_s += result.seconds / result.batch_size
        self.passes += 1 / result.batch_size

    def as_dict(self, frames: int) -> dict[str, float]:
        """Per frame (ms), and what says whether the model was kept busy: the windows per forward
        pass and the share of the stream's time the model spent on its passes."""
        per, wall = 1e3 / max(1, frames), time.perf_counter() - self.started
        return {"decode_ms": self.decode_s * per, "batch_ms": self.wait_s * per, "model_ms": self.model_s * per,
                "encode_ms": self.encode_s * per, "wall_s": wall,
                "windows_per_pass": frames / self.passes if self.passes else 0.0,
                "model_busy": self.model_share_s / wall if wall > 0 else 0.0}


_END = object()


class _Session:
    def __init__(self, websocket: WebSocket, settings: ServeSettings, upscale: UpscaleWindow, stats: StreamStats):
        self.ws, self.settings, self.upscale, self.stats = websocket, settings, upscale, stats
        self.outbox: asyncio.Queue = asyncio.Queue()  # window tasks in frame order, then _END or a StreamError
        self.slots = asyncio.Semaphore(2 * settings.max_batch_size)  # a batch running, the next one waiting
        self.tasks: list[asyncio.Task] = []
        self.timing = _Timing()
        self.sent = 0
        self.media_type = STREAM_OUTPUTS["png"]

    async def receive(self, timeout_s: float | None = None) -> dict:
        timeout_s = timeout_s or self.settings.stream_idle_timeout_s
        try:
            message = await asyncio.wait_for(self.ws.receive(), timeout_s)
        except asyncio.TimeoutError:
            raise StreamError("idle_timeout", f"nothing received for {timeout_s:g} s", CLOSE_POLICY) from None
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        return message

    async def close_with(self, error: StreamError) -> None:
        await self.ws.send_json(error.message())
        await self.ws.close(error.close_code)

    async def run(self) -> None:
        try:
            first = await self.receive(self.settings.stream_header_timeout_s)
            header = parse_header(first.get("text"), self.settings.max_pixels_per_frame)
        except StreamError as exc:
            await self.close_with(exc)
            return
        await self.ws.send_json({"type": "ready", "width": header.width, "height": header.height, "scale": SCALE,
                                 "output": header.output, "frames_behind": CENTER,
                                 "max_frames": self.settings.max_stream_frames,
                                 "idle_timeout_s": self.settings.stream_idle_timeout_s})
        self.media_type = STREAM_OUTPUTS[header.output]
        receiver = asyncio.create_task(self.receive_frames(header))
        sender = asyncio.create_task(self.send_outputs())
        try:
            done, _ = await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
            if sender in done:  # it closed the socket (a model error), or the client is gone
                sender.result()
            else:
                receiver.result()  # a disconnect ends the session here
                await sender  # the outputs still in flight, then "end" or the error
        finally:
            for task in (receiver, sender, *self.tasks):
                task.cancel()  # abandoned windows leave the batch queue

    async def receive_frames(self, header: StreamHeader) -> None:
        windows = FrameWindows()
        try:
            while True:
                message = await self.receive()
                data = message.get("bytes")
                if data is None:
                    if _is_end(message.get("text")):
                        for window in windows.finish():
                            await self.submit(window)
                        self.outbox.put_nowait(_END)
                        return
                    raise StreamError("invalid_message", 'text messages after the header must be {"type": "end"}')
                if windows.count >= self.settings.max_stream_frames:
                    raise StreamError("too_many_frames", f"a stream may send at most {self.settings.max_stream_frames}"
                                      " frames (max_stream_frames); start a new one", CLOSE_POLICY)
                if len(data) > self.settings.max_body_bytes:
                    raise StreamError("frame_too_large", f"frame {windows.count} has {len(data)} bytes; the limit is "
                                      f"{self.settings.max_body_bytes}", CLOSE_POLICY)
                started = time.perf_counter()
                frame = await asyncio.to_thread(decode_frame, data, header, windows.count,
                                                self.settings.max_pixels_per_frame)
                self.timing.decode_s += time.perf_counter() - started
                for window in windows.add(frame):
                    await self.submit(window)
        except StreamError as exc:
            self.outbox.put_nowait(exc)

    async def submit(self, window: LiveWindow) -> None:
        await self.slots.acquire()  # released when its frame is sent
        task = asyncio.create_task(self.compute(window))
        self.tasks.append(task)
        self.outbox.put_nowait(task)

    async def compute(self, window: LiveWindow) -> bytes:
        started = time.perf_counter()
        result = await self.upscale(window)
        self.timing.wait_s += time.perf_counter() - started
        self.timing.add_pass(result)
        started = time.perf_counter()
        data = await asyncio.to_thread(encode_frame, result.frame, self.media_type)
        self.timing.encode_s += time.perf_counter() - started
        return data

    async def send_outputs(self) -> None:
        while True:
            item = await self.outbox.get()
            if item is _END:
                await self.ws.send_json({"type": "end", "frames": self.sent, "timing": self.timing.as_dict(self.sent)})
                await self.ws.close(CLOSE_NORMAL)
                return
            if isinstance(item, StreamError):
                await self.close_with(item)
                return
            try:
                data = await item
            except Exception as exc:  # noqa: BLE001 - a failed forward pass ends the stream with a JSON error
                await self.close_with(_model_error(exc))
                return
            self.tasks.remove(item)
            await self.ws.send_bytes(data)
            self.sent += 1
            self.stats.frames += 1
            self.slots.release()


def _is_end(text: str | None) -> bool:
    try:
        message = parse_json(text or "", MAX_HEADER_BYTES, "a text message")
    except InputError:
        return False
    return isinstance(message, dict) and message.get("type") == "end"


def _model_error(exc: BaseException) -> StreamError:
    if isinstance(exc, ApiError):  # e.g. 503 no model loaded
        return StreamError(exc.error, exc.detail, CLOSE_INTERNAL if exc.status >= 500 else CLOSE_POLICY)
    if isinstance(exc, MemoryError):
        return StreamError("out_of_memory", "the replica ran out of memory; send smaller frames", CLOSE_INTERNAL)
    return _internal_error(exc)


def _internal_error(exc: BaseException) -> StreamError:
    """Logged with an id; the client gets the id only (no exception text)."""
    error_id = secrets.token_hex(6)
    logger.error("stream error %s", error_id, exc_info=exc)
    return StreamError("internal_error", f"unexpected error (id {error_id}; the server log has the details)",
                       CLOSE_INTERNAL)


async def serve_stream(websocket: WebSocket, settings: ServeSettings, api_keys: list[str], admission: Admission,
                       upscale: UpscaleWindow, stats: StreamStats) -> None:
    """One ``WS /v1/stream`` connection, from the handshake to the close: refused before it is
    accepted unless authorized and within the stream caps."""
    offered = list(websocket.scope.get("subprotocols") or [])
    try:
        owner = authorize(websocket.headers, "WEBSOCKET", settings, api_keys, offered)
        release = admission.acquire("streams", owner)
    except ApiError as exc:
        await _refuse(websocket, exc)
        return
    try:
        await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        stats.active += 1
        stats.total += 1
        try:
            await _serve_session(_Session(websocket, settings, upscale, stats))
        finally:
            stats.active -= 1
    finally:
        release()


async def _serve_session(session: _Session) -> None:
    try:
        await session.run()
    except WebSocketDisconnect:
        logger.info("a stream client disconnected")
    except Exception as exc:  # noqa: BLE001 - a bug, or a send after the client went away
        try:
            await session.close_with(_internal_error(exc))
        except Exception:  # noqa: BLE001 - the client is gone
            pass


async def _refuse(websocket: WebSocket, error: ApiError) -> None:
    """An HTTP answer instead of the socket (the WebSocket denial response: the client sees the
    status and the JSON error); a bare close (HTTP 403) where the server cannot send one."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(error_response(error.status, error.error, error.detail, error.headers))
    else:
        await websocket.close(CLOSE_POLICY)
