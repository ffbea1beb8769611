"""The `speckv` command line: one module per subcommand."""

from __future__ import annotations

import typer

from . import bench, demo, paper, profile, train

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
) -> None:
    """speckv-hf command line."""


def main() -> None:
    """Console-script entry point."""
    app(prog_name="speckv")
