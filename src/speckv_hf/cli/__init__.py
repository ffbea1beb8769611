"""The `speckv` command line: one module per subcommand."""

from __future__ import annotations

import typer

from . import demo

app = typer.Typer(
    name="speckv",
    help="Adaptive speculation length for Hugging Face transformers' assisted generation.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("demo")(demo.demo)


@app.callback()
def _root() -> None:
    """speckv-hf command line."""


def main() -> None:
    """Console-script entry point."""
    app()
