"""Compare settings of the adaptive policy with a constant γ on held-out demo prompts (fp32 target).

    python benchmarks/policy_variants.py

Uses prompts 3-6 of each category (the main benchmark uses 0-2), interleaved after a warm-up, greedy, 64 tokens.
"""

from __future__ import annotations

import os

from speckv_hf import AdaptivePolicy
from speckv_hf.bench import BenchConfig, run_benchmark
from speckv_hf.demo import CATEGORIES, load_pair, load_prompts


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    target, draft, tokenizer = load_pair()
    prompts = []
    for category in CATEGORIES:
        for item in load_prompts(category)[3:7]:
            encoded = tokenizer(item.text, return_tensors="pt")
            prompts.append((encoded.input_ids, encoded.attention_mask))
    variants = {
        "fixed:4": "fixed:4",
        "adaptive": AdaptivePolicy(),
        "adaptive max_tokens=8": AdaptivePolicy(max_tokens=8),
        "adaptive min_gain=0.2": AdaptivePolicy(min_gain=0.2),
        "adaptive recent_decay=0.5": AdaptivePolicy(recent_decay=0.5),
        "adaptive recent_decay=0.9": AdaptivePolicy(recent_decay=0.9),
    }
    configs = [BenchConfig("target alone", "target")]
    configs += [BenchConfig(name, "speckv", policy=policy) for name, policy in variants.items()]
    results = run_benchmark(target, draft, prompts, configs=configs, max_new_tokens=64)
    base = results[0].tokens_per_second
    for r in results:
        drafted = r.drafted / r.target_forwards if r.target_forwards else 0.0
        print(
            f"{r.config.name:<27} {r.tokens_per_second:7.1f} tok/s {r.tokens_per_second / base:5.2f}x "
            f"tok/fwd {r.tokens_per_target_forward:.2f} drafted/fwd {drafted:.2f} "
            f"acceptance {r.acceptance_rate or 0:.2f}"
        )


if __name__ == "__main__":
    main()
