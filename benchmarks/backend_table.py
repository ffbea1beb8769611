"""The per-backend table of `docs/quantized.md`, from one `speckv bench --json` run over several compressions.

    python benchmarks/backend_table.py runs/backends.json [--default adaptive] [--also speckv,speckv-paper]

One Markdown row per compression: target-alone tokens/s, the draft/target cost ratio measured in the loop (in the
`fixed:1` calls: time per draft forward over time per target forward, from the forward hooks' time split; the bare
forward ratio when `fixed:1` did not run and the run has bare forward times), the best constant γ of our loop
(hindsight, among the run's `fixed:K`), and the default policy's and other methods' tokens/s over that constant
(paired in parentheses), with the prompts whose greedy output differed from target-only's (`~`: near-ties only).
Reads JSON only; runs nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a JSON file written by speckv bench --json")
    parser.add_argument("--default", default="adaptive", help="the default policy's method name")
    parser.add_argument("--also", default="speckv,speckv-paper", help="other methods to compare, comma-separated")
    args = parser.parse_args(argv)
    document = json.loads(Path(args.run).read_text(encoding="utf-8"))
    methods = [args.default, *(m for m in args.also.split(",") if m)]
    results = {(r["compression"], r["method"]): r for r in document["results"]}
    print(
        "| compression | detected | target-only tok/s | cost ratio | best constant | "
        + " | ".join(f"{m} vs it" for m in methods)
        + " | mismatches |"
    )
    print("|---|---|---:|---:|---|" + "---:|" * len(methods) + "---|")
    for entry in document["compressions"]:
        name = entry["compression"]
        ratio = _cost_ratio(results.get((name, "fixed:1")), entry.get("forward_ms"))
        cells = []
        for method in methods:
            versus = entry["vs_best_fixed"].get(method)
            cells.append("-" if versus is None else f"{versus['total']:.2f}x ({versus['paired']:.2f}x)")
        mismatches = []
        for method in methods:
            result = results.get((name, method))
            if result and result["mismatches"]:
                tie = "~" if result["near_tie_mismatches"] == result["mismatches"] else "!"
                mismatches.append(f"{method} {result['mismatches']}{tie}")
        print(
            f"| {name} | {entry['detected']} | {results[(name, 'target-only')]['tokens_per_s']:.1f} | {ratio:.2f} | "
            f"{entry['best_fixed']} ({entry['best_fixed_tokens_per_s']:.1f}) | "
            + " | ".join(cells)
            + f" | {', '.join(mismatches) or 'none'} |"
        )


def _cost_ratio(fixed_one: dict | None, forward_ms: dict | None) -> float:
    if fixed_one is not None:
        split = fixed_one["time_split"]
        draft_per_forward = split["draft_forward"] / fixed_one["draft_forwards_per_token"]
        target_per_forward = split["target_forward"] * fixed_one["tokens_per_target_forward"]
        return draft_per_forward / target_per_forward
    if forward_ms:
        return forward_ms["draft"] / forward_ms["target"]["0"]
    return float("nan")


if __name__ == "__main__":
    main()
