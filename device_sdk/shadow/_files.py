"""Crash-safe JSON files: write to a temporary file, fsync, rename over, fsync the directory.

A reader sees either the old or the new content, never a torn write, even across a power cut.
These are blocking calls: async code runs them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["dump_json", "read_json", "remove_durably", "write_atomic", "write_json_atomic"]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dump_json(data: Any) -> bytes:
    """Compact, key-sorted UTF-8 JSON (serialize on the event loop, write in a thread)."""
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def write_json_atomic(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON, atomically and durably."""
    write_atomic(path, dump_json(data))


def write_atomic(path: Path, content: bytes) -> None:
    """Replace ``path`` with ``content``, atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def read_json(path: Path) -> Any | None:
    """The JSON content of ``path``, or ``None`` if it does not exist.

    Raises:
        ValueError: The file is not valid UTF-8 JSON.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    return json.loads(raw)


def remove_durably(path: Path) -> None:
    """Delete ``path`` (if present) and make the deletion durable."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    _fsync_dir(path.parent)
