"""What the subcommands share: clear failures, list options, atomic writes."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape


def print_error(message: str) -> None:
    """Prints `error: MESSAGE` to stderr on one line: whitespace runs (newlines too) become one space, the text is
    never read as rich markup, and the terminal, not rich, wraps it."""
    one_line = " ".join(message.split())
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/bold red] {escape(one_line)}", highlight=False)


def fail(message: str) -> NoReturn:
    """Prints an error naming the fix and exits with status 2 (a usage error), before any work."""
    print_error(message)
    raise typer.Exit(2)


def split_list(value: str) -> list[str]:
    """Splits a comma-separated option, dropping blanks and duplicates."""
    return list(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Writes a text file atomically (see `speckv_hf.core.atomic`)."""
    from ..core.atomic import atomic_write_text as write

    write(path, text)
