"""`speckv demo`: the embedded pair, offline, against the target alone and transformers' assisted generation."""

from __future__ import annotations

import os
import statistics

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

METHODS = {"target-only": "target alone", "hf-default": "transformers", "adaptive": "SpecKVGenerator()"}


def demo(
    prompts_per_category: int = typer.Option(2, min=1, max=24, help="Prompts of each category to run."),
    max_new_tokens: int = typer.Option(64, min=1, help="Tokens to generate per prompt."),
    show_text: bool = typer.Option(True, help="Print the generated text of each prompt."),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress on stderr (a live bar on a terminal, else a line per prompt)."
    ),
) -> None:
    """Run SpecKVGenerator on the embedded model pair and compare it with the target alone and transformers'
    assisted generation (defaults). Offline: nothing is downloaded.

    Each speedup is paired: the median over prompts of a call's speed over the target alone's on the same prompt,
    run next to it after a warm-up prompt; the range is the lowest and highest of those per-prompt speedups, which
    says how much one figure can be trusted. tok/s is the median call's. A warning flags a call the machine stalled.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from ..bench.harness import encode_prompts, run_benchmark
    from ..bench.methods import parse_methods
    from ..bench.paired import paired_ratios
    from ..bench.pairs import load_pair_for, quiet_transformers
    from ..bench.prompts import demo_prompts
    from ..bench.summary import summarize
    from ._progress import ProgressReport

    console = Console()
    with console.status("loading the embedded pair"):
        pair = load_pair_for("fp32", device="cpu")
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    console.print(
        f"target {count(pair.target):.1f}M params, draft {count(pair.draft):.2f}M params, "
        f"torch threads {torch.get_num_threads()}"
    )
    items = demo_prompts(prompts_per_category)
    encoded = encode_prompts(pair.tokenizer, items)
    total = (1 + len(items)) * len(METHODS)
    with ProgressReport(Console(stderr=True), "demo", total, quiet) as progress, quiet_transformers():
        progress.phase(f"{len(items)} prompts x {len(METHODS)} methods")
        records, reference = run_benchmark(
            pair.target,
            pair.draft,
            encoded,
            parse_methods(list(METHODS)[1:]),
            max_new_tokens=max_new_tokens,
            progress=progress.call_done,
            on_prompt=progress.prompt_done,
        )

    table = Table(
        title=f"greedy, {max_new_tokens} new tokens, {prompts_per_category} prompt(s) per category",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        title_justify="left",
    )
    for column in ("category", "method", "tok/s", "speedup", "range", "tok/fwd", "same"):
        table.add_column(column, justify="left" if column in {"category", "method"} else "right", no_wrap=True)
    categories = [*dict.fromkeys(item.task for item in items), "all"]
    for category in categories:
        rows = [r for r in records if category == "all" or r.task == category]
        base = [r for r in rows if r.method == "target-only"]
        for i, (method, label) in enumerate(METHODS.items()):
            mine = [r for r in rows if r.method == method]
            ratios = paired_ratios(mine, base)
            same = sum(r.output == reference[r.prompt_id] for r in mine)
            forwards = sum(r.target_forwards for r in mine)
            table.add_row(
                category if i == 0 else "",
                label,
                f"{statistics.median(r.tokens_per_second for r in mine):.0f}",
                f"{statistics.median(ratios):.2f}x" if ratios else "-",
                "-" if method == "target-only" or not ratios else f"{min(ratios):.2f}-{max(ratios):.2f}",
                f"{sum(r.new_tokens for r in mine) / forwards:.2f}",
                f"{same}/{len(mine)}",
                end_section=i == len(METHODS) - 1,
            )
    if show_text:
        for record in records:
            if record.method != "adaptive":
                continue
            item = next(i for i in items if i.id == record.prompt_id)
            same = "identical to target alone" if record.output == reference[item.id] else "DIFFERS from target alone"
            console.rule(f"[bold]{item.id}[/bold] ({same})")
            console.print(item.text, style="dim", end="", markup=False, highlight=False)
            text = pair.tokenizer.decode(record.output, skip_special_tokens=True)
            console.print(text, markup=False, highlight=False)
    console.print(table)
    _, overall = summarize("fp32", "fp32", records, {}, do_sample=False)
    for warning in overall.warnings:
        console.print(f"[bold yellow]warning:[/bold yellow] {escape(warning['message'])}", highlight=False)
    overall_rate = [r.tokens_per_second for r in records if r.method == "adaptive"]
    console.print(
        f"median SpecKVGenerator() call: {statistics.median(overall_rate):.0f} tok/s; the machine's noise moves "
        "single figures by 10% or more: `speckv bench --repeats 3` measures more."
    )
