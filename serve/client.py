"""A small client for the VSR Serve app.

    python serve/client.py window f0.png f1.png f2.png f3.png f4.png -o out.png
    python serve/client.py job submit film.mp4 --wait -o film_x3.mp4     # any length, on the cluster
    python serve/client.py job submit film.mp4                           # prints the job id
    python serve/client.py job wait ID          # a progress bar until it is done
    python serve/client.py job download ID -o film_x3.mp4
    python serve/client.py job cancel ID  |  job list
    python serve/client.py video clip.mp4 -o out.mp4                     # a short clip, synchronously
    python serve/client.py stream clip.mp4 out.mp4   # frame by frame over WS /v1/stream (no audio)
    python serve/client.py model

--url defaults to http://127.0.0.1:8000; the API key (if the server has one) comes from
--api-key-file or $VSR_API_KEY and is sent as 'Authorization: Bearer <key>'.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import requests
from tqdm import tqdm

CHUNK = 1 << 16
POLL_S = 0.5


class _ProgressFile:
    """A file object for `requests` that reports upload progress; it has a length, so the
    upload is sent with a Content-Length (the server checks it before reading)."""

    def __init__(self, path: Path, bar: tqdm):
        self._file = open(path, "rb")
        self._size = path.stat().st_size
        self._bar = bar

    def __len__(self) -> int:
        return self._size

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(CHUNK if size is None or size < 0 else size)
        self._bar.update(len(data))
        return data

    def close(self) -> None:
        self._file.close()


class Client:
    def __init__(self, url: str, api_key: str | None, timeout: float):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        try:
            response = requests.request(method, self.url + path, headers=headers, timeout=self.timeout, **kwargs)
        except requests.ConnectionError as exc:
            sys.exit(f"error: cannot reach {self.url}: {exc}")
        if not response.ok:
            try:
                error = response.json()
                message = f"{error.get('error')}: {error.get('detail')}"
            except ValueError:
                message = response.text[:500]
            sys.exit(f"error: HTTP {response.status_code} {message}")
        return response

    def upload(self, path: str, clip: Path, options: dict | None = None) -> requests.Response:
        with tqdm(total=clip.stat().st_size, unit="B", unit_scale=True, desc="upload") as bar:
            body = _ProgressFile(clip, bar)
            try:
                return self.request("POST", path, data=body, stream=True, params={"filename": clip.name, **(options or {})},
                                    headers={"Content-Type": "video/mp4"})
            finally:
                body.close()

    def download(self, response: requests.Response, output: Path) -> Path:
        if response.headers.get("Content-Type") == "video/x-matroska" and output.suffix.lower() != ".mkv":
            output = output.with_suffix(".mkv")  # the input had streams an mp4 cannot hold
        total = int(response.headers.get("Content-Length", 0)) or None
        partial = output.with_name(output.name + ".partial")
        with open(partial, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc="download") as bar:
            for chunk in response.iter_content(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
        partial.replace(output)  # never a half-written file under the real name
        return output


def upscale_window(client: Client, frames: list[Path], output: Path) -> None:
    files = [("frames", (path.name, path.read_bytes())) for path in frames]
    response = client.request("POST", "/v1/upscale", files=files)
    output.write_bytes(response.content)
    print(f"{output} (model step {response.headers.get('X-VSR-Step')})")


def upscale_video(client: Client, clip: Path, output: Path) -> None:
    response = client.upload("/v1/upscale/video", clip)
    output = client.download(response, output)
    frames, fps = response.headers.get("X-VSR-Frames"), response.headers.get("X-VSR-FPS")
    print(f"{output}: {frames} frames at {fps} fps (model step {response.headers.get('X-VSR-Step')})")


class StreamFailed(RuntimeError):
    """The server ended a stream with a JSON error."""

    def __init__(self, error: str, detail: str):
        super().__init__(f"{error}: {detail}")
        self.error, self.detail = error, detail


def _encode_input(frame, fmt: str) -> bytes:
    if fmt == "raw":
        return frame.tobytes()
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, **({"format": "PNG", "compress_level": 1} if fmt == "png" else
                                          {"format": "JPEG", "quality": 95}))
    return buffer.getvalue()


def _decode_output(data: bytes, output: str, shape: tuple[int, int, int]):
    import numpy as np

    if output == "raw":
        return np.frombuffer(data, np.uint8).reshape(shape)
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def stream_frames(url: str, frames: Iterable, api_key: str | None = None, fmt: str = "png",
                  output: str = "png", timeout: float = 600) -> Iterator:
    """Send HxWx3 uint8 frames over ``WS /v1/stream`` (serve/stream.py has the protocol) and
    yield the 3x frames in order, each as soon as the server sends it (2 frames behind).
    Frames are sent from a thread while the answers are read here. Raises StreamFailed."""
    from websockets.sync.client import connect

    source = iter(frames)
    first = next(source, None)
    if first is None:
        return
    height, width = first.shape[:2]
    ws_url = "ws" + url.rstrip("/")[len("http"):] + "/v1/stream" if url.startswith("http") else url
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with _connect(connect, ws_url, additional_headers=headers, max_size=None, open_timeout=timeout,
                  close_timeout=5) as ws:
        ws.send(json.dumps({"width": width, "height": height, "format": fmt, "output": output}))
        ready = json.loads(ws.recv(timeout))
        if ready.get("type") != "ready":
            raise StreamFailed(ready.get("error", "protocol"), ready.get("detail", str(ready)))
        stop = threading.Event()

        def send_all() -> None:
            try:
                for frame in _chain(first, source):
                    if stop.is_set():
                        return
                    ws.send(_encode_input(frame, fmt))
                ws.send(json.dumps({"type": "end"}))
            except Exception:  # noqa: BLE001 - the server closed the stream; recv below says why
                pass

        sender = threading.Thread(target=send_all, name="vsr-stream-send", daemon=True)
        sender.start()
        shape = (3 * height, 3 * width, 3)
        try:
            while True:
                message = ws.recv(timeout)
                if isinstance(message, bytes):
                    yield _decode_output(message, output, shape)
                    continue
                reply = json.loads(message)
                if reply.get("type") == "end":
                    return
                raise StreamFailed(reply.get("error", "protocol"), reply.get("detail", str(reply)))
        finally:
            stop.set()
            sender.join(timeout=5)


def _connect(connect, url: str, **kwargs):
    """The WebSocket; a refused handshake (the server answers 401, 403 or 429 with a JSON error
    instead of a socket) raises StreamFailed with that error."""
    from websockets.exceptions import InvalidStatus

    try:
        return connect(url, **kwargs)
    except InvalidStatus as exc:
        try:
            body = json.loads(bytes(exc.response.body or b"{}"))
        except ValueError:
            body = {}
        retry = exc.response.headers.get("Retry-After")
        detail = body.get("detail", f"HTTP {exc.response.status_code}") + (f" (retry after {retry} s)" if retry else "")
        raise StreamFailed(body.get("error", f"http_{exc.response.status_code}"), detail) from None


def _chain(first, rest: Iterator) -> Iterator:
    yield first
    yield from rest


def stream_video(client: Client, api_key: str | None, clip: Path, output: Path, fmt: str, output_format: str) -> None:
    from vsr_core.data.video_io import FrameWriter, iter_frames, probe_video

    info = probe_video(clip)
    with FrameWriter(output, info.frame_rate) as writer, tqdm(total=info.num_frames, unit="frame",
                                                              desc="stream") as bar:
        try:
            for frame in stream_frames(client.url, iter_frames(clip), api_key, fmt, output_format, client.timeout):
                writer.write(frame)
                bar.update(1)
        except StreamFailed as exc:
            sys.exit(f"error: {exc}")
    print(f"{output}: {bar.n} frames at {info.fps:g} fps")


def wait_for_job(client: Client, job_id: str) -> dict:
    """Poll the job with a progress bar (frames done across all workers) until it ends."""
    with tqdm(total=None, unit="frame", desc=f"job {job_id[:8]}") as bar:
        while True:
            job = client.request("GET", f"/v1/jobs/{job_id}").json()
            bar.total = job["frames_total"]
            bar.set_postfix_str(f"{job['state']}, {job['fps']:.1f} fps" + (
                f", ETA {job['eta_seconds']:.0f}s" if job.get("eta_seconds") else ""))
            bar.update(job["frames_done"] - bar.n)
            if job["state"] in ("done", "failed", "cancelled"):
                return job
            time.sleep(POLL_S)


def job_command(client: Client, args: argparse.Namespace) -> None:
    if args.action == "submit":
        options = {k: v for k, v in (("codec", args.codec), ("crf", args.crf), ("preset", args.preset),
                                     ("pix_fmt", args.pix_fmt)) if v is not None}
        if args.preview:
            options.update(preview_start=args.preview[0], preview_duration=args.preview[1])
        job = client.upload("/v1/jobs", args.target, options).json()
        print(f"job {job['id']}: {job['frames_total']} frames queued")
        if not args.wait:
            return
        args.target = job["id"]
    if args.action in ("submit", "wait"):
        job = wait_for_job(client, str(args.target))
        if job["state"] != "done":
            sys.exit(f"job {job['id']} {job['state']}" + (f": {job['error']}" if job.get("error") else ""))
        print(f"job {job['id']} done: {job['frames_total']} frames on {job['nodes']} node(s); {job.get('encoder')}")
        if job.get("projection"):
            p = job["projection"]
            print(f"preview: {p['fps']:.2f} frames/s; the whole video ({p['total_frames']} frames) would take about "
                  f"{p['projected_seconds'] or 0:.0f} s and {p['projected_bytes'] / 1e6:.1f} MB")
        if args.output is None:
            return
    if args.action in ("submit", "wait", "download"):
        if args.output is None:
            sys.exit("error: give -o OUTPUT.mp4")
        job_id = job["id"] if args.action != "download" else str(args.target)
        print(client.download(client.request("GET", f"/v1/jobs/{job_id}/result", stream=True), args.output))
    elif args.action == "cancel":
        print(json.dumps(client.request("DELETE", f"/v1/jobs/{args.target}").json()))
    elif args.action == "list":
        for job in client.request("GET", "/v1/jobs").json()["jobs"]:
            print(f"{job['id']}  {job['state']:<9} {job['frames_done']:>7}/{job['frames_total']} frames  "
                  f"{job['source_name']}")


DESCRIPTION = "Client for the VSR Serve app."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The client's flags and commands (``python serve/client.py`` and ``vsr client``)."""
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the app's base URL")
    parser.add_argument("--api-key-file", type=Path, help="file with the API key (default: $VSR_API_KEY)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per HTTP request")
    commands = parser.add_subparsers(dest="command", required=True)
    window = commands.add_parser("window", help="5 frames (PNG/JPEG, temporal order) -> 3x center frame (PNG)")
    window.add_argument("frames", nargs=5, type=Path)
    window.add_argument("-o", "--output", type=Path, required=True)
    job = commands.add_parser("job", help="a video of any length, upscaled on the cluster")
    job.add_argument("action", choices=("submit", "wait", "download", "cancel", "list"))
    job.add_argument("target", nargs="?", help="the video file (submit) or the job id")
    job.add_argument("-o", "--output", type=Path, help="where to save the result (submit --wait, wait, download)")
    job.add_argument("--wait", action="store_true", help="submit: then wait with a progress bar")
    job.add_argument("--codec", help="submit: h264, h265 or av1 (as vsr upscale)")
    job.add_argument("--crf", type=int, help="submit: encoder quality")
    job.add_argument("--preset", help="submit: encoder preset")
    job.add_argument("--pix-fmt", help="submit: output pixel format")
    job.add_argument("--preview", type=float, nargs=2, metavar=("START", "DURATION"),
                     help="submit: only this stretch (seconds), with a projection for the whole video")
    video = commands.add_parser("video", help="a short mp4 clip -> 3x mp4 clip, in one request")
    video.add_argument("clip", type=Path)
    video.add_argument("-o", "--output", type=Path, required=True)
    stream = commands.add_parser("stream", help="a video frame by frame over WS /v1/stream -> 3x video (no audio) "
                                 "or a folder of PNGs")
    stream.add_argument("clip", type=Path)
    stream.add_argument("output", type=Path, help="an .mp4 (H.264) or a folder for numbered PNG frames")
    stream.add_argument("--format", default="png", choices=("png", "jpeg", "raw"), help="how frames are sent")
    stream.add_argument("--output-format", default="png", choices=("png", "jpeg", "webp", "raw"),
                        help="how the 3x frames come back (raw: no encoding, 9x the bytes of the input)")
    commands.add_parser("model", help="print the served model's info")


def main(argv: list[str] | None = None) -> None:
    run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    key = args.api_key_file.read_text().strip() if args.api_key_file else os.environ.get("VSR_API_KEY")
    client = Client(args.url, key, args.timeout)
    if args.command == "window":
        upscale_window(client, args.frames, args.output)
    elif args.command == "job":
        if args.action != "list" and not args.target:
            sys.exit(f"error: job {args.action} needs " + ("a video file" if args.action == "submit" else "a job id"))
        if args.action == "submit":
            args.target = Path(args.target)
        job_command(client, args)
    elif args.command == "video":
        upscale_video(client, args.clip, args.output)
    elif args.command == "stream":
        stream_video(client, key, args.clip, args.output, args.format, args.output_format)
    else:
        print(json.dumps(client.request("GET", "/v1/model").json(), indent=2))
    return 0


if __name__ == "__main__":
    main()
