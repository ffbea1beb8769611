"""Summarize several `speckv bench --json` runs: each policy against the best constant γ of our loop, per run.

    python benchmarks/summarize_runs.py runs/i7-greedy-1.json runs/i7-greedy-2.json runs/i7-greedy-3.json

Prints one Markdown row per run and compression: the best `fixed:K` (chosen in hindsight in that run), and for every
other SpecKV method and the oracle its tokens/s over the best constant's, as totals and as the median of per-prompt
ratios (`paired`).

The hindsight choice is the largest of eight noisy figures, so it is biased upwards by about the spread of one run.
With two runs or more a second table therefore scores each run against the constant that was best in the *other*
runs (by mean speedup over target-only, per compression): a bar the same size for every method, chosen without
this run's noise. A third table pools the runs: each method's mean speedup over target-only across them, against
the constant whose mean is best. Reads JSON only; runs nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _by_method(document: dict[str, Any], field: str) -> dict[tuple[str, str], float]:
    """`(compression, method)` -> the result's `field` (`speedup` over target-only, `tokens_per_s`) in that run."""
    return {(r["compression"], r["method"]): r[field] for r in document["results"]}


def _held_out_constant(speedups: list[dict[tuple[str, str], float]], run: int, compression: str) -> str | None:
    """The `fixed:K` with the best mean speedup at `compression` over every run but `run`."""
    from speckv_hf.bench.summary import is_constant

    others = [s for i, s in enumerate(speedups) if i != run]
    constants = {m for s in others for (c, m) in s if c == compression and is_constant(m)}
    scores = {m: [s[(compression, m)] for s in others if (compression, m) in s] for m in constants}
    scores = {m: sum(v) / len(v) for m, v in scores.items() if len(v) == len(others)}
    return max(scores, key=scores.__getitem__) if scores else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="JSON files written by speckv bench --json")
    args = parser.parse_args(argv)
    from speckv_hf.bench.summary import is_constant

    documents = [json.loads(Path(path).read_text(encoding="utf-8")) for path in args.runs]
    methods = sorted({m for d in documents for c in d["compressions"] for m in c["vs_best_fixed"]})
    print("| run | compression | target-only tok/s | best constant | " + " | ".join(methods) + " |")
    print("|---|---|---:|---|" + "---:|" * len(methods))
    for path, document in zip(args.runs, documents, strict=True):
        for entry in document["compressions"]:
            base = next(
                r["tokens_per_s"]
                for r in document["results"]
                if r["method"] == "target-only" and r["compression"] == entry["compression"]
            )
            cells = []
            for method in methods:
                ratio = entry["vs_best_fixed"].get(method)
                cells.append("-" if ratio is None else f"{ratio['total']:.2f}x ({ratio['paired']:.2f}x)")
            best = f"{entry['best_fixed']} ({entry['best_fixed_tokens_per_s']:.1f})"
            print(f"| {path} | {entry['compression']} | {base:.1f} | {best} | " + " | ".join(cells) + " |")
    if len(documents) < 2:
        return
    print()
    print("| run | compression | constant best in the other runs | " + " | ".join(methods) + " |")
    print("|---|---|---|" + "---:|" * len(methods))
    speedups = [_by_method(d, "speedup") for d in documents]
    for run, (path, document) in enumerate(zip(args.runs, documents, strict=True)):
        rates = _by_method(document, "tokens_per_s")
        for entry in document["compressions"]:
            compression = entry["compression"]
            constant = _held_out_constant(speedups, run, compression)
            if constant is None or (compression, constant) not in rates:
                continue
            bar = rates[(compression, constant)]
            cells = [
                "-" if (compression, m) not in rates else f"{rates[(compression, m)] / bar:.2f}x" for m in methods
            ]
            print(f"| {path} | {compression} | {constant} ({bar:.1f}) | " + " | ".join(cells) + " |")
    print()
    print(f"| pooled over {len(documents)} runs | best constant (mean speedup) | " + " | ".join(methods) + " |")
    print("|---|---|" + "---:|" * len(methods))
    for compression in dict.fromkeys(e["compression"] for d in documents for e in d["compressions"]):
        means = {}
        for method in {m for s in speedups for (c, m) in s if c == compression}:
            values = [s[(compression, method)] for s in speedups if (compression, method) in s]
            if len(values) == len(speedups):
                means[method] = sum(values) / len(values)
        constants = {m: v for m, v in means.items() if is_constant(m)}
        if not constants:
            continue
        best = max(constants, key=constants.__getitem__)
        cells = ["-" if m not in means else f"{means[m] / constants[best]:.2f}x" for m in methods]
        print(f"| {compression} | {best} ({constants[best]:.2f}x) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
