"""What `speckv bench` prints for each compression: the results table, the repeat rates, the verdict lines."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

__all__ = ["repeat_table", "results_table", "verdict_lines"]


def _compact_table(title: str, headers: list[str]) -> Table:
    """A table with a left-aligned first column and right-aligned figures. No edge and one space of padding: the
    results table's nine columns fit 80 characters with the longest default method name."""
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0), title_justify="left")
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right", no_wrap=True)
    return table


def results_table(compression: str, overall: Any, rows: list, repeats: int) -> Table:
    """One compression's results, a row per method (rich markup in the cells; method names escaped)."""
    headers = ["method", "paired", "IQR", "tok/s", "oracle", "tok/fwd", "acc", "mism"]
    if repeats > 1:
        headers.insert(4, "range")
    table = _compact_table(f"{compression} target (detected: {overall.detected})", headers)
    for r in rows:
        cells = [
            escape(r.method),  # settings in brackets are no markup: `context+adaptive[max_guesses=0]`
            f"{r.median_speedup:.2f}x",
            f"{r.iqr_speedup[0]:.2f}-{r.iqr_speedup[1]:.2f}",
            f"{r.median_tokens_per_s:.1f}",
            "-" if r.paired_of_oracle is None else f"{r.paired_of_oracle:.2f}",
            f"{r.tokens_per_target_forward:.2f}",
            "-" if r.acceptance_rate is None else f"{r.acceptance_rate:.0%}",
            "-" if r.mismatches is None else mismatch_cell(r),
        ]
        if repeats > 1:
            cells.insert(4, f"{min(r.repeat_speedups):.2f}-{max(r.repeat_speedups):.2f}" if r.repeat_speedups else "-")
        table.add_row(*cells)
    return table


def repeat_table(rates: dict[str, Any]) -> Table:
    """Each task's share of target-only's new tokens whose n-gram occurred before (in the prompt, in the output)."""
    title = f"repeats in target-only's output ({rates['ngram']}-grams seen before)"
    table = _compact_table(title, ["task", "calls", "new tok", "repeated", "in prompt", "own output"])
    for task, row in [*rates["tasks"].items(), ("all", rates["all"])]:
        cells = [f"{row['rate']:.0%}", f"{row['prompt_rate']:.0%}", f"{row['output_rate']:.0%}"]
        table.add_row(task, str(row["calls"]), str(row["tokens"]), *cells)
    return table


def mismatch_cell(row: Any) -> str:
    hard = row.mismatches - row.near_tie_mismatches
    if hard:
        return f"[bold red]{hard}![/bold red]"
    return f"{row.mismatches}~" if row.mismatches else "0"


def verdict_lines(overall: Any, repeats: int) -> list[str]:
    """The lines under the table: the best constant, each method against it, warnings, the legend (rich markup,
    names escaped)."""
    from ..bench.markdown import vs_best_fixed_text

    lines = []
    if overall.best_fixed is not None:
        lines.append(f"best constant γ of our loop: {escape(overall.best_fixed)} (highest paired speedup)")
    for method, ratio in overall.vs_best_fixed.items():
        lines.append(escape(vs_best_fixed_text(method, ratio)))
    if overall.measured_oracle_tokens_per_s is not None and overall.modeled_oracle_tokens_per_s is not None:
        lines.append(
            f"oracle: {overall.measured_oracle_tokens_per_s:.1f} tok/s measured, "
            f"{overall.modeled_oracle_tokens_per_s:.1f} modeled (bare forwards)"
        )
    for warning in overall.warnings:
        lines.append(f"[bold yellow]warning:[/bold yellow] {escape(warning['message'])}")
    lines.append(
        "paired: median over calls of each call's speedup over target-only on the same prompt, run next to it; "
        "IQR: their interquartile range; tok/s: the median call; oracle: paired, over the oracle; acc: acceptance"
    )
    if repeats > 1:
        lines.append("range: lowest and highest paired speedup across repeats")
    lines.append("mism: outputs unlike target-only's (~ at near-ties, ! elsewhere)")
    return lines
