"""What the subcommands share: clear failures, list options, atomic writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console


def fail(message: str) -> NoReturn:
    """Prints an error naming the fix and exits with status 2 (a usage error), before any work."""
    Console(stderr=True).print(f"[bold red]error:[/bold red] {message}", highlight=False)
    raise typer.Exit(2)


def split_list(value: str) -> list[str]:
    """Splits a comma-separated option, dropping blanks and duplicates."""
    return list(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Writes a file so that readers see the old or the new content, never a partial one."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
