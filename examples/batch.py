"""A left-padded batch in speckv-hf's own loop (transformers' assisted generation refuses batches): each row with
its own γ per step, and per-row stats.

    python examples/batch.py [--max-new-tokens 64]
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
    tokenizer.padding_side = "left"
    texts = [load_prompts(category)[0].text for category in ("code", "prose", "math", "structured")]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    generator = SpecKVGenerator()
    out = target.generate(
        **batch, assistant_model=draft, candidate_generator=generator, max_new_tokens=args.max_new_tokens
    )
    alone = target.generate(**batch, max_new_tokens=args.max_new_tokens)
    print(generator.last_stats)
    for row in generator.last_stats.rows:
        print(f"row: {row.tokens_emitted} tokens, acceptance {row.acceptance_rate:.0%}, γ {dict(row.gamma_histogram)}")
    print("same as the target alone:", torch.equal(out, alone))


if __name__ == "__main__":
    main()
