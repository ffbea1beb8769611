"""`speckv demo`: the embedded pair, offline, against the target alone and transformers' assisted generation."""

from __future__ import annotations

import os

import typer
from rich.console import Console
from rich.table import Table


def demo(
    prompts_per_category: int = typer.Option(2, min=1, help="Prompts of each category to run."),
    max_new_tokens: int = typer.Option(64, min=1, help="Tokens to generate per prompt."),
    show_text: bool = typer.Option(True, help="Print the generated text of each prompt."),
) -> None:
    """Run SpecKVGenerator on the embedded model pair and compare it with the target alone and transformers'
    assisted generation (defaults). Offline: nothing is downloaded."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from ..bench import BenchConfig, run_benchmark
    from ..demo import CATEGORIES, load_pair, load_prompts

    console = Console()
    with console.status("loading the embedded pair"):
        target, draft, tokenizer = load_pair()
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    console.print(
        f"target {count(target):.1f}M params, draft {count(draft):.2f}M params, "
        f"torch threads {torch.get_num_threads()}"
    )

    configs = [
        BenchConfig("target alone", "target"),
        BenchConfig("transformers assisted (defaults)", "hf"),
        BenchConfig("SpecKVGenerator()", "speckv", policy="adaptive"),
    ]
    table = Table(title=f"greedy, {max_new_tokens} new tokens per prompt, interleaved after a warm-up")
    for column in ("category", "method", "tokens/s", "speedup", "tokens/target forward", "acceptance"):
        table.add_column(column, justify="left" if column in {"category", "method"} else "right")
    for category in CATEGORIES:
        items = load_prompts(category)[:prompts_per_category]
        encoded = [tokenizer(item.text, return_tensors="pt") for item in items]
        prompts = [(e.input_ids, e.attention_mask) for e in encoded]
        with console.status(f"{category}: running {len(prompts)} prompts"):
            results = run_benchmark(target, draft, prompts, configs=configs, max_new_tokens=max_new_tokens)
        base = results[0].tokens_per_second
        for i, result in enumerate(results):
            acceptance = result.acceptance_rate
            table.add_row(
                category if i == 0 else "",
                result.config.name,
                f"{result.tokens_per_second:.0f}",
                f"{result.tokens_per_second / base:.2f}x",
                f"{result.tokens_per_target_forward:.2f}",
                "-" if acceptance is None else f"{acceptance:.0%}",
                end_section=i == len(results) - 1,
            )
        if show_text:
            for item, generated, reference in zip(items, results[2].outputs, results[0].outputs, strict=False):
                same = "identical to target alone" if generated == reference else "DIFFERS from target alone"
                console.rule(f"[bold]{item.id}[/bold] ({same})")
                console.print(item.text, style="dim", end="", markup=False, highlight=False)
                console.print(tokenizer.decode(generated, skip_special_tokens=True), markup=False, highlight=False)
    console.print(table)
