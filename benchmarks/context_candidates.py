"""Context candidates against the draft model alone, per workload, interleaved on the embedded pair.

Runs target-only, our loop's constants `fixed:1..8` (draft tokens only), `adaptive`, the context policies
(`context`: no draft model; `context+adaptive`; `context+fixed:4`), transformers' prompt lookup and assisted
generation, all in one `run_benchmark` call per run (interleaved, one generator per method), `--runs` independent
runs per compression. Prints, per compression, the paired speedups over target-only per task (median of per-call
ratios, pooled over the runs), each method over the best constant chain (picked per compression by paired median),
per task and pooled, and each task's repeat rate (share of target-only's new tokens whose 4-gram occurred before,
and the part that occurs in the prompt).

    python benchmarks/context_candidates.py [--compression fp32,int8,nf4] [--runs 3] [--prompts-per-task 3]
        [--do-sample --sampling speculative]
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

import torch

from speckv_hf.bench.harness import CallRecord, encode_prompts, run_benchmark
from speckv_hf.bench.methods import parse_methods
from speckv_hf.bench.paired import paired_ratios, quartiles
from speckv_hf.bench.pairs import load_pair_for, quiet_transformers
from speckv_hf.bench.prompts import demo_prompts
from speckv_hf.bench.repeats import repeat_counts

DEFAULT_METHODS = (
    "fixed:1-8,adaptive,context,context+adaptive,context+fixed:4,hf-prompt-lookup,hf-prompt-lookup-4,hf-default"
)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compression", default="fp32")
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prompts-per-task", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--do-sample", action="store_true")
    parser.add_argument("--sampling", default="speculative", help="SpecKVGenerator(sampling=...) when sampling")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = parse_methods(args.methods)
    for compression in args.compression.split(","):
        pair = load_pair_for(compression, None, None, args.device)
        prompts = encode_prompts(pair.tokenizer, demo_prompts(args.prompts_per_task), args.device)
        prompt_ids = {p.item.id: p.input_ids[0].tolist() for p in prompts}
        records: list[CallRecord] = []
        for run in range(args.runs):
            with quiet_transformers():
                run_records, _ = run_benchmark(
                    pair.target,
                    pair.draft,
                    prompts,
                    methods,
                    max_new_tokens=args.max_new_tokens,
                    do_sample=args.do_sample,
                    seed=args.seed + 100 * run,
                    sampling=args.sampling,
                )
            for r in run_records:
                r.repeat = run  # one pass per run: pair calls by prompt and run
            records.extend(run_records)
        _report(compression, records, prompt_ids, args)


def _report(compression: str, records: list[CallRecord], prompt_ids: dict[str, list[int]], args) -> None:
    by_method: dict[str, list[CallRecord]] = defaultdict(list)
    for r in records:
        by_method[r.method].append(r)
    reference = by_method["target-only"]
    tasks = sorted({r.task for r in records})
    names = [m for m in by_method if m != "target-only"]
    constants = [m for m in names if m.startswith("fixed:")]
    paired = {m: _median(paired_ratios(by_method[m], reference)) for m in names}
    best = max(constants, key=paired.get) if constants else None
    mode = f"sampled ({args.sampling})" if args.do_sample else "greedy"
    print(f"\n## {compression}, {mode}: {len(prompt_ids)} prompts x {args.runs} runs, {args.max_new_tokens} tokens")
    header = f"{'method':22} {'all':>6} " + " ".join(f"{t[:10]:>10}" for t in tasks)
    print("paired speedup over target-only (median of per-call ratios)")
    print(header)
    for m in names:
        cells = []
        for task in tasks:
            calls = [r for r in by_method[m] if r.task == task]
            refs = [r for r in reference if r.task == task]
            cells.append(f"{_median(paired_ratios(calls, refs)):9.2f}x")
        print(f"{m:22} {paired[m]:5.2f}x " + " ".join(cells))
    if best is None:
        return
    print(f"\nover the best constant chain ({best}), paired per call: median (IQR) pooled, then per task")
    for m in names:
        if m.startswith("fixed:"):
            continue
        ratios = paired_ratios(by_method[m], by_method[best])
        q1, median, q3 = quartiles(ratios)
        cells = []
        for task in tasks:
            calls = [r for r in by_method[m] if r.task == task]
            refs = [r for r in by_method[best] if r.task == task]
            cells.append(f"{_median(paired_ratios(calls, refs)):9.2f}x")
        print(f"{m:22} {median:5.2f}x ({q1:.2f}-{q3:.2f}) " + " ".join(cells))
    print("\nrepeat rate of target-only's output (4-grams seen before; in the prompt)")
    for task in tasks:
        counts = None
        for r in reference:
            if r.task == task:
                c = repeat_counts(prompt_ids[r.prompt_id], r.output)
                counts = c if counts is None else counts + c
        print(f"  {task:12} {counts.rate:5.0%} ({counts.prompt_rate:.0%} in the prompt)")


if __name__ == "__main__":
    main()
