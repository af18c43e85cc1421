"""Local paths and storage URIs (``s3://``, ``gs://``, ``file://`` ...) through ``pyarrow.fs``,
the same way Ray Tune's ``storage_path`` does.

Videos are read through a seekable file object, so a chunk worker on another node can read
its frames straight from shared storage; results are written locally first (an mp4 muxer
must seek back to finish the file) and then copied to their destination.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import IO

import pyarrow.fs


def is_uri(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def _filesystem(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except (pyarrow.ArrowInvalid, ValueError) as exc:
        raise ValueError(f"unsupported storage location {uri!r}: {exc}") from None


def filesystem(location: str | os.PathLike) -> tuple[pyarrow.fs.FileSystem, str]:
    """(filesystem, path in it) of a URI, or of a local path (absolute, ``~`` expanded, symlinks resolved)."""
    if is_uri(location):
        return _filesystem(str(location))
    return pyarrow.fs.LocalFileSystem(), os.path.realpath(os.path.expanduser(str(location)))


def exists(location: str | os.PathLike) -> bool:
    if not is_uri(location):
        return Path(location).exists()
    fs, path = _filesystem(str(location))
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def size(location: str | os.PathLike) -> int:
    if not is_uri(location):
        return Path(location).stat().st_size
    fs, path = _filesystem(str(location))
    return fs.get_file_info(path).size or 0


def open_input(location: str | os.PathLike) -> IO[bytes]:
    """A seekable binary file object for a local path or a URI."""
    if not is_uri(location):
        return open(location, "rb")
    fs, path = _filesystem(str(location))
    return fs.open_input_file(path)


def put_file(local: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Copy a finished local file to ``destination`` (a path or URI), atomically for local paths."""
    if not is_uri(destination):
        destination = Path(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        if Path(local).resolve() != destination.resolve():
            partial = destination.with_name(destination.name + ".partial")
            shutil.copyfile(local, partial)
            os.replace(partial, destination)
        return
    fs, path = _filesystem(str(destination))
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    with open(local, "rb") as src, fs.open_output_stream(path) as dst:
        shutil.copyfileobj(src, dst, length=1 << 20)
