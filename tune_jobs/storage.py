"""Local paths and URIs (s3://, gs://, file://) through pyarrow's filesystems: one place for every file access
to an experiment directory, by the sweep, its scheduler and the analysis.

Writes are atomic: a local file is written beside its target and renamed over it; an object store's PUT is
atomic by itself. Import-light (pyarrow only).
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow.fs as pafs

from alignmixup.files import atomic_write

URI = re.compile(r"^[a-z][a-z0-9+.-]*://")


def is_uri(location: str | Path) -> bool:
    """Whether `location` is a URI (scheme://...) rather than a local path."""
    return bool(URI.match(str(location)))


def join(base: str | Path, *names: str) -> str:
    """base/name/... for a local path or a URI."""
    return "/".join([str(base).rstrip("/"), *names])


def absolute(location: str | Path) -> str:
    """A URI as given (without a trailing slash), a local path made absolute."""
    text = str(location)
    return text.rstrip("/") if is_uri(text) else str(Path(text).expanduser().resolve())


def resolve(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path on it for a local path or a URI."""
    text = absolute(location)
    if is_uri(text):
        return pafs.FileSystem.from_uri(text)
    return pafs.LocalFileSystem(), text


def file_type(location: str | Path) -> pafs.FileType:
    """What is at `location`: pafs.FileType.File, Directory or NotFound."""
    fs, path = resolve(location)
    return fs.get_file_info(path).type


def is_file(location: str | Path) -> bool:
    return file_type(location) == pafs.FileType.File


def exists(location: str | Path) -> bool:
    return file_type(location) != pafs.FileType.NotFound


def read_bytes(location: str | Path) -> bytes:
    fs, path = resolve(location)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def read_text(location: str | Path) -> str:
    """The UTF-8 text stored at `location`."""
    return read_bytes(location).decode()


def read_json(location: str | Path) -> Any:
    """The JSON document stored at `location`."""
    return json.loads(read_text(location))


def write(location: str | Path, write_to: Callable[[BinaryIO], Any]) -> str:
    """Write `location` atomically through write_to(binary file); returns the location written."""
    target = absolute(location)
    if is_uri(target):
        fs, path = resolve(target)
        buffer = io.BytesIO()
        write_to(buffer)
        with fs.open_output_stream(path) as out:  # an object store PUT is atomic
            out.write(buffer.getvalue())
        return target
    atomic_write(Path(target), write_to)
    return target


def write_text(location: str | Path, text: str) -> str:
    return write(location, lambda fh: fh.write(text.encode()))


def children(location: str | Path) -> list[pafs.FileInfo]:
    """What lies directly under the directory `location` (files and directories), sorted by path."""
    fs, path = resolve(location)
    return sorted(fs.get_file_info(pafs.FileSelector(path, recursive=False)), key=lambda info: info.path)


def check_writable(location: str | Path) -> None:
    """Create the directory `location` if needed and write and delete a probe file in it; OSError if not possible.

    URIs go through pyarrow's filesystem (credentials and bucket checked by a real PUT and DELETE).
    """
    fs, path = resolve(location)
    fs.create_dir(path, recursive=True)
    probe = f"{path}/.alignmixup-write-test-{os.getpid()}"
    with fs.open_output_stream(probe) as out:
        out.write(b"ok")
    fs.delete_file(probe)
