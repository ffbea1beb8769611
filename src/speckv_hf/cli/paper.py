"""`speckv paper`: the SpecKV paper's Table 1 reproduced from its released data, and rescored honestly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from ._common import atomic_write_text, fail

DEFAULT_DATA = Path("../shared/data/speckv-paper")  # used only when it exists, relative to the current folder
ORDER = ("fp16", "int8", "nf4", "Overall")


def paper(
    data: Path | None = typer.Option(
        None, "--data", help="The paper's released data folder \\[default: ../shared/data/speckv-paper if it exists]."
    ),
    json_out: Path | None = typer.Option(None, "--json", help="Write the whole report as JSON (atomically)."),
    markdown_out: Path | None = typer.Option(None, "--markdown", help="Write the three tables as Markdown."),
    export_npz: Path | None = typer.Option(
        None, "--export-npz", help="Write the paper's MLP (refit on all rows) as W1/b1/W2/b2 arrays."
    ),
) -> None:
    """Reproduce the SpecKV paper's Table 1 (arXiv 2605.02888), then rescore it by measured outcomes and tokens/s.

    See docs/paper.md for what each table means.
    """
    # Every check before any work.
    if data is None:
        if not DEFAULT_DATA.is_dir():
            fail(f"pass --data DIR: the folder of the paper's released CSVs ({DEFAULT_DATA} does not exist here).")
        data = DEFAULT_DATA
    for option, path in (("--json", json_out), ("--markdown", markdown_out), ("--export-npz", export_npz)):
        if path is not None and (path.is_dir() or not path.parent.is_dir()):
            fail(f"{option} {path}: pass a file path in an existing folder.")
    from ..paper.data import PaperDataError, export_paper_npz, load_paper_data, require_sklearn

    try:
        require_sklearn()
        loaded = load_paper_data(data)
    except (PaperDataError, ImportError) as error:
        fail(str(error))

    from ..paper.tables import paper_report, to_markdown

    with Console(stderr=True).status("fitting the paper's models"):
        report = paper_report(loaded)
    console = Console()
    split = report["split"]
    console.print(
        f"data: {report['source']['data']} (MIT licence)\n"
        f"split: {split['train']:,} train / {split['test']:,} test steps "
        f"(paper: {split['paper']['train']:,} / {split['paper']['test']:,})",
        highlight=False,
    )
    console.print(_table1(report))
    console.print(f"largest |ours - paper| over all Table 1 cells: {_largest_gap(report):.2f}", highlight=False)
    rescored = report["rescored"]
    rows = rescored["rows"]
    title = f"measured tokens/step, causal features ({rows['test']} held-out steps)"
    console.print(_rescored(title, rescored["measured"], "{:.2f}"))
    console.print(_rescored("measured tokens/s (the paper's step times)", rescored["wall_clock"], "{:.1f}"))
    if not all(report["within_paper_ci"].values()):
        outside = ", ".join(name for name, ok in report["within_paper_ci"].items() if not ok)
        console.print(f"[yellow]outside the paper's 95% CI: {outside}[/yellow]")
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(report, indent=2) + "\n")
        console.print(f"wrote {json_out}", highlight=False)
    if markdown_out is not None:
        atomic_write_text(markdown_out, to_markdown(report))
        console.print(f"wrote {markdown_out}", highlight=False)
    if export_npz is not None:
        export_paper_npz(loaded, export_npz)
        console.print(f"wrote {export_npz} (W1 6x16, b1, W2 16x1, b2)", highlight=False)


def _new_table(title: str, headers: tuple[str, ...]) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    for header in headers:
        table.add_column(header, justify="left" if header == "policy" else "right", no_wrap=True)
    return table


def _table1(report: dict[str, Any]) -> Table:
    headers = ("policy", *ORDER, "paper", "paper 95% CI", "in CI")
    table = _new_table("Table 1 reproduced: expected tokens/step (the paper's scoring)", headers)
    for name, ours in report["table1"].items():
        paper = report["paper_table1"].get(name, {})
        bounds = report["paper_confidence_intervals"].get(name)
        inside = report["within_paper_ci"].get(name)
        table.add_row(
            name,
            *(f"{ours[c]:.2f}" for c in ORDER),
            f"{paper['Overall']:.2f}" if "Overall" in paper else "-",
            f"{bounds[0]:.2f}-{bounds[1]:.2f}" if bounds else "-",
            "-" if inside is None else ("yes" if inside else "NO"),
        )
    return table


def _largest_gap(report: dict[str, Any]) -> float:
    """The largest |ours - paper| over every Table 1 cell, ours rounded to 2 decimals as the paper prints them."""
    gaps = [
        abs(round(ours[c], 2) - report["paper_table1"][name][c])
        for name, ours in report["table1"].items()
        for c in ORDER
        if c in report["paper_table1"].get(name, {})
    ]
    return max(gaps, default=float("nan"))


def _rescored(title: str, rows: dict[str, Any], form: str) -> Table:
    table = _new_table(title, ("policy", *ORDER, "95% CI", "n"))
    for name, row in rows.items():
        cells = [form.format(row[c]) if c in row else "-" for c in ORDER]
        ci = f"{form.format(row['ci'][0])}-{form.format(row['ci'][1])}"
        table.add_row(name.replace("SpecKV-fast (same-step)", "SpecKV-fast same"), *cells, ci, str(row["matched"]))
    return table
