"""The `speckv` command line: one module per subcommand.

Importing it is cheap (no torch): each subcommand module declares its options at the top and imports the heavy
code inside its command function, so `speckv --help` and `speckv --version` answer at once.

Errors: bad input (a `ValueError`, `TypeError`, `ImportError` naming an extra, or a missing or wrong path; the
library's own errors are `ValueError`s) prints one line, `error: ...`, and exits with status 2. Anything else is
unexpected: one line, a hint to rerun with `--debug`, and status 1. `--debug` (or `SPECKV_DEBUG=1`) prints the
full traceback as well.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer

from . import bench, demo, paper, profile, train
from ._common import print_error

#: What a user's input or environment can cause, with a message naming the fix: exit status 2, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # also the library's own: PredictorLoadError, PredictorSchemaError, PromptsFileError
    TypeError,
    ImportError,  # a missing optional backend; the library's messages name the extra to install
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)
DEBUG_ENV = "SPECKV_DEBUG"

app = typer.Typer(
    name="speckv",
    help="Adaptive speculation length for Hugging Face transformers' assisted generation.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("bench")(bench.bench)
app.command("demo")(demo.demo)
app.command("paper")(paper.paper)
app.command("profile")(profile.profile)
app.command("train")(train.train)

# Whether this run asked for tracebacks, set by the root options before a subcommand runs.
_debug = {"on": False}


def _print_version(value: bool) -> None:
    if value:
        from ..__about__ import __version__

        typer.echo(f"speckv-hf {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help=f"On an error, print the full traceback (also: {DEBUG_ENV}=1)."),
) -> None:
    """speckv-hf command line."""
    _debug["on"] = debug


def main(args: list[str] | None = None) -> None:
    """Console-script entry point: runs the command line and turns an error into one line and an exit status.

    Args:
        args: the command-line arguments (default: `sys.argv[1:]`).

    Raises:
        SystemExit: always; 0 on success, 2 for bad input (usage errors included), 1 for anything unexpected.
    """
    _debug["on"] = False
    try:
        # Usage errors, `typer.Exit` and Ctrl-C are typer's to report; only the commands' own errors get here.
        app(args=args, prog_name="speckv")
    except Exception as error:  # every error gets one line and a status; --debug shows the rest
        sys.exit(_report(error, debug=_debug["on"] or _env_debug()))


def _env_debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def _report(error: Exception, debug: bool) -> int:
    """Prints `error` on one line (after its traceback with `debug`) and returns the exit status."""
    expected = isinstance(error, USER_ERRORS)
    if debug:
        traceback.print_exception(type(error), error, error.__traceback__)
    message = str(error) or type(error).__name__
    print_error(message if expected else f"{type(error).__name__}: {message}")
    if not expected and not debug:
        typer.echo(
            f"This is unexpected: rerun with --debug (speckv --debug COMMAND ..., or {DEBUG_ENV}=1) for the "
            "traceback, and report it.",
            err=True,
        )
    return 2 if expected else 1
