"""A video upload, streamed into its job's folder as it arrives: the raw body (``?filename=NAME``
names it), or the ``video`` part of a multipart body, parsed as it streams (python-multipart's
parser with our callbacks), so nothing is spooled whole to the system's temporary folder
(which may be RAM). Size limit and pace as ``serve.api.limited_stream``.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from serve.api import MULTIPART, VIDEO_TYPES, ApiError, BodyPace, limited_stream, media_type, unsupported_type
from vsr_core.data.video_io import VIDEO_EXTENSIONS

SUFFIX_BY_TYPE = {"video/quicktime": ".mov", "video/x-matroska": ".mkv", "video/webm": ".webm"}
ACCEPTED = f"a video as video/mp4 or application/octet-stream, or {MULTIPART} with a 'video' file"
MAX_PARTS = 8  # a form with a video and a few small fields
MAX_FIELD_BYTES = 64 * 1024  # what a part other than the video may hold


def input_name(filename: str | None, content_type: str) -> tuple[str, str]:
    """(the name shown to users, the upload's file name in the job folder: input.<ext>)."""
    default = SUFFIX_BY_TYPE.get(content_type, ".mp4")
    name = Path(filename or "").name or f"upload{default}"
    suffix = Path(name).suffix.lower()
    return name, f"input{suffix if suffix in VIDEO_EXTENSIONS else default}"


async def receive_video(request: Request, folder: Path, limit: int, pace: BodyPace) -> tuple[Path, str]:
    """The uploaded video in ``folder``: (its path, the name shown to users). 400, 408, 413 or 415
    ``ApiError`` for bad uploads (the caller removes the folder)."""
    kind = media_type(request)
    if kind in VIDEO_TYPES:
        name, stored = input_name(request.query_params.get("filename"), kind)
        target = folder / stored
        with open(target, "wb") as file:
            async for chunk in limited_stream(request, limit, pace):
                file.write(chunk)
    elif kind == MULTIPART:
        target, name = await _receive_part(request, folder, limit, pace)
    else:
        raise unsupported_type(request, ACCEPTED)
    if target.stat().st_size == 0:
        raise ApiError(400, "empty_body", "the video is empty (0 bytes)")
    return target, name


class _VideoPart:
    """python-multipart callbacks that write the part named ``video`` into a file of the folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.parts = 0
        self.header_name, self.header_value, self.disposition = b"", b"", b""
        self.file = None  # the open target while the video part streams
        self.field_bytes = 0
        self.found: tuple[Path, str] | None = None
        self.pending: list[bytes] = []  # the video's bytes of this chunk, written after parsing it

    def callbacks(self) -> dict:
        return {"on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end}

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise ApiError(400, "invalid_multipart", f"more than {MAX_PARTS} parts; send the 'video' file")
        self.disposition, self.field_bytes = b"", 0

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name, self.header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        if options.get(b"name") == b"video" and b"filename" in options and self.found is None:
            filename = options[b"filename"].decode("utf-8", "replace")
            name, stored = input_name(filename, "")
            self.file = open(self.folder / stored, "wb")  # noqa: SIM115 - closed in on_part_end / close()
            self.found = (self.folder / stored, name)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.file is not None:
            self.pending.append(data[start:end])
            return
        self.field_bytes += end - start
        if self.field_bytes > MAX_FIELD_BYTES:
            raise ApiError(400, "invalid_multipart", f"a part other than 'video' holds more than {MAX_FIELD_BYTES} "
                           "bytes")

    def on_part_end(self) -> None:
        self.flush()
        self.close()

    def flush(self) -> None:
        if self.file is not None:
            self.file.writelines(self.pending)
        self.pending.clear()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


async def _receive_part(request: Request, folder: Path, limit: int, pace: BodyPace) -> tuple[Path, str]:
    _, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "invalid_multipart", "cannot parse the multipart body: no boundary in Content-Type")
    part = _VideoPart(folder)
    parser = MultipartParser(boundary, part.callbacks())
    try:
        async for chunk in limited_stream(request, limit, pace):
            parser.write(chunk)
            part.flush()
        parser.finalize()
    except FormParserError as exc:
        raise ApiError(400, "invalid_multipart", f"cannot parse the multipart body: {exc}") from None
    finally:
        part.close()
    if part.found is None:
        raise ApiError(400, "missing_video", "expected a file part named 'video'")
    return part.found
