"""Where a step's time goes in our loop, per policy: draft, policy decisions, verification, the loop between steps.

    python benchmarks/loop_overheads.py [--methods fixed:2,fixed:4,adaptive,speckv] [--prompts 8] [--new-tokens 64]

Runs the embedded fp32 pair greedily over the first prompts of the suite (its code prompts come first), one
generator per method reused across them, the methods interleaved per prompt: a warm-up pass, then a measured one.
Prints per target forward (one step; the prefill counts as one) the milliseconds of each part, read from
`GenerationStats` (`draft_seconds` includes `policy_seconds`). A benchmark, not a test: it prints, it asserts
nothing.
"""

from __future__ import annotations

import argparse
import time

import torch

from speckv_hf import SpecKVGenerator
from speckv_hf.demo import load_pair, load_prompts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="fixed:2,fixed:4,adaptive,speckv")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    target, draft, tokenizer = load_pair()
    prompts = [tokenizer(p.text, return_tensors="pt") for p in load_prompts()[: args.prompts]]
    generators = {m: SpecKVGenerator(m) for m in args.methods.split(",")}
    totals = {
        m: dict.fromkeys(("wall", "tokens", "steps", "draft", "policy", "verify", "overhead"), 0.0) for m in generators
    }
    for measured in (False, True):
        for inputs in prompts:
            for method, generator in generators.items():
                started = time.perf_counter()
                target.generate(
                    **inputs, assistant_model=draft, candidate_generator=generator, max_new_tokens=args.new_tokens
                )
                wall = time.perf_counter() - started
                if not measured:
                    continue
                stats, total = generator.last_stats, totals[method]
                total["wall"] += wall
                total["tokens"] += stats.tokens_emitted
                total["steps"] += stats.target_forwards
                total["draft"] += stats.draft_seconds
                total["policy"] += stats.policy_seconds
                total["verify"] += stats.verify_seconds
                total["overhead"] += stats.overhead_seconds
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per step (one target forward)")
    print(
        f"{'method':10} {'tok/s':>7} {'tok/step':>8} {'step':>6} {'draft':>6} {'policy':>6} {'verify':>6} {'loop':>6}"
    )
    for method, t in totals.items():
        per = 1000.0 / t["steps"]
        print(
            f"{method:10} {t['tokens'] / t['wall']:7.1f} {t['tokens'] / t['steps']:8.2f} {t['wall'] * per:6.2f} "
            f"{t['draft'] * per:6.2f} {t['policy'] * per:6.3f} {t['verify'] * per:6.2f} {t['overhead'] * per:6.2f}"
        )


if __name__ == "__main__":
    main()
