"""Progress of a long command on stderr (`speckv bench`, `speckv demo`): a live bar on a terminal, plain lines
elsewhere."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["ProgressReport"]


class ProgressReport:
    """Progress of a run on `console` (stderr): a live bar on a terminal, else one plain line per prompt.

    Logs, pipes and CI get the lines, so a run that takes minutes is never silent; the results on stdout and the
    `--json`/`--markdown` files carry none of it.

    Args:
        console: where progress goes (stderr, so that stdout holds the results only).
        label: what every line starts with (the compression, or `demo`).
        total: the calls the run makes (for the bar).
        quiet: show nothing.
    """

    def __init__(self, console: Console, label: str, total: int, quiet: bool = False) -> None:
        self.console, self.label = console, label
        self.lines = not quiet and not console.is_terminal
        self._bar = None
        if not quiet and console.is_terminal:
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            self._bar = Progress(*columns, console=console, transient=True)
            self._task = self._bar.add_task(label, total=total)
        self._start = time.monotonic()

    def __enter__(self) -> ProgressReport:
        if self._bar is not None:
            self._bar.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, error, traceback)

    def _line(self, text: str) -> None:
        elapsed = int(time.monotonic() - self._start)
        self.console.print(f"{self.label}: {text} [{elapsed // 60}:{elapsed % 60:02d}]", markup=False, highlight=False)

    def phase(self, text: str) -> None:
        """A stage of the run begins (reference outputs, checks, ...)."""
        if self._bar is not None:
            self._bar.update(self._task, description=f"{self.label}: {text}")
        elif self.lines:
            self._line(text)

    def call_done(self, method: str) -> None:
        """One `generate()` call is done (advances the bar)."""
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=f"{self.label}: {escape(method)}")  # `x[k=v]`

    def prompt_done(self, done: Any) -> None:
        """Every method has run on a prompt (a `speckv_hf.bench.harness.PromptDone`): one line off a terminal."""
        if not self.lines:
            return
        if done.repeat < 0:
            self._line(f"warm-up prompt {done.index + 1}/{done.prompts} ({done.prompt_id}) done")
            return
        where = f"repeat {done.repeat + 1}/{done.repeats}, " if done.repeats > 1 else ""
        self._line(
            f"{where}prompt {done.index + 1}/{done.prompts} ({done.prompt_id}): {len(done.calls)} calls, "
            f"{done.seconds:.1f} s"
        )
