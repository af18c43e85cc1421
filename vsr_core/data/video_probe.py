"""Opening an untrusted video in a child process with memory, CPU and time limits.

FFmpeg believes a container's header: a 733-byte mp4 whose sample table claims 100 million
frames makes the demuxer allocate about 24 bytes per claimed frame (2.4 GB) before anything
can check the claim. So a server never opens an uploaded video in its own process first:
``probe_untrusted`` asks a child process, which limits its own address space
(``RLIMIT_AS``: what it had after its imports plus ``memory_bytes``), CPU time
(``RLIMIT_CPU``) and file writes (none), and is killed after ``timeout_s`` of wall time.
Whatever the file does, the caller gets a ``VideoReadError`` (``VideoTooLargeError`` for the
frame size, ``TooManyFramesError`` for the frame count, ``ProbeLimitError`` for a child that hit
a limit); the messages name the file by the name given, never by its path.

What the child answers (``ProbedVideo``): the declared frame size (checked against
``max_pixels`` before any frame is decoded), the rate, the duration and the frame count, counted
from the packets when the container has no count or when ``max_frames`` is set (counting stops
one past it), else the container's count, else duration x rate (an estimate). Later readers of
the same file (the video engine's runner and chunk workers) open it with the same FFmpeg,
which this child has just shown to fit the limits.

A spare child waits with its imports done (about half a second of CPU), so a probe costs the
probe; each child answers one request and exits. The child imports neither torch nor the
model. Run as ``python -m vsr_core.data.video_probe``: one JSON request on stdin, one JSON
answer on stdout.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass

from vsr_core.data.video_io import VideoReadError, VideoTooLargeError

MiB = 1024**2
PROBE_MEMORY_BYTES = 1024 * MiB  # above the child's own (~450 MiB of address space after its imports)
PROBE_CPU_SECONDS = 10
PROBE_TIMEOUT_S = 30.0
_CHILD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}


class TooManyFramesError(VideoReadError):
    """The video has more frames than allowed."""


class ProbeLimitError(VideoReadError):
    """Opening the video needed more memory, CPU time or wall time than allowed."""


@dataclass(frozen=True)
class ProbeLimits:
    max_pixels: int  # per frame, as declared by the container
    max_frames: int | None = None  # counted from the packets when set
    memory_bytes: int = PROBE_MEMORY_BYTES
    cpu_seconds: int = PROBE_CPU_SECONDS
    timeout_s: float = PROBE_TIMEOUT_S


@dataclass(frozen=True)
class ProbedVideo:
    width: int
    height: int
    fps: float
    duration: float | None  # seconds, as the container says
    frames: int  # counted, or the container's count, or duration x rate
    frames_counted: bool  # counted from the packets (exact)


# --- the parent's side --------------------------------------------------------------------------
class _Spares:
    """One child process waiting with its imports done; each child serves one probe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._spare: subprocess.Popen | None = None

    @staticmethod
    def _spawn() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env={**os.environ, **_CHILD_ENV}, close_fds=True)

    def take(self) -> subprocess.Popen:
        with self._lock:
            child, self._spare = self._spare, self._spawn()
        if child is None or child.poll() is not None:
            child = self._spawn()
        return child


_SPARES = _Spares()


def probe_untrusted(path: str, name: str, limits: ProbeLimits) -> ProbedVideo:
    """Probe the video at ``path`` (a local path or URI) in a child process (see the module
    docstring). Blocking: call it off the event loop. Raises ``VideoReadError`` subclasses
    whose messages name the file ``name``."""
    child = _SPARES.take()
    request = {"path": str(path), "name": name, **asdict(limits)}
    try:
        out, _ = child.communicate(json.dumps(request).encode() + b"\n", timeout=limits.timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise ProbeLimitError(f"{name}: opening the video took more than {limits.timeout_s:g} s") from None
    if child.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        raise ProbeLimitError(f"{name}: opening the video needed more than {limits.cpu_seconds} s of CPU time")
    try:
        answer = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ProbeLimitError(f"{name}: opening the video failed (the probe exited with {child.returncode}; "
                              "a file that needs too much memory ends like this)") from None
    error = answer.pop("error", None)
    if error is not None:
        raise _ERRORS.get(error, VideoReadError)(answer["detail"])
    return ProbedVideo(**answer)


# --- the child's side ----------------------------------------------------------------------------
_ERRORS = {"too_large": VideoTooLargeError, "too_many_frames": TooManyFramesError, "limit": ProbeLimitError,
           "invalid": VideoReadError}


def _limit_self(memory_bytes: int, cpu_seconds: int) -> None:
    import resource

    with open("/proc/self/statm") as statm:
        address_space = int(statm.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (address_space + memory_bytes,) * 2)
    used = resource.getrusage(resource.RUSAGE_SELF)
    spent = int(used.ru_utime + used.ru_stime) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (spent + cpu_seconds, spent + cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def _probe(request: dict) -> dict:
    from vsr_core.data.video_io import count_frames, probe_video

    path, max_frames = request["path"], request["max_frames"]
    info = probe_video(path, request["max_pixels"])
    frames, counted = info.num_frames, False
    if max_frames is not None or (frames is None and not info.duration):
        frames, counted = count_frames(path, stop_after=max_frames), True
    elif frames is None:
        frames = round(info.duration * info.fps)
    if max_frames is not None and frames > max_frames:
        raise TooManyFramesError(f"the video has more than {max_frames} frames")
    return asdict(ProbedVideo(info.width, info.height, info.fps, info.duration, frames, counted))


def _answer(request: dict) -> dict:
    name = request["name"]
    try:
        _limit_self(request["memory_bytes"], request["cpu_seconds"])
        return _probe(request)
    except MemoryError:
        return {"error": "limit", "detail": f"{name}: opening the video needed more than "
                f"{request['memory_bytes'] // MiB} MiB of memory"}
    except VideoReadError as exc:
        kind = next(k for k, cls in _ERRORS.items() if isinstance(exc, cls))  # subclasses first
        return {"error": kind, "detail": str(exc).replace(request["path"], name)}
    except Exception as exc:  # noqa: BLE001 - anything a hostile file provokes is a refusal
        return {"error": "invalid", "detail": f"{name}: cannot read the video ({type(exc).__name__})"}


def main() -> None:
    import vsr_core.data.video_io  # noqa: F401 - the imports, before the request arrives

    line = sys.stdin.readline()
    if not line:  # the parent went away
        return
    print(json.dumps(_answer(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
