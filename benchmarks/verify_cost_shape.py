"""How the target's verification time grows with the number of drafted tokens, per compression.

The cost model prices a drafted token with a line fitted to verification times (`CostModel.verify_coefficients`).
This measures the shape that line stands for: on the embedded target, after a prefill of one of the suite's prompts,
a forward over `k + 1` new positions (the last verified token and `k` drafted ones) is timed for every `k`, the cache
cropped back after each (`speckv_hf.bench.measure.measure_target_forwards`), all counts interleaved, `--repeats` times.
It prints, per count, the median ms and the interquartile range, the line fitted to the medians of 1-8 drafted
tokens (as the live model sees them: a speculating policy rarely verifies none), and the profile as
`benchmarks/acceptance_simulation.py --verify-ms` reads it. Bare forwards: the loop's own per-step work (logits
processing, acceptance, bookkeeping) is not included.

    python benchmarks/verify_cost_shape.py [--compression fp32,int8,nf4] [--max-candidates 12] [--repeats 40]

A benchmark, not a test: it prints times and asserts nothing. Absolute times swing between runs on a shared
machine; compare the shapes.
"""

from __future__ import annotations

import argparse
import os
import statistics

import numpy as np
import torch

from speckv_hf.bench.measure import measure_target_forwards
from speckv_hf.bench.pairs import load_pair_for, quiet_transformers
from speckv_hf.bench.prompts import demo_prompts


@torch.no_grad()
def verification_times(compression: str, counts: list[int], repeats: int) -> dict[int, list[float]]:
    """Seconds of a target forward over `k + 1` new positions after a prefill, per `k`, `repeats` samples each: one
    `measure_target_forwards` pass over every count per repeat, so that the counts interleave."""
    pair = load_pair_for(compression)
    device = next(pair.target.parameters()).device
    prompt = demo_prompts(1, offset=3)[0]
    ids = pair.tokenizer(prompt.text, return_tensors="pt").input_ids.to(device)
    measure_target_forwards(pair.target, ids, counts, repeats=1)  # warm-up, dropped
    times: dict[int, list[float]] = {k: [] for k in counts}
    for _ in range(repeats):
        for k, seconds in measure_target_forwards(pair.target, ids, counts, repeats=1).items():
            times[k].append(seconds)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compression", default="fp32,int8,nf4")
    parser.add_argument("--max-candidates", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    if args.max_candidates < 2 or args.repeats < 1:
        raise SystemExit("--max-candidates must be >= 2 and --repeats >= 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    counts = list(range(args.max_candidates + 1))
    for compression in args.compression.split(","):
        with quiet_transformers():
            times = verification_times(compression, counts, args.repeats)
        medians = {k: 1000 * statistics.median(v) for k, v in times.items()}
        print(f"\n{compression}: ms per verification, median [interquartile range] of {args.repeats}")
        for k in counts:
            q1, q3 = (1000 * q for q in np.percentile(times[k], [25, 75]))
            print(f"  {k:2d} drafted: {medians[k]:6.2f} [{q1:6.2f}, {q3:6.2f}]")
        fitted = [k for k in counts if 1 <= k <= 8]
        slope, intercept = np.polyfit(fitted, [medians[k] for k in fitted], 1)
        print(
            f"  line over 1-8 drafted: {intercept:.2f} + {slope:.2f} k ms; a plain step (0 drafted): {medians[0]:.2f}"
        )
        print("  --verify-ms " + ",".join(f"{k}:{medians[k]:.1f}" for k in counts))


if __name__ == "__main__":
    main()
