"""Candidates from the context: the continuation the text itself proposes, before (or instead of) the draft's.

A prompt that ends where the answer copies from it (continue a table), generated three ways on the embedded pair:
the draft alone (`adaptive`), context candidates then drafted tokens (`context+adaptive`), and context candidates
alone, with no draft model at all (`context`). All three give the target's own greedy output. Then the same prompt
asked twice of a generator that remembers earlier calls (`context_memory`): the second call copies the first.

    python examples/context_candidates.py [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse

import torch

from speckv_hf import SpecKVGenerator
from speckv_hf.demo import load_pair, load_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    target, draft, tokenizer = load_pair()
    inputs = tokenizer(load_prompts("grounded")[0].text, return_tensors="pt")
    alone = target.generate(**inputs, max_new_tokens=args.max_new_tokens)
    for policy in ("adaptive", "context+adaptive", "context"):
        generator = SpecKVGenerator(policy)
        assistant = {} if policy == "context" else {"assistant_model": draft}  # "context" needs no draft model
        out = target.generate(**inputs, **assistant, candidate_generator=generator, max_new_tokens=args.max_new_tokens)
        stats = generator.last_stats
        print(
            f"{policy:17} same as the target alone: {torch.equal(out, alone)}; "
            f"{stats.tokens_per_target_forward:.2f} tokens per target forward, {stats.draft_forwards} draft forwards, "
            f"{stats.context_accepted} of {stats.context_tokens} context tokens kept"
        )
    remembering = SpecKVGenerator("context+adaptive", context_memory=4096)
    for call in ("first", "second"):
        out = target.generate(
            **inputs, assistant_model=draft, candidate_generator=remembering, max_new_tokens=args.max_new_tokens
        )
        stats = remembering.last_stats
        print(
            f"with memory, {call} call: same as the target alone: {torch.equal(out, alone)}; "
            f"{stats.tokens_per_target_forward:.2f} tokens per target forward"
        )


if __name__ == "__main__":
    main()
