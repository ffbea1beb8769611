"""Atomic file writes: readers see the old content or the new one, never a partial file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["TMP_SUFFIX", "atomic_write", "atomic_write_text"]

TMP_SUFFIX = ".tmp"  # temporary files are `.NAME.RANDOM.tmp`


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Writes a file so that readers see the old content or the new one, never a partial file.

    `write` fills a temporary file in the same folder (`.NAME.RANDOM.tmp`), which is flushed to disk and renamed
    over `path`; the folder is synced so the rename survives a crash.

    Args:
        path: the final path.
        write: called with the temporary file, opened for binary writing.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # folders cannot be opened on some platforms (Windows): the rename is all we can do
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def atomic_write_text(path: str | Path, text: str) -> None:
    """[`atomic_write`][] for UTF-8 text."""
    atomic_write(path, lambda stream: stream.write(text.encode("utf-8")))
