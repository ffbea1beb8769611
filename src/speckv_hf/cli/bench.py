"""`speckv bench`: every method side by side on your own pair, with the oracle ceiling, a table, JSON, plots."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from ._bench_tables import repeat_table, results_table, verdict_lines
from ._common import atomic_write_text, fail, split_list
from ._progress import ProgressReport

DEFAULT_PROMPTS_PER_TASK = 3
# speckv_hf.decoding.coupling.SAMPLING_SETTINGS and speckv_hf.bench.methods.DEFAULT_METHODS, spelled out so that
# `speckv --help` does not import torch (tested equal).
SAMPLING_SETTINGS = ("auto", "speculative", "coupled")
DEFAULT_METHODS = "target-only,hf-default,hf-heuristic,hf-prompt-lookup,adaptive,context+adaptive,fixed:1-8,oracle"


def bench(
    target: str | None = typer.Option(
        None, help="Target model: a local folder or a Hub id (default: the embedded pair)."
    ),
    draft: str | None = typer.Option(None, help="Draft model: a local folder or a Hub id (with --target)."),
    prompts: Path | None = typer.Option(
        None, help='JSON Lines file of {"task": ..., "prompt": ...} (default: the embedded held-out suite).'
    ),
    prompts_per_task: int | None = typer.Option(
        None,
        min=1,
        help=f"Prompts per task: the first N of each task of --prompts (default: all), or of each category of the "
        f"embedded suite (default: {DEFAULT_PROMPTS_PER_TASK}).",
    ),
    compression: str = typer.Option(
        "fp32",
        help="Comma-separated target compressions: fp32, fp16, bf16, int8, nf4, fp4 (bitsandbytes, also bnb-int8, "
        "...), quanto-int8, quanto-int4, quanto-int2, quanto-float8, torchao-int8, torchao-int8-dynamic, "
        "torchao-int4 (GPU).",
    ),
    methods: str = typer.Option(
        DEFAULT_METHODS,
        help="Comma-separated methods: target-only, hf-default, hf-heuristic, hf-fixed-K (transformers' assisted "
        "generation), hf-prompt-lookup, hf-prompt-lookup-N (transformers' prompt lookup, no draft model: 10 or N "
        "tokens), oracle (the draft's runs in hindsight), context+oracle (the context's kept tokens, then the "
        "draft's runs), and SpecKV policies (adaptive, heuristic, confidence, fixed:K; fixed:A-B for a range; "
        "context: context candidates alone, no draft model; context+POLICY: context candidates, then POLICY's "
        "drafted tokens; speckv@PATH for the predictor in folder or Hub repo PATH); target-compiled (the target "
        "alone, static cache, compiled) and compiled:POLICY / compiled:oracle (the compiled loop, warmed up "
        "before the first measured call). A SpecKV method takes SpecKVGenerator settings in brackets, e.g. "
        r"context+adaptive\[max_guesses=0] or adaptive\[loop=transformers].",  # \[: rich markup
    ),
    max_new_tokens: int = typer.Option(64, min=1, help="Tokens to generate per prompt."),
    do_sample: bool = typer.Option(False, "--do-sample", help="Sample instead of greedy decoding (no oracle)."),
    sampling: str = typer.Option(
        "auto",
        "--sampling-scheme",
        help="With --do-sample, how the SpecKV methods sample: auto (what SpecKVGenerator() does: coupled in our "
        "own loop), speculative (speculative sampling) or coupled (coupled sampling: the same output for every "
        "SpecKV method, given the seed).",
    ),
    repeats: int = typer.Option(1, min=1, help="Passes over the prompts; the table shows the spread across them."),
    warmup_prompts: int = typer.Option(1, min=0, help="Prompts run through every method before measuring."),
    device: str | None = typer.Option(None, help="cpu or cuda (default: cuda when available)."),
    threads: int | None = typer.Option(None, min=1, help="torch CPU threads (default: torch's)."),
    seed: int = typer.Option(0, help="Base seed of the sampled calls."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the results as JSON (schema in the docs)."),
    markdown_out: Path | None = typer.Option(None, "--markdown", help="Write the tables as Markdown."),
    plots: Path | None = typer.Option(None, help="Write PNG plots into this folder (needs matplotlib)."),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress on stderr (a live bar on a terminal, else a line per prompt)."
    ),
) -> None:
    """Benchmark target-only, transformers' assisted generation and prompt lookup, SpecKV policies and the oracle.

    Speedups are paired: each call against target-only's on the same prompt, run next to it. Warnings flag a stalled
    call (a busy machine) and an oracle below another method.

    Exits with status 1 when a greedy output differs from the target's own away from a near-tie.
    """
    if target is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the embedded pair never needs the network
    from ..bench.methods import check_methods, parse_methods, split_methods
    from ..bench.pairs import check_compressions
    from ..bench.prompts import PromptsFileError, demo_prompts, first_per_task, read_prompts_jsonl

    # Every check before any model loads.
    compressions = split_list(compression)
    try:
        check_compressions(compressions, device)
    except (ValueError, ImportError) as error:
        fail(str(error))
    if sampling not in SAMPLING_SETTINGS:
        fail(f"--sampling-scheme must be auto, speculative or coupled, got {sampling!r}.")
    if sampling != "auto" and not do_sample:
        fail("--sampling-scheme applies to sampled runs: add --do-sample.")
    if (target is None) != (draft is None):
        fail("pass both --target and --draft (or neither, for the embedded pair).")
    if target is not None and draft is not None:
        from ..bench.pairs import pair_sources

        pair_sources(target, draft)  # a missing folder is one line, before any progress or loading
    method_specs = split_methods(methods)
    oracles = [spec for spec in method_specs if spec.removeprefix("compiled:") in ("oracle", "context+oracle")]
    if do_sample and oracles:
        if methods == DEFAULT_METHODS:
            method_specs.remove("oracle")
        else:
            dropped = ", ".join(map(repr, oracles))
            fail(f"the oracle is defined on greedy output: drop {dropped} from --methods with --do-sample.")
    try:
        method_list = parse_methods(method_specs)
        check_methods(method_list, sampling)  # as the run will build them: settings its sampling refuses fail now
        if prompts is None:
            per_task = prompts_per_task or DEFAULT_PROMPTS_PER_TASK
            items, prompts_source = demo_prompts(per_task), f"embedded suite, {per_task} per category"
        else:
            items, prompts_source = read_prompts_jsonl(prompts), str(prompts)
            if prompts_per_task is not None:
                items = first_per_task(items, prompts_per_task)
                prompts_source += f", first {prompts_per_task} per task"
    except (ValueError, PromptsFileError) as error:
        fail(str(error))
    for path in (json_out, markdown_out):
        if path is not None and not path.parent.exists():
            fail(f"folder {path.parent} does not exist: create it or write elsewhere.")
    if threads:
        import torch

        torch.set_num_threads(threads)

    from ..bench.document import build_document
    from ..bench.markdown import markdown_tables

    console = Console(stderr=True)
    results, summaries = [], []
    for name in compressions:
        method_rows, overall = _run_compression(
            console, name, target, draft, items, method_list, max_new_tokens, do_sample, repeats, warmup_prompts,
            device, seed, sampling, quiet,
        )  # fmt: skip
        results += method_rows
        summaries.append(overall)
        Console().print(results_table(name, overall, method_rows, repeats))
        if overall.repeat_rates is not None:
            Console().print(repeat_table(overall.repeat_rates))
        for line in verdict_lines(overall, repeats):
            Console().print(line, highlight=False)

    settings = {
        "target": target or "embedded",
        "draft": draft or "embedded",
        "prompts": prompts_source,
        "num_prompts": len(items),
        "max_new_tokens": max_new_tokens,
        "do_sample": do_sample,
        "sampling": sampling if do_sample else None,
        "repeats": repeats,
        "warmup_prompts": warmup_prompts,
        "methods": [m.name for m in method_list],
        "compressions": compressions,
        "device": device or _device_name(),
        "seed": seed,
        "command": " ".join(["speckv", *sys.argv[1:]]) if sys.argv[0].endswith("speckv") else "speckv bench",
    }
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(build_document(settings, results, summaries), indent=2) + "\n")
    if markdown_out is not None:
        atomic_write_text(markdown_out, markdown_tables(results, summaries))
    if plots is not None:
        from ..bench.plots import bench_plots

        try:
            written = bench_plots(results, summaries, plots)
        except ImportError as error:
            fail(str(error))
        console.print(f"plots: {', '.join(str(p) for p in written)}")
    failures = [f for s in summaries for f in s.failures]
    if failures:
        Console(stderr=True).print(
            f"[bold red]{len(failures)} greedy output(s) differ from the target's own away from a near-tie: "
            "the output is not lossless.[/bold red]"
        )
        raise typer.Exit(1)


def _device_name() -> str:
    from ..bench.pairs import default_device

    return default_device()


def _run_compression(
    console: Console,
    compression: str,
    target: str | None,
    draft: str | None,
    items: list,
    methods: list,
    max_new_tokens: int,
    do_sample: bool,
    repeats: int,
    warmup_prompts: int,
    device: str | None,
    seed: int,
    sampling: str = "speculative",
    quiet: bool = False,
) -> tuple[list, Any]:
    from ..bench import harness
    from ..bench.measure import first_divergence, measure_forward_costs
    from ..bench.pairs import load_pair_for, quiet_transformers
    from ..bench.summary import summarize
    from ..compression.detection import detect_compression

    warmup = min(warmup_prompts, len(items))
    total = (warmup + len(items) * repeats) * len(methods)
    with ProgressReport(console, compression, total, quiet) as progress:
        progress.phase("loading the pair")
        pair = load_pair_for(compression, target, draft, device)
        encoded = harness.encode_prompts(pair.tokenizer, items, next(pair.target.parameters()).device)
        with quiet_transformers():
            progress.phase(f"reference outputs of {len(encoded)} prompts")
            records, reference = harness.run_benchmark(
                pair.target,
                pair.draft,
                encoded,
                methods,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                repeats=repeats,
                warmup_prompts=warmup,
                seed=seed,
                sampling=sampling,
                progress=progress.call_done,
                on_prompt=progress.prompt_done,
            )
            progress.phase("checking outputs")
            divergences = {}
            if not do_sample:
                by_id = {p.item.id: p for p in encoded}
                for record in records:
                    key = (record.method, record.prompt_id)
                    if key in divergences or record.output == reference[record.prompt_id]:
                        continue
                    ids = by_id[record.prompt_id].input_ids
                    divergence = first_divergence(pair.target, ids, reference[record.prompt_id], record.output)
                    if divergence is not None:
                        divergences[key] = divergence
            oracle_runs, costs = None, None
            if any(m.kind == "oracle" for m in methods):
                from ..policies.oracle import acceptance_runs

                progress.phase("bare forward times")
                oracle_runs = {
                    p.item.id: acceptance_runs(pair.draft, p.input_ids, reference[p.item.id]) for p in encoded
                }
                typical = sorted(encoded, key=lambda p: p.input_ids.shape[1])[len(encoded) // 2]
                longest = max(max(runs, default=0) for runs in oracle_runs.values())
                costs = measure_forward_costs(pair.target, pair.draft, typical.input_ids, max(min(longest, 64), 1))
    return summarize(
        compression,
        str(detect_compression(pair.target)),
        records,
        divergences,
        do_sample,
        oracle_runs,
        costs,
        max_new_tokens,
        prompt_tokens={p.item.id: p.input_ids[0].tolist() for p in encoded},
    )
