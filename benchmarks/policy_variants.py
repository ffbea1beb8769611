"""Compare settings of the adaptive policy with constant γ in our own loop, on held-out demo prompts.

    python benchmarks/policy_variants.py [--prompts-per-task 4] [--max-new-tokens 64] [--compression fp32]

Uses prompts 3 onwards of each category (`speckv bench` defaults to 0-2), interleaved after a warm-up, greedy.
This is a benchmark, not a test: it prints ratios, it asserts nothing.
"""

from __future__ import annotations

import argparse
import os

from speckv_hf import AdaptivePolicy
from speckv_hf.bench.harness import encode_prompts, run_benchmark
from speckv_hf.bench.methods import Method, parse_methods
from speckv_hf.bench.pairs import load_pair_for, quiet_transformers
from speckv_hf.bench.prompts import demo_prompts
from speckv_hf.bench.summary import summarize


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts-per-task", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--compression", default="fp32")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    pair = load_pair_for(args.compression, device="cpu")
    prompts = encode_prompts(pair.tokenizer, demo_prompts(args.prompts_per_task, offset=3))
    variants = {
        "adaptive": AdaptivePolicy(),
        "adaptive max_tokens=8": AdaptivePolicy(max_tokens=8),
        "adaptive min_gain=0.2": AdaptivePolicy(min_gain=0.2),
        "adaptive recent_decay=0.5": AdaptivePolicy(recent_decay=0.5),
        "adaptive recent_decay=0.9": AdaptivePolicy(recent_decay=0.9),
    }
    methods = parse_methods(["fixed:3-6", *(Method(name, "speckv", policy=p) for name, p in variants.items())])
    with quiet_transformers():
        records, _ = run_benchmark(pair.target, pair.draft, prompts, methods, max_new_tokens=args.max_new_tokens)
    rows, overall = summarize(args.compression, args.compression, records, {}, do_sample=False)
    for r in rows:
        print(
            f"{r.method:<27} {r.tokens_per_s:7.1f} tok/s {r.speedup:5.2f}x "
            f"vs {overall.best_fixed}: {r.tokens_per_s / overall.best_fixed_tokens_per_s:5.2f}x "
            f"tok/fwd {r.tokens_per_target_forward:.2f} acceptance {r.acceptance_rate or 0:.2f}"
        )


if __name__ == "__main__":
    main()
