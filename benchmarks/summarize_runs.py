"""Summarize several `speckv bench --json` runs: each policy against the best constant γ of our loop, per run.

    python benchmarks/summarize_runs.py runs/i7-greedy-1.json runs/i7-greedy-2.json runs/i7-greedy-3.json

Prints one Markdown row per run and compression: the best `fixed:K` (chosen in hindsight in that run), and for every
other SpecKV method and the oracle its tokens/s over the best constant's, as totals and as the median of per-prompt
ratios (`paired`). Reads JSON only; runs nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="JSON files written by speckv bench --json")
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    main()
