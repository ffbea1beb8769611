"""Markdown tables of a `speckv bench` run (`--markdown`), and the line comparing a method with the best constant γ
that the console prints too."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .summary import CompressionSummary, MethodSummary

__all__ = ["markdown_tables", "repeat_rate_table", "vs_best_fixed_text"]


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown_tables(results: Sequence[MethodSummary], compressions: Sequence[CompressionSummary]) -> str:
    """Markdown tables of a run, one per compression, with the ceilings, the warnings and the repeat rates under each.

    The paired speedup over target-only leads each row; tokens per second are the median call's, with the
    interquartile range over calls, next to the totals.

    Args:
        results: every method summary.
        compressions: every compression summary.

    Returns:
        The Markdown text.
    """
    lines: list[str] = []
    for overall in compressions:
        rows = [r for r in results if r.compression == overall.compression]
        lines += [
            f"### {overall.compression} (detected: {overall.detected})",
            "",
            "| method | paired speedup [IQR] | tok/s median call [IQR] | tok/s total | speedup of totals "
            "| paired per repeat | of oracle (paired) | tok/fwd | draft fwd/tok | acceptance | mismatches |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            spread = (
                f"{min(r.repeat_speedups):.2f}-{max(r.repeat_speedups):.2f}" if len(r.repeat_speedups) > 1 else "-"
            )
            mismatches = "-" if r.mismatches is None else f"{r.mismatches} ({r.near_tie_mismatches} near-tie)"
            lines.append(
                f"| {r.method} | {r.median_speedup:.2f}x [{r.iqr_speedup[0]:.2f}, {r.iqr_speedup[1]:.2f}] "
                f"| {r.median_tokens_per_s:.1f} [{r.iqr_tokens_per_s[0]:.1f}, {r.iqr_tokens_per_s[1]:.1f}] "
                f"| {r.tokens_per_s:.1f} | {r.speedup:.2f}x | {spread} | {_cell(r.paired_of_oracle, '.2f')} "
                f"| {r.tokens_per_target_forward:.2f} | {r.draft_forwards_per_token:.2f} "
                f"| {_cell(r.acceptance_rate, '.0%')} | {mismatches} |"
            )
        lines.append("")
        lines += _ceiling_lines(overall)
        lines += [f"- **warning** ({w['kind']}): {w['message']}" for w in overall.warnings]
        lines.append("")
        if overall.repeat_rates is not None:
            lines += repeat_rate_table(overall.repeat_rates)
            lines.append("")
    return "\n".join(lines)


def repeat_rate_table(rates: Mapping[str, Any]) -> list[str]:
    """A Markdown table of the repeat rates in target-only's output, one row per task and one for all.

    Args:
        rates: a `CompressionSummary.repeat_rates` (see `speckv_hf.bench.repeats.repeat_rates_by_task`).

    Returns:
        The table's lines, after a line saying what it counts.
    """
    lines = [
        f"Repeats in target-only's output: new tokens whose {rates['ngram']}-gram occurred before, in the prompt or "
        "only in earlier output.",
        "",
        "| task | calls | new tokens | repeated | in the prompt | only in earlier output |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for task, row in [*rates["tasks"].items(), ("all", rates["all"])]:
        lines.append(
            f"| {task} | {row['calls']} | {row['tokens']} | {row['rate']:.0%} | {row['prompt_rate']:.0%} "
            f"| {row['output_rate']:.0%} |"
        )
    return lines


def vs_best_fixed_text(method: str, ratio: Mapping[str, Any]) -> str:
    """How a method compares with the best constant γ, paired figure first (for tables and the console).

    Args:
        method: the method.
        ratio: its `CompressionSummary.vs_best_fixed` entry (`paired_iqr` and `pairs` may be missing in documents
            of earlier runs).

    Returns:
        E.g. `adaptive: 1.05x the best constant γ of our loop (paired, IQR 0.98-1.10 of 12 calls; totals 1.02x)`.
    """
    iqr = ratio.get("paired_iqr")
    detail = f"IQR {iqr[0]:.2f}-{iqr[1]:.2f}" if iqr else "median"
    if ratio.get("pairs"):
        detail += f" of {ratio['pairs']} calls"
    paired, total = ratio["paired"], ratio["total"]
    return f"{method}: {paired:.2f}x the best constant γ of our loop (paired, {detail}; totals {total:.2f}x)"


def _ceiling_lines(overall: CompressionSummary) -> list[str]:
    lines = []
    if overall.best_fixed is not None:
        best = f"`{overall.best_fixed}` ({overall.best_fixed_tokens_per_s:.1f} tok/s in total)"
        lines.append(f"- best constant γ of our loop (highest paired speedup): {best}")
        for method, ratio in overall.vs_best_fixed.items():
            lines.append(f"- {vs_best_fixed_text(f'`{method}`', ratio)}")
    if overall.measured_oracle_tokens_per_s is not None:
        lines.append(f"- oracle, measured through our loop: {overall.measured_oracle_tokens_per_s:.1f} tok/s")
    if overall.modeled_oracle_tokens_per_s is not None:
        lines.append(
            f"- oracle, modeled from bare forward times: {overall.modeled_oracle_tokens_per_s:.1f} tok/s "
            f"(target alone modeled: {_cell(overall.modeled_target_tokens_per_s, '.1f')} tok/s); "
            f"measured/modeled: {_cell(overall.loop_efficiency, '.2f')}"
        )
    for failure in overall.failures:
        lines.append(
            f"- **MISMATCH** `{failure['method']}` on `{failure['prompt_id']}` at token {failure['position']}: "
            f"top-2 gap {failure['gap']:.4f} is not a near-tie"
        )
    return lines
