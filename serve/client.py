"""A small client for the VSR Serve app.

    python serve/client.py window f0.png f1.png f2.png f3.png f4.png -o out.png
    python serve/client.py video clip.mp4 -o out.mp4 [--url http://127.0.0.1:8000]
    python serve/client.py model
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import requests
from tqdm import tqdm

CHUNK = 1 << 16


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


def _fail(response: requests.Response) -> None:
    try:
        error = response.json()
        message = f"{error.get('error')}: {error.get('detail')}"
    except ValueError:
        message = response.text[:500]
    sys.exit(f"error: HTTP {response.status_code} {message}")


def upscale_window(url: str, frames: list[Path], output: Path, timeout: float) -> None:
    files = [("frames", (path.name, path.read_bytes())) for path in frames]
    response = requests.post(f"{url}/v1/upscale", files=files, timeout=timeout)
    if not response.ok:
        _fail(response)
    output.write_bytes(response.content)
    print(f"{output} (model step {response.headers.get('X-VSR-Step')})")


def upscale_video(url: str, clip: Path, output: Path, timeout: float) -> None:
    size = clip.stat().st_size
    with tqdm(total=size, unit="B", unit_scale=True, desc="upload") as bar:
        body = _ProgressFile(clip, bar)
        try:
            response = requests.post(f"{url}/v1/upscale/video", data=body, stream=True, timeout=timeout,
                                     headers={"Content-Type": "video/mp4"})
        finally:
            body.close()
    if not response.ok:
        _fail(response)
    total = int(response.headers.get("Content-Length", 0)) or None
    with open(output, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc="download") as bar:
        for chunk in response.iter_content(CHUNK):
            f.write(chunk)
            bar.update(len(chunk))
    frames, fps = response.headers.get("X-VSR-Frames"), response.headers.get("X-VSR-FPS")
    print(f"{output}: {frames} frames at {fps} fps (model step {response.headers.get('X-VSR-Step')})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Client for the VSR Serve app.")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the app's base URL")
    parser.add_argument("--timeout", type=float, default=600, help="seconds")
    commands = parser.add_subparsers(dest="command", required=True)
    window = commands.add_parser("window", help="5 frames (PNG/JPEG, temporal order) -> 3x center frame (PNG)")
    window.add_argument("frames", nargs=5, type=Path)
    window.add_argument("-o", "--output", type=Path, required=True)
    video = commands.add_parser("video", help="mp4 clip -> 3x mp4 clip")
    video.add_argument("clip", type=Path)
    video.add_argument("-o", "--output", type=Path, required=True)
    commands.add_parser("model", help="print the served model's info")
    args = parser.parse_args(argv)
    url = args.url.rstrip("/")
    try:
        if args.command == "window":
            upscale_window(url, args.frames, args.output, args.timeout)
        elif args.command == "video":
            upscale_video(url, args.clip, args.output, args.timeout)
        else:
            response = requests.get(f"{url}/v1/model", timeout=args.timeout)
            if not response.ok:
                _fail(response)
            print(json.dumps(response.json(), indent=2))
    except requests.ConnectionError as exc:
        sys.exit(f"error: cannot reach {url}: {exc}")


if __name__ == "__main__":
    main()
