"""Durable file writes, the one way the app writes its files (sessions, images, settings, recovery).

A file is written to a temporary file in the same folder, flushed to disk, renamed over the target
and the folder is flushed too, so after a crash or on a full disk the target is either the old file
or the new one, never a half-written one, and a write that returned is on disk.  Failures raise the
OSError (the caller reports it) and leave no temporary file behind.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    _replace(Path(path), lambda fd: write_all(fd, data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Copy a file (an image into a user's folder) with the same guarantee."""
    def fill(fd: int) -> None:
        with open(source, "rb") as reader:
            while chunk := reader.read(1 << 20):
                write_all(fd, chunk)

    _replace(Path(target), fill)


def _replace(target: Path, fill: Callable[[int], None]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        try:
            fill(fd)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    sync_folder(target.parent)


def write_all(fd: int, data: bytes) -> None:
    """os.write until all is written (it may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def remove(path: str | os.PathLike[str]) -> None:
    """Delete a file so that the deletion survives a crash too (raises FileNotFoundError)."""
    target = Path(path)
    target.unlink()
    sync_folder(target.parent)


def sync_folder(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk.  Windows has no such call:
    there NTFS journals the rename itself."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
