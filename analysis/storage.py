"""Local paths and URIs (s3://, gs://, file://) through pyarrow's filesystems."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs


def resolve(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and path for a local path or a URI."""
    text = str(location)
    if "://" in text:
        return pafs.FileSystem.from_uri(text)
    return pafs.LocalFileSystem(), str(Path(text).expanduser().resolve())


def is_file(fs: pafs.FileSystem, path: str) -> bool:
    """Whether `path` is a file on `fs`."""
    return fs.get_file_info(path).type == pafs.FileType.File


def read_text(fs: pafs.FileSystem, path: str) -> str:
    """The UTF-8 text stored at `path` on `fs`."""
    with fs.open_input_stream(path) as stream:
        return stream.read().decode()


def read_json(fs: pafs.FileSystem, path: str) -> Any:
    """Parse the JSON document stored at `path` on `fs`."""
    return json.loads(read_text(fs, path))


def subdirectories(fs: pafs.FileSystem, path: str) -> list[str]:
    """Paths of the directories directly under `path`, sorted."""
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(info.path for info in infos if info.type == pafs.FileType.Directory)
