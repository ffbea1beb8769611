"""`speckv demo`: the embedded pair, offline, against the target alone and transformers' assisted generation."""

from __future__ import annotations

import os
import statistics

import typer
from rich import box
from rich.console import Console
from rich.table import Table

METHODS = {"target-only": "target alone", "hf-default": "transformers", "adaptive": "SpecKVGenerator()"}


def demo(
    prompts_per_category: int = typer.Option(2, min=1, max=24, help="Prompts of each category to run."),
    max_new_tokens: int = typer.Option(64, min=1, help="Tokens to generate per prompt."),
    show_text: bool = typer.Option(True, help="Print the generated text of each prompt."),
) -> None:
    """Run SpecKVGenerator on the embedded model pair and compare it with the target alone and transformers'
    assisted generation (defaults). Offline: nothing is downloaded.

    Each speedup is over the target alone on the same prompts, interleaved after a warm-up prompt; the range is the
    lowest and highest per-prompt speedup, which says how much one figure can be trusted.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from ..bench import encode_prompts, run_benchmark
    from ..bench_methods import parse_methods
    from ..models import load_pair_for, quiet_transformers
    from ..prompts import demo_prompts

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
    with console.status(f"running {len(items)} prompts x {len(METHODS)} methods"), quiet_transformers():
        records, reference = run_benchmark(
            pair.target, pair.draft, encoded, parse_methods(list(METHODS)[1:]), max_new_tokens=max_new_tokens
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
        base = {r.prompt_id: r.tokens_per_second for r in rows if r.method == "target-only"}
        base_rate = _rate(rows, "target-only")
        for i, (method, label) in enumerate(METHODS.items()):
            mine = [r for r in rows if r.method == method]
            rate = _rate(rows, method)
            ratios = [r.tokens_per_second / base[r.prompt_id] for r in mine]
            same = sum(r.output == reference[r.prompt_id] for r in mine)
            forwards = sum(r.target_forwards for r in mine)
            table.add_row(
                category if i == 0 else "",
                label,
                f"{rate:.0f}",
                f"{rate / base_rate:.2f}x",
                "-" if method == "target-only" else f"{min(ratios):.2f}-{max(ratios):.2f}",
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
    overall = [r.tokens_per_second for r in records if r.method == "adaptive"]
    console.print(
        f"median SpecKVGenerator() call: {statistics.median(overall):.0f} tok/s; the machine's noise moves single "
        "figures by 10% or more: `speckv bench --repeats 3` measures more."
    )


def _rate(records: list, method: str) -> float:
    mine = [r for r in records if r.method == method]
    return sum(r.new_tokens for r in mine) / sum(r.seconds for r in mine)
